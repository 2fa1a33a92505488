//! COPY and ADD → FileOp copy actions (from the build context, another stage or an image),
//! and WORKDIR's mkdir.

use super::convert::{Context, ConvertError, StageState, clean};
use super::exec::mount_source;
use super::instructions::{self, Flags};
use super::parser::Instruction;
use crate::graph::{OpInfo, Output, dedup_inputs};
use crate::pb;

fn error(at: &Instruction, message: impl Into<String>) -> ConvertError {
    ConvertError::new(at.start_line, message)
}

fn file_op(actions: Vec<pb::FileAction>) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::File(pb::FileOp { actions })),
        constraints: Some(Default::default()),
        ..Default::default()
    }
}

/// The whole of `source` (a local directory) copied onto scratch, as one layer.
pub fn whole_directory(source: Output, info: OpInfo) -> Output {
    let copy = pb::FileActionCopy {
        src: "/".into(),
        dest: "/".into(),
        mode: -1,
        follow_symlink: true,
        dir_copy_contents: true,
        create_dest_path: true,
        timestamp: -1,
        ..Default::default()
    };
    let action =
        pb::FileAction { input: -1, secondary_input: 0, output: 0, action: Some(pb::file_action::Action::Copy(copy)) };
    Output::new(file_op(vec![action]), vec![source], info, 0)
}

/// `--chown=user[:group]`: numbers as ids, names looked up in the files of the action's
/// input `input` (-1: none, and BuildKit refuses a name then).
fn owner(spec: &str, input: i64) -> Option<pb::ChownOpt> {
    if spec.is_empty() {
        return None;
    }
    let user_opt = |s: &str| {
        let user = match s.parse::<u32>() {
            Ok(id) => pb::user_opt::User::ById(id),
            Err(_) => pb::user_opt::User::ByName(pb::NamedUserOpt { name: s.to_string(), input }),
        };
        pb::UserOpt { user: Some(user) }
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    Some(pb::ChownOpt { user: Some(user_opt(user)), group: group.filter(|g| !g.is_empty()).map(user_opt) })
}

/// `--chmod`: octal bits, or a symbolic mode (passed on as written).
fn mode(spec: Option<&str>, at: &Instruction) -> Result<(i32, String), ConvertError> {
    match spec {
        None | Some("") => Ok((-1, String::new())),
        Some(text) if text.chars().all(|c| c.is_ascii_digit()) => {
            let invalid = || {
                error(
                    at,
                    format!("invalid chmod parameter: '{text}'. it should be octal string and between 0 and 07777"),
                )
            };
            match u32::from_str_radix(text, 8) {
                Ok(bits) if bits <= 0o7777 => Ok((bits as i32, String::new())),
                _ => Err(invalid()),
            }
        }
        // A symbolic mode leaves the numeric one at 0 (BuildKit's encoding).
        Some(text) => Ok((0, text.to_string())),
    }
}

/// Where one COPY/ADD source comes from.
struct Source {
    output: Output,
    path: String,
    /// How to copy: a file made by the build (heredoc, download) is copied as it is.
    kind: SourceKind,
    /// `--parents`: the pattern under `path` to copy with its directories, and the path that
    /// must exist (none for a wildcard).
    parents: Option<(String, Option<String>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    /// Context, stage or image paths: wildcards, links followed, directory contents.
    Path,
    /// A heredoc body: a plain file.
    Heredoc,
    /// A download: a plain file, unpacked only with `--unpack=true`.
    Url,
}

/// COPY / ADD.
pub fn copy(cx: &mut Context<'_>, state: &mut StageState, at: &Instruction, flags: &Flags) -> Result<(), ConvertError> {
    let is_add = at.keyword() == "add";
    let mut words = instructions::words(at);
    if words.len() < 2 {
        return Err(error(
            at,
            format!(
                "{} requires at least two arguments, but only one was provided. Destination could not be determined",
                at.keyword().to_uppercase()
            ),
        ));
    }
    let dest_word = words.pop().expect("two or more");
    let dest = state.expand(&cx.lexer, &dest_word, at)?;
    // An empty destination (a variable that expanded to nothing) is the working directory,
    // as BuildKit takes it.
    let dest = state.resolve_path(if dest.is_empty() { "." } else { &dest });
    let from = match flags.get("from") {
        Some(from) => {
            cx.check_copy_from(from, at)?;
            Some(mount_source(cx, from, at)?)
        }
        None => None,
    };
    let parents = flags.bool("parents").map_err(|e| error(at, e))?;
    let mut sources = Vec::new();
    for word in &words {
        match heredoc_source(state, at, word)? {
            Some(source) => sources.push(source),
            None => {
                let expanded = state.expand(&cx.lexer, word, at)?;
                if is_add && is_git(&expanded) {
                    let keep = flags.bool("keep-git-dir").map_err(|e| error(at, e))?;
                    sources.push(git_source(&expanded, keep));
                    continue;
                }
                if expanded.starts_with("http://") || expanded.starts_with("https://") {
                    if !is_add {
                        return Err(error(at, format!("source can't be a URL for COPY ({expanded}): use ADD")));
                    }
                    sources.push(url_source(&expanded, flags.get("checksum"), at)?);
                    continue;
                }
                if flags.get("checksum").is_some() {
                    return Err(error(at, "--checksum works only for an HTTP(S) source"));
                }
                let (path, parents) =
                    if parents { parents_pattern(&expanded) } else { (clean(&format!("/{expanded}")), None) };
                let output = match &from {
                    Some(from) => from.clone(),
                    None => {
                        cx.used_paths.push(clean(&format!("/{word}"))[1..].to_string());
                        cx.build_context()
                    }
                };
                sources.push(Source { output, path, parents, kind: SourceKind::Path });
            }
        }
    }
    let chown = match flags.get("chown") {
        Some(c) => state.expand(&cx.lexer, c, at)?,
        None => String::new(),
    };
    // --chmod is expanded, as --chown (BuildKit's CopyCommand.Expand).
    let chmod = flags.get("chmod").map(|c| state.expand(&cx.lexer, c, at)).transpose()?;
    let (mode_bits, mode_str) = mode(chmod.as_deref(), at)?;
    let unpack = is_add && flags.get("unpack") != Some("false");
    let excludes: Vec<String> = flags.all("exclude").to_vec();

    // --link copies onto scratch and merges the result over the stage, so the layer does
    // not depend on what is below it; BuildKit does so only without --chmod.
    let link = flags.bool("link").map_err(|e| error(at, e))? && flags.get("chmod").is_none();
    let base = if link { None } else { state.output.clone() };
    let mut listed: Vec<Output> = base.iter().cloned().collect();
    listed.extend(sources.iter().map(|s| s.output.clone()));
    let (inputs, positions) = dedup_inputs(&listed);
    let offset = usize::from(base.is_some());
    let count = sources.len();
    let mut actions = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let plain = source.kind == SourceKind::Path;
        let unpack = match source.kind {
            SourceKind::Path => unpack,
            SourceKind::Heredoc => false,
            SourceKind::Url => flags.get("unpack").is_some_and(|v| v.is_empty() || v == "true"),
        };
        // Each action works on the previous one's result (numbered after the inputs).
        let input = match (i, &base) {
            (0, Some(_)) => positions[0],
            (0, None) => -1,
            _ => (inputs.len() + i - 1) as i64,
        };
        let copy = pb::FileActionCopy {
            src: source.path.clone(),
            dest: dest.clone(),
            // Names are read from the op's base, as BuildKit's client marshals them.
            owner: owner(&chown, if base.is_some() { positions[0] } else { -1 }),
            mode: mode_bits,
            mode_str: mode_str.clone(),
            follow_symlink: plain,
            dir_copy_contents: plain,
            attempt_unpack_docker_compatibility: unpack,
            create_dest_path: true,
            allow_wildcard: plain,
            allow_empty_wildcard: plain,
            timestamp: -1,
            exclude_patterns: if plain { excludes.clone() } else { Vec::new() },
            include_patterns: source.parents.iter().map(|(pattern, _)| pattern.clone()).collect(),
            required_paths: source.parents.iter().filter_map(|(_, required)| required.clone()).collect(),
            ..Default::default()
        };
        actions.push(pb::FileAction {
            input,
            secondary_input: positions[offset + i],
            output: if i + 1 == count { 0 } else { -1 },
            action: Some(pb::file_action::Action::Copy(copy)),
        });
    }
    let mut shown = format!("{} ", at.keyword().to_uppercase());
    for flag in &at.flags {
        shown += flag;
        shown.push(' ');
    }
    shown += &instructions::rest_of_line(at);
    let mut info = OpInfo::named(state.step_name(&shown));
    info.caps = vec!["file.base"];
    info.lines = vec![(at.start_line as i32, at.end_line as i32)];
    // Go lists a FileOp's inputs for the definition as the base first, then the sources
    // from the last action back to the first.
    let mut order: Vec<Output> = base.iter().cloned().collect();
    order.extend(sources.iter().rev().map(|s| s.output.clone()));
    let order = dedup_inputs(&order).0;
    let copied = Output::new(file_op(actions), inputs, info.clone(), 0).visiting(order);
    state.output = Some(match (link, &state.output) {
        (true, Some(below)) => merge(below, &copied, info),
        _ => copied,
    });

    // History names the flags that shape the result: owner, mode, parents (in that order).
    let mut created_by = at.keyword().to_uppercase();
    for (name, value) in [("chown", flags.get("chown").map(|_| chown.as_str())), ("chmod", chmod.as_deref())] {
        if let Some(value) = value {
            created_by += &format!(" --{name}={value}");
        }
    }
    if parents {
        created_by += " --parents";
    }
    // The words as expanded (BuildKit expands the instruction before it records it);
    // heredoc sources appear as `<<NAME`, quotes removed.
    let mut shown_words = Vec::new();
    for word in instructions::words(at) {
        shown_words.push(match super::heredoc::parse(&word) {
            Ok(Some(doc)) => format!("<<{}", doc.name),
            _ => state.expand(&cx.lexer, &word, at)?,
        });
    }
    state.history(format!("{created_by} {} # buildkit", shown_words.join(" ")), false);
    Ok(())
}

/// `--parents`: `base/./rest` copies `rest` with its directories from under `base`;
/// without a `./` pivot the whole path is kept, from the root. A path without wildcards
/// must exist.
fn parents_pattern(source: &str) -> (String, Option<(String, Option<String>)>) {
    let (base, pattern) = match source.split_once("/./") {
        Some((base, rest)) => (clean(&format!("/{base}")), rest.to_string()),
        None => ("/".to_string(), clean(&format!("/{source}"))[1..].to_string()),
    };
    let required = (!pattern.contains(['*', '?', '['])).then(|| clean(&format!("{base}/{pattern}")));
    (base, Some((pattern, required)))
}

/// An `http(s)://` source: the download, named after the URL's last path segment
/// (`__unnamed__` without one), pinned by `--checksum` when given.
fn url_source(url: &str, checksum: Option<&str>, at: &Instruction) -> Result<Source, ConvertError> {
    let path_part = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path_part.splitn(4, '/').nth(3).unwrap_or("");
    let name = after_host.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("__unnamed__");
    let mut attrs = std::collections::BTreeMap::new();
    let mut caps = vec!["source.http"];
    if let Some(checksum) = checksum {
        if !checksum.starts_with("sha256:") || checksum.len() != 71 {
            return Err(error(at, format!("--checksum={checksum}: expected sha256:<64 hex digits>")));
        }
        attrs.insert("http.checksum".to_string(), checksum.to_string());
        caps.push("source.http.checksum");
    }
    attrs.insert("http.filename".to_string(), name.to_string());
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp { identifier: url.to_string(), attrs })),
        constraints: Some(Default::default()),
        ..Default::default()
    };
    let output = Output::new(op, Vec::new(), OpInfo { caps, ..OpInfo::default() }, 0);
    Ok(Source { output, path: format!("/{name}"), parents: None, kind: SourceKind::Url })
}

/// A git repository URL as ADD recognises one: `git@host:path`, `git://`, `ssh://`, or
/// `http(s)://` ending in `.git` (before any `#ref`).
fn is_git(source: &str) -> bool {
    let without_fragment = source.split('#').next().unwrap_or(source);
    source.starts_with("git@")
        || source.starts_with("git://")
        || source.starts_with("ssh://")
        || ((source.starts_with("https://") || source.starts_with("http://")) && without_fragment.ends_with(".git"))
}

/// A git source: `git://HOST/PATH[#REF[:SUBDIR]]`, the real remote in `git.fullurl`, the
/// build's auth secrets named, and the ssh agent mounted for ssh remotes.
fn git_source(url: &str, keep_git_dir: bool) -> Source {
    let (remote, fragment) = match url.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (url, None),
    };
    let ssh = remote.starts_with("git@") || remote.starts_with("ssh://");
    let host_path = match remote.strip_prefix("git@") {
        Some(rest) => rest.replacen(':', "/", 1),
        None => remote.split_once("://").map_or(remote, |(_, rest)| rest).to_string(),
    };
    let mut identifier = format!("git://{host_path}");
    if let Some(fragment) = fragment {
        identifier += &format!("#{fragment}");
    }
    let mut attrs = std::collections::BTreeMap::new();
    attrs.insert("git.authheadersecret".to_string(), "GIT_AUTH_HEADER".to_string());
    attrs.insert("git.authtokensecret".to_string(), "GIT_AUTH_TOKEN".to_string());
    attrs.insert("git.fullurl".to_string(), remote.to_string());
    let mut caps = vec!["source.git", "source.git.fullurl"];
    if keep_git_dir {
        attrs.insert("git.keepgitdir".to_string(), "true".to_string());
        caps.push("source.git.keepgitdir");
    }
    if ssh {
        attrs.insert("git.mountsshsock".to_string(), "default".to_string());
        caps.extend(["source.git.knownsshhosts", "source.git.mountsshsock"]);
    }
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp { identifier, attrs })),
        constraints: Some(Default::default()),
        ..Default::default()
    };
    let output = Output::new(op, Vec::new(), OpInfo { caps, ..OpInfo::default() }, 0);
    Source { output, path: "/".into(), parents: None, kind: SourceKind::Url }
}

/// A `<<NAME` source: its body as a file `/NAME` (mode 0644) made on scratch, expanded
/// unless the delimiter was quoted.
fn heredoc_source(state: &StageState, at: &Instruction, word: &str) -> Result<Option<Source>, ConvertError> {
    let Ok(Some(opener)) = super::heredoc::parse(word) else { return Ok(None) };
    let Some(doc) = at.heredocs.iter().find(|d| d.name == opener.name) else { return Ok(None) };
    let mut content = body(doc);
    if doc.expand {
        // As BuildKit's ExpandRaw: a lexer of its own, `\` escapes, quotes kept as text (so
        // `'${name}'` is expanded, quotes and all).
        let lexer = super::shell::Lexer { skip_process_quotes: true, ..super::shell::Lexer::new('\\') };
        content = lexer.process_word(&content, &state.env).map_err(|e| error(at, e.to_string()))?;
    }
    let path = format!("/{}", doc.name);
    let output = make_file(&path, 0o644, content.into_bytes());
    Ok(Some(Source { output, path, parents: None, kind: SourceKind::Heredoc }))
}

/// A heredoc's body, leading tabs removed from every line for `<<-`.
pub fn body(doc: &super::heredoc::Heredoc) -> String {
    if !doc.chomp {
        return doc.content.clone();
    }
    doc.content.split_inclusive('\n').map(|line| line.trim_start_matches('\t')).collect()
}

/// A file with `data` at `path` on scratch.
pub fn make_file(path: &str, mode: i32, data: Vec<u8>) -> Output {
    let mkfile = pb::FileActionMkFile { path: path.into(), mode, data, owner: None, timestamp: -1 };
    let action = pb::FileAction {
        input: -1,
        secondary_input: -1,
        output: 0,
        action: Some(pb::file_action::Action::Mkfile(mkfile)),
    };
    Output::new(file_op(vec![action]), Vec::new(), OpInfo { caps: vec!["file.base"], ..OpInfo::default() }, 0)
}

/// `lower` with `upper` laid over it.
fn merge(lower: &Output, upper: &Output, mut info: OpInfo) -> Output {
    let (inputs, positions) = dedup_inputs(&[lower.clone(), upper.clone()]);
    let merge = pb::MergeOp { inputs: positions.into_iter().map(|input| pb::MergeInput { input }).collect() };
    let op = pb::Op { op: Some(pb::op::Op::Merge(merge)), constraints: Some(Default::default()), ..Default::default() };
    info.caps = vec!["mergeop"];
    Output::new(op, inputs, info, 0)
}

/// WORKDIR's `mkdir -p` (0755, owned by the current user).
pub fn mkdir_workdir(state: &mut StageState, name: String, at: &Instruction) {
    let inputs: Vec<Output> = state.output.iter().cloned().collect();
    let mkdir = pb::FileActionMkDir {
        path: state.dir.clone(),
        mode: 0o755,
        make_parents: true,
        owner: owner(&state.user, if inputs.is_empty() { -1 } else { 0 }),
        timestamp: -1,
    };
    let action = pb::FileAction {
        input: if inputs.is_empty() { -1 } else { 0 },
        secondary_input: -1,
        output: 0,
        action: Some(pb::file_action::Action::Mkdir(mkdir)),
    };
    let mut info = OpInfo::named(name);
    info.caps = vec!["file.base"];
    info.lines = vec![(at.start_line as i32, at.end_line as i32)];
    state.output = Some(Output::new(file_op(vec![action]), inputs, info, 0));
}

/// The context paths the stages reachable from `target` copy or bind-mount (BuildKit asks
/// the client for only these).
pub fn context_paths(cx: &Context<'_>, target: usize) -> Vec<String> {
    let mut reachable = vec![target];
    let mut seen = vec![false; cx.stage_count()];
    seen[target] = true;
    let mut at = 0;
    while at < reachable.len() {
        for dep in cx.dependencies(reachable[at]) {
            if !std::mem::replace(&mut seen[dep.stage], true) {
                reachable.push(dep.stage);
            }
        }
        at += 1;
    }
    let mut paths = Vec::new();
    for stage in reachable {
        for instruction in cx.stage_body(stage) {
            let Ok(flags) = instructions::flags(instruction) else { continue };
            if matches!(instruction.keyword().as_str(), "copy" | "add") && flags.get("from").is_none() {
                let words = instructions::words(instruction);
                let sources = words[..words.len().saturating_sub(1)].iter();
                let local =
                    sources.filter(|w| !w.starts_with("http://") && !w.starts_with("https://") && !w.starts_with("<<"));
                paths.extend(local.map(|w| clean(&format!("/{w}"))[1..].to_string()));
            }
        }
    }
    paths
}
