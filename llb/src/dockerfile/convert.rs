//! Lowering a parsed Dockerfile to LLB the way BuildKit's `dockerfile2llb` does: stages,
//! the target and the stages it needs, variables in scope (global ARGs, stage ARGs, ENV,
//! the platform ARGs), and one op per filesystem-changing instruction, with the image
//! configuration built alongside.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::image::{ImageResolver, Platform};
use super::instructions::{self, Flags};
use super::parser::{Arg, Ast, Instruction};
use super::shell::{Env, Lexer};
use super::stage_graph::{self, Dependency};
use super::{copy, exec};
use crate::graph::{OpInfo, Output};
use crate::pb;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to build and how.
pub struct Options<'a> {
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub platform: Platform,
    pub build_platform: Platform,
    /// The client session the build context is read through (BuildKit's `local.session`);
    /// without one the context source gets a fixed `local.unique` instead, as BuildKit's
    /// client does for sessionless sources (then `buildctl --local` supplies the files).
    pub session_id: Option<String>,
    /// `.dockerignore` patterns for the build context.
    pub excludes: Vec<String>,
    /// Local directories given as named contexts (`--build-context NAME=DIR`).
    pub local_contexts: Vec<LocalContext>,
    pub resolver: &'a dyn ImageResolver,
}

/// A local directory given as a named build context: `FROM NAME` builds on its files,
/// `COPY --from=NAME` and `RUN --mount=from=NAME` read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalContext {
    pub name: String,
    /// Its `.dockerignore` patterns.
    pub excludes: Vec<String>,
}

/// The lowered build: the result and the image configuration.
pub struct Converted {
    /// `None` when the target is an empty `FROM scratch` stage.
    pub result: Option<Output>,
    pub image: Value,
    /// What BuildKit's linter warns of, by line: the build goes on.
    pub warnings: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConvertError {
    pub line: usize,
    pub message: String,
    /// What to do, when more is known than "check the instruction's syntax".
    pub help: Option<String>,
}

impl ConvertError {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self { line, message: message.into(), help: None }
    }

    pub fn with_help(self, help: impl Into<String>) -> Self {
        Self { help: Some(help.into()), ..self }
    }
}

fn fail<T>(instruction: &Instruction, message: impl Into<String>) -> Result<T, ConvertError> {
    Err(ConvertError::new(instruction.start_line, message))
}

/// A stage as written.
struct Stage {
    name: Option<String>,
    from: Instruction,
    body: Vec<Instruction>,
}

/// Variables in scope, in the order LLB lists them: a redefined name moves to the end.
#[derive(Debug, Clone, Default)]
pub struct Vars(Vec<(String, String)>);

impl Vars {
    pub fn set(&mut self, key: &str, value: &str) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.to_string()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn list(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

impl Env for Vars {
    fn get(&self, name: &str) -> Option<String> {
        Vars::get(self, name).map(str::to_string)
    }
}

/// The state of a stage while its instructions are lowered.
pub struct StageState {
    pub output: Option<Output>,
    /// The environment LLB ops see: the image's, ENV and declared ARGs.
    pub env: Vars,
    /// The ARGs declared, in order and with repeats, with their values if any, a stage
    /// based on another stage's after that stage's (for RUN's history line).
    pub args: Vec<(String, Option<String>)>,
    pub dir: String,
    pub user: String,
    pub shell: Vec<String>,
    pub platform: Platform,
    pub image: Value,
    prefix: String,
    step: usize,
    steps: usize,
}

impl StageState {
    /// `[stage n/total] ` for progress names.
    pub fn step_name(&mut self, text: &str) -> String {
        self.step += 1;
        let width = self.steps.to_string().len();
        format!("[{}{:>width$}/{}] {text}", self.prefix, self.step, self.steps)
    }

    pub fn history(&mut self, created_by: String, empty_layer: bool) {
        let mut entry = json!({"created_by": created_by, "comment": "buildkit.dockerfile.v0"});
        if empty_layer {
            entry["empty_layer"] = json!(true);
        }
        self.image["history"].as_array_mut().expect("history is an array").push(entry);
    }

    pub fn config(&mut self) -> &mut serde_json::Map<String, Value> {
        self.image["config"].as_object_mut().expect("config is an object")
    }

    pub fn pb_platform(&self) -> pb::Platform {
        pb::Platform {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            ..Default::default()
        }
    }

    /// Expands one word against the stage's variables.
    pub fn expand(&self, lexer: &Lexer, word: &str, at: &Instruction) -> Result<String, ConvertError> {
        lexer.process_word(word, &self.env).map_err(|e| ConvertError::new(at.start_line, e.to_string()))
    }

    /// `path` against the working directory, keeping a trailing `/`.
    pub fn resolve_path(&self, path: &str) -> String {
        let joined = if path.starts_with('/') { clean(path) } else { clean(&format!("{}/{path}", self.dir)) };
        if (path.ends_with('/') || path.ends_with("/.") || path == ".") && joined != "/" {
            joined + "/"
        } else {
            joined
        }
    }
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths.dedup();
    paths
}

/// Go's `path.Clean` for absolute paths.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Shared by every stage: the build context source, built once.
pub struct Context<'a> {
    pub options: &'a Options<'a>,
    pub lexer: Lexer,
    /// The context paths the build copies (BuildKit's `local.followpaths`), and those the
    /// lowering actually used (ONBUILD triggers can add some only known after resolving).
    pub context_paths: Vec<String>,
    pub used_paths: Vec<String>,
    context: Option<Output>,
    /// Named local contexts' sources, made when first used.
    locals: BTreeMap<String, Output>,
    stages: Vec<Stage>,
    /// Stage names (lower case) to their index.
    names: BTreeMap<String, usize>,
    done: BTreeMap<usize, StageState>,
    /// Stages being lowered: reaching one again is a cycle (one only an image's ONBUILD
    /// trigger makes, since the others are found before lowering).
    lowering: Vec<usize>,
    global: Vars,
}

impl Context<'_> {
    /// The `local://context` source (paths the build copies from it are listed, so only
    /// those are sent).
    pub fn build_context(&mut self) -> Output {
        if let Some(context) = &self.context {
            return context.clone();
        }
        let paths = self.context_paths.clone();
        let output =
            self.local_source("context", &self.options.excludes, Some(&paths), "[internal] load build context");
        self.context = Some(output.clone());
        output
    }

    /// The source of the named local context `name` (`--build-context NAME=DIR`), if the
    /// build was given one.
    pub fn named_local(&mut self, name: &str) -> Option<Output> {
        let local = self.options.local_contexts.iter().find(|c| c.name.eq_ignore_ascii_case(name))?;
        if let Some(output) = self.locals.get(&local.name) {
            return Some(output.clone());
        }
        let title = format!("[internal] load build context {}", local.name);
        let output = self.local_source(&local.name, &local.excludes, None, &title);
        self.locals.insert(local.name.clone(), output.clone());
        Some(output)
    }

    /// A `local://NAME` source read through the build's session; `followpaths` lists the
    /// paths the build reads (for the main context).
    fn local_source(&self, name: &str, excludes: &[String], followpaths: Option<&[String]>, title: &str) -> Output {
        let mut attrs = BTreeMap::new();
        let json_list = |v: &[String]| serde_json::to_string(v).expect("strings serialise");
        if !excludes.is_empty() {
            attrs.insert("local.excludepatterns".to_string(), json_list(excludes));
        }
        if let Some(paths) = followpaths.filter(|p| !p.is_empty()) {
            attrs.insert("local.followpaths".to_string(), json_list(paths));
        }
        match &self.options.session_id {
            Some(session) => attrs.insert("local.session".to_string(), session.clone()),
            None => attrs.insert("local.unique".to_string(), "fledge".to_string()),
        };
        attrs.insert("local.sharedkeyhint".to_string(), name.to_string());
        let op = pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp { identifier: format!("local://{name}"), attrs })),
            constraints: Some(Default::default()),
            ..Default::default()
        };
        let mut info = OpInfo::named(title);
        info.caps = vec!["source.local"];
        if followpaths.is_some() {
            info.caps.push("source.local.followpaths");
        }
        info.caps.push("source.local.sharedkeyhint");
        info.caps.push(if self.options.session_id.is_some() {
            "source.local.sessionid"
        } else {
            "source.local.unique"
        });
        if !excludes.is_empty() {
            info.caps.insert(0, "source.local.excludepatterns");
        }
        Output::new(op, Vec::new(), info, 0)
    }

    /// The stage `name_or_index` refers to, if it is one.
    pub fn stage_index(&self, name_or_index: &str) -> Option<usize> {
        let lower = name_or_index.to_ascii_lowercase();
        if let Some(&i) = self.names.get(&lower) {
            return Some(i);
        }
        lower.parse::<usize>().ok().filter(|&i| i < self.stages.len())
    }

    /// What BuildKit refuses in `COPY --from=FROM` before looking it up: a variable (not
    /// expanded there), a stage index past the last stage, a stage defined after the one
    /// being lowered.
    pub fn check_copy_from(&self, from: &str, at: &Instruction) -> Result<(), ConvertError> {
        if self.lexer.process_word(from, &Vars::default()).map_or(true, |w| w != from) {
            return fail(
                at,
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
            );
        }
        let current = self.lowering.last().copied().unwrap_or(0);
        match (self.names.get(&from.to_ascii_lowercase()), from.parse::<usize>()) {
            (None, Ok(index)) if index >= self.stages.len() => fail(at, format!("invalid stage index {index}")),
            (Some(&index), _) | (None, Ok(index)) if index > current => fail(
                at,
                format!(
                    "cannot copy from stage {from:?}, it needs to be defined before current stage {:?}",
                    self.stages[current].name.clone().unwrap_or_default()
                ),
            ),
            _ => Ok(()),
        }
    }

    /// The final state of stage `index` (needed by `at`), lowering it first if needed.
    pub fn stage_output(&mut self, index: usize, at: &Instruction) -> Result<Option<Output>, ConvertError> {
        self.lower(index, at.start_line)?;
        Ok(self.done[&index].output.clone())
    }

    /// How BuildKit names stage `index` in errors.
    fn stage_label(&self, index: usize) -> String {
        self.stages[index].name.clone().unwrap_or_else(|| format!("stage-{index}"))
    }

    fn circular(&self, index: usize, line: usize) -> ConvertError {
        ConvertError::new(line, format!("circular dependency detected on stage: {}", self.stage_label(index)))
    }

    /// Lowers `target` and the stages it needs, those first, so lowering one stage never
    /// recurses into a chain of others.
    fn lower_with_dependencies(&mut self, target: usize) -> Result<(), ConvertError> {
        for index in stage_graph::lowering_order(self.stages.len(), target, |i| self.dependencies(i)) {
            self.lower(index, self.stages[index].from.start_line)?;
        }
        Ok(())
    }

    /// An image as a source op (for FROM and COPY --from=image), its config and the pinned
    /// reference.
    pub fn image_source(
        &self,
        reference: &str,
        platform: &Platform,
        at: &Instruction,
    ) -> Result<(pb::Op, Value, String), ConvertError> {
        let resolved =
            self.options.resolver.resolve(reference, platform).map_err(|e| self.pull_failed(reference, e, at))?;
        let pinned = if resolved.reference.contains('@') {
            resolved.reference.clone()
        } else {
            format!("{}@{}", resolved.reference, resolved.digest)
        };
        let op = pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: format!("docker-image://{pinned}"),
                attrs: BTreeMap::new(),
            })),
            platform: Some(pb::Platform {
                architecture: platform.architecture.clone(),
                os: platform.os.clone(),
                variant: platform.variant.clone(),
                ..Default::default()
            }),
            constraints: Some(Default::default()),
            ..Default::default()
        };
        Ok((op, resolved.config, pinned))
    }

    /// Why `reference` could not be had as an image; a name that could be a stage's gets a
    /// hint that no stage has it, as BuildKit treats any other name as an image.
    fn pull_failed(&self, reference: &str, error: String, at: &Instruction) -> ConvertError {
        let failed = ConvertError::new(at.start_line, format!("pulling image {reference:?} failed: {error}"));
        let stage_like = reference.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !stage_like {
            return failed;
        }
        let names: Vec<String> = self.stages.iter().filter_map(|s| s.name.as_ref()).map(|n| format!("{n:?}")).collect();
        let stages = match (names.is_empty(), self.stages.len()) {
            (true, n) => format!("the stages have no names; refer to one by its index, 0 to {}", n - 1),
            (false, n) => format!("stages: {}; by index: 0 to {}", names.join(", "), n - 1),
        };
        failed.with_help(format!("if you meant a build stage, no stage named {reference:?} exists ({stages})"))
    }

    /// Lowers stage `index`, needed by the instruction at `line`.
    fn lower(&mut self, index: usize, line: usize) -> Result<(), ConvertError> {
        if self.done.contains_key(&index) {
            return Ok(());
        }
        if self.lowering.contains(&index) {
            return Err(self.circular(index, line));
        }
        self.lowering.push(index);
        let result = self.lower_stage(index);
        self.lowering.pop();
        result
    }

    fn lower_stage(&mut self, index: usize) -> Result<(), ConvertError> {
        let from = self.stages[index].from.clone();
        let body = self.stages[index].body.clone();
        let name = self.stages[index].name.clone();
        let mut state = self.start_stage(index, &from)?;
        state.prefix = match (&name, self.stages.len()) {
            (_, 1) => String::new(),
            (Some(n), _) => format!("{n} "),
            (None, _) => format!("stage-{index} "),
        };
        // The base's ONBUILD triggers run first, and are not passed on.
        let triggers = string_list(&state.image["config"]["OnBuild"]);
        state.config().remove("OnBuild");
        for trigger in triggers {
            let parsed = super::parse(&trigger).map_err(|e| {
                ConvertError::new(
                    from.start_line,
                    format!("the base image's ONBUILD trigger {trigger:?}: {}", e.message),
                )
            })?;
            let [mut instruction] = <[Instruction; 1]>::try_from(parsed.instructions).map_err(|_| {
                ConvertError::new(
                    from.start_line,
                    format!("the base image's ONBUILD trigger {trigger:?} is not one instruction"),
                )
            })?;
            if matches!(instruction.keyword().as_str(), "onbuild" | "from" | "maintainer") {
                return fail(
                    &from,
                    format!("{} isn't allowed as an ONBUILD trigger", instruction.keyword().to_uppercase()),
                );
            }
            instruction.start_line = from.start_line;
            instruction.end_line = from.end_line;
            self.dispatch(&mut state, &instruction)?;
        }
        for instruction in &body {
            self.dispatch(&mut state, instruction)?;
        }
        self.done.insert(index, state);
        Ok(())
    }

    /// FROM: a stage, `scratch` or an image.
    fn start_stage(&mut self, index: usize, from: &Instruction) -> Result<StageState, ConvertError> {
        let flags = instructions::flags(from).or_else(|e| fail(from, e))?;
        let words = instructions::words(from);
        let base = self
            .lexer
            .process_word(&words[0], &self.global)
            .map_err(|e| ConvertError::new(from.start_line, e.to_string()))?;
        let platform = match flags.get("platform") {
            Some(p) => {
                let p = self
                    .lexer
                    .process_word(p, &self.global)
                    .map_err(|e| ConvertError::new(from.start_line, e.to_string()))?;
                Platform::parse(&p).or_else(|e| fail(from, e))?
            }
            None => self.options.platform.clone(),
        };
        let steps = self.stages[index]
            .body
            .iter()
            .filter(|i| matches!(i.keyword().as_str(), "run" | "copy" | "add" | "workdir"))
            .count();
        let mut state = StageState {
            output: None,
            env: Vars::default(),
            args: Vec::new(),
            dir: "/".into(),
            user: String::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            platform: platform.clone(),
            image: json!({
                "architecture": platform.architecture,
                "os": platform.os,
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
                "config": {},
            }),
            prefix: String::new(),
            step: 0,
            steps,
        };
        if let Some(parent) = self.stage_index(&base).filter(|&i| i < index) {
            self.lower(parent, from.start_line)?;
            let parent = &self.done[&parent];
            state.output = parent.output.clone();
            state.env = parent.env.clone();
            state.args = parent.args.clone();
            state.dir = parent.dir.clone();
            state.user = parent.user.clone();
            state.shell = parent.shell.clone();
            state.image = parent.image.clone();
            state.platform = parent.platform.clone();
            return Ok(state);
        }
        if base.eq_ignore_ascii_case("scratch") {
            state.env.set("PATH", DEFAULT_PATH);
            state.config().insert("Env".into(), json!([format!("PATH={DEFAULT_PATH}")]));
            state.config().insert("WorkingDir".into(), json!("/"));
            return Ok(state);
        }
        state.steps += 1;
        if let Some(local) = self.named_local(&base) {
            // Its files, copied onto scratch as the stage's first layer; its config is
            // scratch's.
            state.env.set("PATH", DEFAULT_PATH);
            state.config().insert("Env".into(), json!([format!("PATH={DEFAULT_PATH}")]));
            state.config().insert("WorkingDir".into(), json!("/"));
            let mut info = OpInfo::named(state.step_name(&format!("FROM {base}")));
            info.caps = vec!["file.base"];
            info.lines = vec![(from.start_line as i32, from.end_line as i32)];
            state.output = Some(copy::whole_directory(local, info));
            return Ok(state);
        }
        let (source, config, pinned) = self.image_source(&base, &platform, from)?;
        let mut info = OpInfo::named(state.step_name(&format!("FROM {pinned}")));
        info.description.insert("com.docker.dockerfile.v1.command".into(), from.original.trim().to_string());
        info.caps = vec!["source.image"];
        info.lines = vec![(from.start_line as i32, from.end_line as i32)];
        state.output = Some(Output::new(source, Vec::new(), info, 0));
        state.image = base_image(config, &platform);
        let env: Vec<String> = string_list(&state.image["config"]["Env"]);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            state.env.set("PATH", DEFAULT_PATH);
        }
        for entry in env {
            let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
            state.env.set(k, v);
        }
        if let Some(dir) = state.image["config"]["WorkingDir"].as_str().filter(|d| !d.is_empty()) {
            state.dir = dir.to_string();
        }
        if let Some(user) = state.image["config"]["User"].as_str() {
            state.user = user.to_string();
        }
        Ok(state)
    }

    fn dispatch(&mut self, state: &mut StageState, instruction: &Instruction) -> Result<(), ConvertError> {
        let flags: Flags = instructions::flags(instruction).or_else(|e| fail(instruction, e))?;
        match instruction.keyword().as_str() {
            "arg" => self.arg(state, instruction),
            "env" => {
                let mut applied = Vec::new();
                for (key, value) in instructions::pairs(instruction) {
                    let key = state.expand(&self.lexer, &key, instruction)?;
                    let value = state.expand(&self.lexer, &value, instruction)?;
                    applied.push((key, value));
                }
                for (key, value) in &applied {
                    state.env.set(key, value);
                    set_config_env(state.config(), key, value);
                }
                let shown: Vec<String> = applied.iter().map(|(k, v)| format!("{k}={v}")).collect();
                state.history(format!("ENV {}", shown.join(" ")), true);
                Ok(())
            }
            "workdir" => {
                let words = instructions::words(instruction);
                let dir = state.expand(&self.lexer, words.first().map_or("", String::as_str), instruction)?;
                state.dir = state.resolve_path(&dir).trim_end_matches('/').to_string();
                if state.dir.is_empty() {
                    state.dir = "/".into();
                }
                let value = json!(state.dir);
                state.config().insert("WorkingDir".into(), value);
                let name = state.step_name(&format!("WORKDIR {}", state.dir));
                if state.dir != "/" {
                    copy::mkdir_workdir(state, name, instruction);
                }
                // "/" needs no directory made: no layer, as BuildKit records it.
                let empty = state.dir == "/";
                state.history(format!("WORKDIR {}", state.dir), empty);
                Ok(())
            }
            "user" => {
                let words = instructions::words(instruction);
                state.user = state.expand(&self.lexer, words.first().map_or("", String::as_str), instruction)?;
                let value = json!(state.user);
                state.config().insert("User".into(), value);
                state.history(format!("USER {}", state.user), true);
                Ok(())
            }
            "shell" => {
                if !instruction.json {
                    return fail(instruction, "SHELL requires the arguments to be in JSON form");
                }
                state.shell = instructions::words(instruction);
                let value = json!(state.shell);
                state.config().insert("Shell".into(), value);
                state.history(format!("SHELL [{}]", state.shell.join(" ")), true);
                Ok(())
            }
            "run" => exec::run(self, state, instruction, &flags),
            "copy" | "add" => copy::copy(self, state, instruction, &flags),
            "cmd" | "entrypoint" => {
                let key = if instruction.keyword() == "cmd" { "Cmd" } else { "Entrypoint" };
                let words = instructions::words(instruction);
                let args = if instruction.json {
                    words
                } else {
                    let mut args = state.shell.clone();
                    args.push(instructions::rest_of_line(instruction));
                    args
                };
                state.config().insert(key.into(), json!(args));
                if key == "Cmd" {
                    state.config().insert("ArgsEscaped".into(), json!(true));
                } else {
                    state.config().remove("Cmd");
                }
                state.history(format!("{} {}", key.to_uppercase(), go_list(&args)), true);
                Ok(())
            }
            "label" => {
                let mut labels = state.config().get("Labels").cloned().unwrap_or_else(|| json!({}));
                let mut shown = Vec::new();
                for (key, value) in instructions::pairs(instruction) {
                    let key = state.expand(&self.lexer, &key, instruction)?;
                    let value = state.expand(&self.lexer, &value, instruction)?;
                    shown.push(format!("{key}={value}"));
                    labels[key] = json!(value);
                }
                state.config().insert("Labels".into(), labels);
                state.history(format!("LABEL {}", shown.join(" ")), true);
                Ok(())
            }
            "expose" => {
                let mut ports = state.config().get("ExposedPorts").cloned().unwrap_or_else(|| json!({}));
                // BuildKit sorts the words as written, before expanding them.
                let mut words = instructions::words(instruction);
                words.sort();
                let mut shown = Vec::new();
                // A word may expand to several (ARG PORTS="80 443").
                let mut specs = Vec::new();
                for word in words {
                    let expanded = self.lexer.process_words(&word, &state.env);
                    specs.extend(expanded.or_else(|e| fail(instruction, e.to_string()))?);
                }
                for spec in specs {
                    for port in exposed_ports(&spec).or_else(|e| fail(instruction, e))? {
                        ports[&port] = json!({});
                        shown.push(port);
                    }
                }
                state.config().insert("ExposedPorts".into(), ports);
                state.history(format!("EXPOSE [{}]", shown.join(" ")), true);
                Ok(())
            }
            "volume" => {
                let mut volumes = state.config().get("Volumes").cloned().unwrap_or_else(|| json!({}));
                let mut shown = Vec::new();
                for word in instructions::words(instruction) {
                    let volume = state.expand(&self.lexer, &word, instruction)?;
                    if volume.is_empty() {
                        return fail(instruction, "VOLUME specified can not be an empty string");
                    }
                    shown.push(volume.clone());
                    volumes[volume] = json!({});
                }
                state.config().insert("Volumes".into(), volumes);
                state.history(format!("VOLUME [{}]", shown.join(" ")), true);
                Ok(())
            }
            "stopsignal" => {
                let words = instructions::words(instruction);
                let signal = state.expand(&self.lexer, words.first().map_or("", String::as_str), instruction)?;
                state.config().insert("StopSignal".into(), json!(signal));
                state.history(format!("STOPSIGNAL {signal}"), true);
                Ok(())
            }
            "maintainer" => {
                let name = instructions::rest_of_line(instruction);
                state.image["author"] = json!(name);
                state.history(format!("MAINTAINER {name}"), true);
                Ok(())
            }
            "onbuild" => {
                if let Some(Arg::Nested(trigger)) = instruction.args.first()
                    && matches!(trigger.keyword().as_str(), "from" | "maintainer")
                {
                    return fail(
                        instruction,
                        format!("{} isn't allowed as an ONBUILD trigger", trigger.keyword().to_uppercase()),
                    );
                }
                let text = instruction.original.trim();
                let trigger = text.split_once(char::is_whitespace).map_or("", |(_, rest)| rest.trim()).to_string();
                let mut triggers = state.config().get("OnBuild").cloned().unwrap_or_else(|| json!([]));
                triggers.as_array_mut().expect("an array").push(json!(trigger));
                state.config().insert("OnBuild".into(), triggers);
                Ok(())
            }
            "healthcheck" => exec::healthcheck(state, instruction, &flags),
            "from" => unreachable!("FROM starts a stage"),
            other => fail(instruction, format!("unknown instruction: {}", other.to_uppercase())),
        }
    }

    /// ARG: declares a variable in the stage, valued from `--build-arg`, then the default,
    /// then (for a name declared globally) the global value.
    fn arg(&mut self, state: &mut StageState, instruction: &Instruction) -> Result<(), ConvertError> {
        let mut shown = Vec::new();
        for word in instructions::words(instruction) {
            let (name, default) = match word.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(state.expand(&self.lexer, d, instruction)?)),
                None => (word.clone(), None),
            };
            let value = self
                .options
                .build_args
                .get(&name)
                .cloned()
                .or(default.clone())
                .or_else(|| self.global.get(&name).map(str::to_string));
            // History shows the value the build used.
            shown.push(match &value {
                Some(v) => format!("{name}={v}"),
                None => name.clone(),
            });
            if let Some(value) = &value {
                state.env.set(&name, value);
            }
            state.args.push((name, value));
        }
        state.history(format!("ARG {}", shown.join(" ")), true);
        Ok(())
    }
}

/// BuildKit's rule for a stage name (lowercased): `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Leaves out the config's empty values, as the image spec's `omitempty` fields do in the
/// config BuildKit writes (`CMD []` gives no `Cmd`).
fn omit_empty(config: &mut Value) {
    if let Some(fields) = config.as_object_mut() {
        fields.retain(|_, v| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            Value::Null => false,
            _ => true,
        });
    }
}

/// The `PORT/PROTO` entries an EXPOSE word stands for, as BuildKit parses them
/// (`[[IP:]HOSTPORT:]PORT[-END][/PROTO]`, a range giving every port in it), with its errors.
fn exposed_ports(spec: &str) -> Result<Vec<String>, String> {
    let container = spec.rsplit(':').next().unwrap_or(spec);
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    let proto = match proto.to_ascii_lowercase().as_str() {
        _ if port.is_empty() => return Err(format!("invalid port: {spec:?}: no port specified")),
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        _ => return Err(format!("invalid port: {spec:?}: invalid proto: {proto}")),
    };
    let number = |n: &str| n.parse::<u16>().map_err(|_| format!("invalid containerPort: {port}"));
    let (start, end) = match port.split_once('-') {
        Some((a, b)) if a != b => (number(a)?, number(b)?),
        Some((a, _)) => (number(a)?, number(a)?),
        None => (number(port)?, number(port)?),
    };
    if end < start {
        return Err(format!("invalid containerPort: {port}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

pub fn string_list(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Go's `%q` of a string slice: `["a" "b"]`.
pub fn go_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| super::parser::go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

fn set_config_env(config: &mut serde_json::Map<String, Value>, key: &str, value: &str) {
    let mut env = string_list(config.get("Env").unwrap_or(&Value::Null));
    let entry = format!("{key}={value}");
    match env.iter().position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
        Some(at) => env[at] = entry,
        None => env.push(entry),
    }
    config.insert("Env".into(), json!(env));
}

/// The output config of an image-based stage: the base's, with the build's platform.
fn base_image(config: Value, platform: &Platform) -> Value {
    let mut image = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "rootfs": config.get("rootfs").cloned().unwrap_or_else(|| json!({"type": "layers", "diff_ids": []})),
        "history": config.get("history").cloned().unwrap_or_else(|| json!([])),
        "config": config.get("config").cloned().filter(Value::is_object).unwrap_or_else(|| json!({})),
    });
    if image["config"].get("Env").is_none() {
        image["config"]["Env"] = json!([format!("PATH={DEFAULT_PATH}")]);
    }
    image
}

/// The platform ARGs every build has in its global scope.
fn platform_args(options: &Options<'_>) -> Vars {
    let mut vars = Vars::default();
    for (prefix, p) in [("BUILD", &options.build_platform), ("TARGET", &options.platform)] {
        vars.set(&format!("{prefix}PLATFORM"), &p.format());
        vars.set(&format!("{prefix}OS"), &p.os);
        vars.set(&format!("{prefix}ARCH"), &p.architecture);
        vars.set(&format!("{prefix}VARIANT"), &p.variant);
    }
    vars
}

/// `# syntax=` may name BuildKit's standard Dockerfile frontend (built in here); any
/// other frontend image is an error, since Fledge cannot run one.
pub fn check_syntax(ast: &Ast) -> Result<(), ConvertError> {
    let Some((_, syntax)) = ast.directives.iter().find(|(k, _)| k == "syntax") else { return Ok(()) };
    let name = syntax.split(['@', ':']).next().unwrap_or_default();
    let name = name.strip_prefix("docker.io/").unwrap_or(name);
    if matches!(name, "docker/dockerfile" | "docker/dockerfile-upstream") {
        return Ok(());
    }
    Err(ConvertError::new(
        1,
        format!(
            "the `# syntax={syntax}` directive asks for another frontend; Fledge has BuildKit's Dockerfile frontend built in and cannot run frontend images (remove the directive, or name docker/dockerfile)"
        ),
    ))
}

/// Lowers `ast` for `options`.
pub fn convert(ast: &Ast, options: &Options<'_>) -> Result<Converted, ConvertError> {
    check_syntax(ast)?;
    let lexer = Lexer::new(ast.escape);
    let mut global = platform_args(options);
    let mut stages: Vec<Stage> = Vec::new();
    let mut names = BTreeMap::new();
    let mut warnings = Vec::new();
    for instruction in &ast.instructions {
        match instruction.keyword().as_str() {
            "from" => {
                let words = instructions::words(instruction);
                let name = match words.as_slice() {
                    [_] => None,
                    [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
                    _ => {
                        return fail(
                            instruction,
                            "FROM requires either one or three arguments: FROM <image> [AS <name>]",
                        );
                    }
                };
                if let Some(n) = &name {
                    if !valid_stage_name(n) {
                        let written = words.last().map_or("", String::as_str);
                        return fail(
                            instruction,
                            format!(
                                "invalid name for build stage: {written:?}, name can't start with a number or contain symbols"
                            ),
                        );
                    }
                    // A repeated name means its last stage, as in BuildKit, which lints it.
                    if names.insert(n.clone(), stages.len()).is_some() {
                        warnings.push((
                            instruction.start_line,
                            format!("DuplicateStageName: Duplicate stage name {n:?}, stage names should be unique"),
                        ));
                    }
                }
                stages.push(Stage { name, from: instruction.clone(), body: Vec::new() });
            }
            _ if !stages.is_empty() => stages.last_mut().expect("a stage").body.push(instruction.clone()),
            "arg" => {
                for word in instructions::words(instruction) {
                    let (name, default) = match word.split_once('=') {
                        Some((n, d)) => (
                            n,
                            Some(
                                lexer
                                    .process_word(d, &global)
                                    .map_err(|e| ConvertError::new(instruction.start_line, e.to_string()))?,
                            ),
                        ),
                        None => (word.as_str(), None),
                    };
                    if let Some(value) = options.build_args.get(name).cloned().or(default) {
                        global.set(name, &value);
                    }
                }
            }
            other => {
                return fail(
                    instruction,
                    format!(
                        "no build stage in current context: {} comes before the first FROM (only ARG may)",
                        other.to_uppercase()
                    ),
                );
            }
        }
    }
    if stages.is_empty() {
        return Err(ConvertError::new(1, "the Dockerfile has no FROM instruction"));
    }
    let mut context = Context {
        options,
        lexer,
        context_paths: Vec::new(),
        used_paths: Vec::new(),
        context: None,
        locals: BTreeMap::new(),
        stages,
        names,
        done: BTreeMap::new(),
        lowering: Vec::new(),
        global,
    };
    if let Some(cycle) = stage_graph::find_cycle(context.stages.len(), |i| context.dependencies(i)) {
        return Err(context.circular(cycle.stage, cycle.line));
    }
    let target = match &options.target {
        Some(name) => context
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(name.to_ascii_lowercase().as_str()))
            .ok_or_else(|| ConvertError::new(0, format!("target stage {name:?} could not be found")))?,
        None => context.stages.len() - 1,
    };
    context.context_paths = sorted(copy::context_paths(&context, target));
    context.lower_with_dependencies(target)?;
    let used = sorted(std::mem::take(&mut context.used_paths));
    if used != context.context_paths {
        // A base image's ONBUILD trigger copied from the context: lower again with the
        // complete list, since the context source's digest depends on it.
        context.context_paths = used;
        context.context = None;
        context.done.clear();
        context.lower_with_dependencies(target)?;
    }
    let state = context.done.remove(&target).expect("lowered");
    let mut image = state.image;
    omit_empty(&mut image["config"]);
    Ok(Converted { result: state.output, image, warnings })
}

impl Context<'_> {
    /// The stages stage `index` needs, each with the line that needs it: its FROM (a name
    /// only refers to an earlier stage), `COPY --from` and `RUN --mount=from=` in its
    /// body, and those in the ONBUILD triggers of the stage it builds on (they run at its
    /// FROM). References are matched as lowering matches them.
    pub fn dependencies(&self, index: usize) -> Vec<Dependency> {
        let stage = &self.stages[index];
        let from = stage.from.start_line;
        let base = instructions::words(&stage.from).first().and_then(|b| self.lexer.process_word(b, &self.global).ok());
        let parent = base.and_then(|b| self.stage_index(&b)).filter(|&i| i < index);
        let mut found: Vec<Dependency> = parent.iter().map(|&stage| Dependency { stage, line: from }).collect();
        let triggers =
            parent.into_iter().flat_map(|p| self.stages[p].body.iter()).filter_map(|i| match i.args.first() {
                Some(Arg::Nested(trigger)) if i.keyword() == "onbuild" => Some((trigger.as_ref(), from)),
                _ => None,
            });
        let own = stage.body.iter().map(|i| (i, i.start_line));
        for (instruction, line) in own.chain(triggers) {
            let Ok(flags) = instructions::flags(instruction) else { continue };
            let mounts = flags.all("mount").iter().filter_map(|m| exec::mount_from(m));
            let refs = flags.get("from").into_iter().chain(mounts);
            found.extend(refs.filter_map(|r| self.stage_index(r)).map(|stage| Dependency { stage, line }));
        }
        found
    }

    pub fn stage_count(&self) -> usize {
        self.stages.len()
    }

    /// The instructions of stage `index`.
    pub fn stage_body(&self, index: usize) -> &[Instruction] {
        &self.stages[index].body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_standard_frontend_may_be_named() {
        let check = |text: &str| check_syntax(&super::super::parse(text).unwrap());
        assert!(check("# syntax=docker/dockerfile:1\nFROM a\n").is_ok());
        assert!(check("# syntax=docker.io/docker/dockerfile:1.7-labs@sha256:abc\nFROM a\n").is_ok());
        assert!(check("FROM a\n").is_ok());
        let err = check("# syntax=example.com/my/frontend:2\nFROM a\n").unwrap_err();
        assert!(
            err.message.contains("example.com/my/frontend:2") && err.message.contains("built in"),
            "{}",
            err.message
        );
    }
}
