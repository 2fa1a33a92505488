//! `fledge debug`: what the Dockerfile frontend makes of a file. `parse` prints the syntax
//! tree exactly as BuildKit's parser tests write it (`Node.Dump()`); `llb` prints the LLB
//! definition, as JSON lines for people or as the `pb.Definition` bytes BuildKit reads.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use fledge_llb::dockerfile::{Options, Platform};
use fledge_llb::{graph, pb};
use prost::Message;

use crate::cli::{DebugCommand, LlbFormat};
use crate::dockerfile::{self, StoreResolver};
use crate::progress::Progress;
use crate::store::Store;

pub fn run(command: &DebugCommand, progress: &Progress) -> Result<()> {
    match command {
        DebugCommand::Parse { dockerfile } => {
            let ast = dockerfile::load(dockerfile)?;
            print!("{}", ast.dump());
            warn(dockerfile, &ast);
            Ok(())
        }
        DebugCommand::Llb { dockerfile, target, build_args, platform, format } => {
            let ast = dockerfile::load(dockerfile)?;
            warn(dockerfile, &ast);
            let platform = match platform {
                Some(p) => Platform::parse(p).map_err(anyhow::Error::msg)?,
                None => Platform::linux_amd64(),
            };
            let store = Store::open(crate::dirs::state_dir().as_deref())?;
            let resolver = StoreResolver { store: &store, progress, contexts: &[] };
            let options = Options {
                target: target.clone(),
                build_args: parse_build_args(build_args)?,
                build_platform: Platform::linux_amd64(),
                platform,
                session_id: None,
                excludes: dockerfile::dockerignore(
                    dockerfile,
                    dockerfile.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")),
                )?,
                local_contexts: Vec::new(),
                resolver: &resolver,
            };
            let converted = fledge_llb::dockerfile::convert(&ast, &options)
                .map_err(|e| dockerfile::convert_error(dockerfile, &e))?;
            // An empty target has no operation: its definition is empty, as BuildKit's is.
            let definition = match &converted.result {
                Some(result) => graph::definition(result, Some(("Dockerfile", &dockerfile::read_in_dir(dockerfile)?))),
                None => Default::default(),
            };
            let mut out = std::io::stdout().lock();
            match format {
                LlbFormat::Pb => out.write_all(&definition.encode_to_vec())?,
                LlbFormat::Json => print_json(&mut out, &definition, &converted.image)?,
            }
            Ok(out.flush()?)
        }
    }
}

fn warn(path: &Path, ast: &fledge_llb::dockerfile::Ast) {
    for warning in &ast.warnings {
        eprintln!("warning: {}:{}: {}", path.display(), warning.line, warning.message);
    }
}

fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>> {
    args.iter()
        .map(|arg| match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--build-arg {arg}: expected KEY=VALUE"),
        })
        .collect()
}

/// One line per op (`digest`, `inputs`, `op`, `metadata`), then the image configuration.
fn print_json(out: &mut impl Write, definition: &pb::Definition, image: &serde_json::Value) -> Result<()> {
    for bytes in &definition.def {
        let op = pb::Op::decode(&bytes[..]).context("an op we encoded")?;
        let digest = graph::sha256_digest(bytes);
        let line = serde_json::json!({
            "digest": digest,
            "inputs": op.inputs,
            "op": op.op,
            "platform": op.platform,
            "metadata": definition.metadata.get(&digest),
        });
        writeln!(out, "{line}")?;
    }
    writeln!(out, "{}", serde_json::json!({ "image_config": image }))?;
    Ok(())
}
