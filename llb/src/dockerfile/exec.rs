//! RUN → ExecOp (command, environment, working directory, user, mounts, network, security)
//! and HEALTHCHECK's image configuration.

use serde_json::json;

use super::convert::{Context, ConvertError, StageState, clean};
use super::instructions::{self, Flags};
use super::parser::Instruction;
use crate::graph::{OpInfo, Output, dedup_inputs};
use crate::pb;

fn error(at: &Instruction, message: impl Into<String>) -> ConvertError {
    ConvertError::new(at.start_line, message)
}

/// One `--mount` as written (keys lower-cased, values expanded).
#[derive(Default)]
struct MountSpec {
    kind: String,
    from: Option<String>,
    source: String,
    target: String,
    read_only: Option<bool>,
    required: bool,
    size: Option<i64>,
    id: String,
    sharing: pb::CacheSharingOpt,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// A secret exposed as this environment variable.
    env: Option<String>,
}

fn parse_bool(key: &str, value: Option<&str>, at: &Instruction) -> Result<bool, ConvertError> {
    match value {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(error(at, format!("invalid value for {key}: {other}"))),
    }
}

/// The fields of a `--mount` value: each key (trimmed, lower case) and its value as written.
fn mount_fields(text: &str) -> impl Iterator<Item = (&str, String, Option<&str>)> {
    text.split(',').map(|field| match field.split_once('=') {
        Some((k, v)) => (field, k.trim().to_ascii_lowercase(), Some(v)),
        None => (field, field.trim().to_ascii_lowercase(), None),
    })
}

/// The stage or image a `--mount` value reads from (`from=`), as written.
pub fn mount_from(text: &str) -> Option<&str> {
    mount_fields(text).filter(|(_, key, _)| key == "from").find_map(|(_, _, value)| value)
}

fn parse_mount(text: &str, state: &StageState, cx: &Context<'_>, at: &Instruction) -> Result<MountSpec, ConvertError> {
    let mut spec = MountSpec { kind: "bind".into(), ..Default::default() };
    for (field, key, value) in mount_fields(text) {
        // `from` names a stage or image and is not expanded.
        let expanded = match value {
            Some(v) if key != "from" => Some(state.expand(&cx.lexer, v, at)?),
            other => other.map(str::to_string),
        };
        let value = expanded.as_deref();
        let need =
            |v: Option<&str>| v.map(str::to_string).ok_or_else(|| error(at, format!("--mount {key} needs a value")));
        let number = |v: Option<&str>, radix: u32| -> Result<u32, ConvertError> {
            let v = need(v)?;
            u32::from_str_radix(&v, radix).map_err(|_| error(at, format!("--mount {key}={v}: not a number")))
        };
        // Only a boolean option stands alone, as BuildKit's mount parser says.
        if value.is_none() && !matches!(key.as_str(), "readonly" | "ro" | "readwrite" | "rw" | "required") {
            return Err(error(at, format!("invalid field '{field}' must be a key=value pair")));
        }
        match key.as_str() {
            "type" => spec.kind = need(value)?,
            "from" => spec.from = Some(need(value)?),
            "source" | "src" => spec.source = need(value)?,
            "target" | "dst" | "destination" => spec.target = need(value)?,
            "readonly" | "ro" => spec.read_only = Some(parse_bool(&key, value, at)?),
            "readwrite" | "rw" => spec.read_only = Some(!parse_bool(&key, value, at)?),
            "required" => spec.required = parse_bool(&key, value, at)?,
            "size" => {
                let v = need(value)?;
                spec.size = Some(
                    parse_size(&v).ok_or_else(|| error(at, format!("--mount size={v}: expected bytes, e.g. 64m")))?,
                );
            }
            "id" => spec.id = need(value)?,
            "sharing" => {
                spec.sharing = match need(value)?.as_str() {
                    "shared" => pb::CacheSharingOpt::Shared,
                    "private" => pb::CacheSharingOpt::Private,
                    "locked" => pb::CacheSharingOpt::Locked,
                    other => {
                        return Err(error(
                            at,
                            format!("unsupported sharing value {other:?}: use shared, private or locked"),
                        ));
                    }
                }
            }
            "mode" => spec.mode = Some(number(value, 8)?),
            "uid" => spec.uid = Some(number(value, 10)?),
            "gid" => spec.gid = Some(number(value, 10)?),
            "env" => spec.env = Some(need(value)?),
            other => return Err(error(at, format!("unexpected key '{other}' in '{field}'"))),
        }
    }
    if !matches!(spec.kind.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
        return Err(error(at, format!("unsupported mount type {:?}", spec.kind)));
    }
    Ok(spec)
}

fn parse_size(text: &str) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = lower.split_at(lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len()));
    let multiplier = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return None,
    };
    digits.parse::<i64>().ok().map(|n| n * multiplier)
}

/// RUN.
pub fn run(cx: &mut Context<'_>, state: &mut StageState, at: &Instruction, flags: &Flags) -> Result<(), ConvertError> {
    let (args, script) = command(state, at);
    let mut caps = vec!["exec.meta.base", "exec.meta.setsdefaultpath", "exec.mount.bind"];
    let mut sources: Vec<Option<Output>> = vec![state.output.clone()];
    let mut mounts = vec![(0usize, pb::Mount { dest: "/".into(), ..Default::default() })];
    if let Some(script) = script {
        // A heredoc script with a `#!` line runs as a file mounted under /dev/pipes/.
        sources.push(Some(script));
        let pipes = pb::Mount {
            input: (sources.len() - 1) as i64,
            selector: "/".into(),
            dest: "/dev/pipes/".into(),
            readonly: true,
            ..Default::default()
        };
        mounts.push((1, pipes));
    }
    // Secret and ssh mounts follow the others, unsorted, as BuildKit lists them.
    let mut secrets = Vec::new();
    let mut secret_env = Vec::new();
    let mut extra_env = Vec::new();
    for text in flags.all("mount") {
        let spec = parse_mount(text, state, cx, at)?;
        if spec.target.is_empty() && !matches!(spec.kind.as_str(), "secret" | "ssh") {
            return Err(error(at, "mount target must be specified"));
        }
        let target = if spec.target.is_empty() {
            String::new()
        } else {
            state.resolve_path(&spec.target).trim_end_matches('/').to_string()
        };
        if target == "/" {
            return Err(error(at, "/ cannot be used as a mount target"));
        }
        let mut mount = pb::Mount { dest: target.clone(), output: -1, input: -1, ..Default::default() };
        match spec.kind.as_str() {
            "cache" => {
                caps.extend(["exec.mount.cache", "exec.mount.cache.sharing"]);
                mount.mount_type = pb::MountType::Cache as i32;
                // BuildKit prefixes the id (or the target as written) with the cache
                // namespace and a slash; the namespace is empty by default.
                let id = format!("/{}", if spec.id.is_empty() { &spec.target } else { &spec.id });
                mount.cache_opt = Some(pb::CacheOpt { id, sharing: spec.sharing as i32 });
                if let Some(from) = &spec.from {
                    let source = mount_source(cx, from, at)?;
                    sources.push(Some(source));
                    mount.input = (sources.len() - 1) as i64;
                    mount.selector = clean(&format!("/{}", spec.source));
                } else if spec.uid.is_some() || spec.gid.is_some() || spec.mode.is_some() {
                    // An owned cache starts as a directory made for it.
                    sources.push(Some(cache_root(&spec)));
                    mount.input = (sources.len() - 1) as i64;
                    mount.selector = "/cache".into();
                }
            }
            "tmpfs" => {
                caps.push("exec.mount.tmpfs");
                if spec.size.is_some() {
                    caps.push("exec.mount.tmpfs.size");
                }
                mount.mount_type = pb::MountType::Tmpfs as i32;
                mount.tmpfs_opt = Some(pb::TmpfsOpt { size: spec.size.unwrap_or(0) });
            }
            "secret" => {
                let id = if spec.id.is_empty() {
                    spec.target.rsplit('/').next().unwrap_or_default().to_string()
                } else {
                    spec.id.clone()
                };
                if id.is_empty() {
                    return Err(error(at, "a secret mount needs an id or a target"));
                }
                if let Some(name) = &spec.env {
                    secret_env.push(pb::SecretEnv { id: id.clone(), name: name.clone(), optional: !spec.required });
                    if spec.target.is_empty() {
                        continue; // only the variable
                    }
                }
                caps.push("exec.mount.secret");
                if mount.dest.is_empty() {
                    mount.dest = format!("/run/secrets/{id}");
                }
                mount.output = 0;
                mount.mount_type = pb::MountType::Secret as i32;
                mount.secret_opt = Some(pb::SecretOpt {
                    id,
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                    mode: spec.mode.unwrap_or(0o400),
                    optional: !spec.required,
                });
            }
            "ssh" => {
                caps.push("exec.mount.ssh");
                if mount.dest.is_empty() {
                    mount.dest = "/run/buildkit/ssh_agent.0".into();
                }
                extra_env.push(format!("SSH_AUTH_SOCK={}", mount.dest));
                mount.output = 0;
                mount.mount_type = pb::MountType::Ssh as i32;
                mount.ssh_opt = Some(pb::SshOpt {
                    id: spec.id.clone(),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                    mode: spec.mode.unwrap_or(0o600),
                    optional: !spec.required,
                });
            }
            _ => {
                let source = match &spec.from {
                    Some(from) => mount_source(cx, from, at)?,
                    None => cx.build_context(),
                };
                sources.push(Some(source));
                mount.input = (sources.len() - 1) as i64;
                let selector = clean(&format!("/{}", spec.source));
                if selector != "/" {
                    mount.selector = selector;
                }
                mount.readonly = spec.read_only.unwrap_or(true);
            }
        }
        if matches!(spec.kind.as_str(), "secret" | "ssh") {
            secrets.push(mount);
        } else {
            mounts.push((mounts.len(), mount));
        }
    }
    mounts.sort_by(|a, b| a.1.dest.cmp(&b.1.dest));

    // Inputs: deduplicated, in mount order; scratch is -1.
    let present: Vec<Output> = mounts
        .iter()
        .filter_map(|(_, m)| sources.get(m.input as usize).cloned().flatten().filter(|_| m.input >= 0))
        .collect();
    let (inputs, _) = dedup_inputs(&present);
    for (position, mount) in &mut mounts {
        if mount.input >= 0 {
            match sources.get(mount.input as usize).cloned().flatten() {
                Some(source) => {
                    mount.input =
                        inputs.iter().position(|i| i.same_op(&source) && i.index() == source.index()).expect("listed")
                            as i64;
                }
                None => mount.input = -1,
            }
        }
        // Only the root mount is an output: changes to other mounts are discarded.
        mount.output = if *position == 0 { 0 } else { -1 };
        if !mount.selector.is_empty() {
            caps.push("exec.mount.selector");
        }
    }

    let network = match flags.get("network") {
        None | Some("default") => pb::NetMode::Unset,
        Some("none") => {
            caps.push("exec.meta.network");
            pb::NetMode::None
        }
        Some("host") => {
            caps.push("exec.meta.network");
            pb::NetMode::Host
        }
        Some(other) => return Err(error(at, format!("unsupported network mode {other:?}: use default, none or host"))),
    };
    let security = match flags.get("security") {
        None | Some("sandbox") => pb::SecurityMode::Sandbox,
        Some("insecure") => {
            caps.push("exec.meta.security");
            pb::SecurityMode::Insecure
        }
        Some(other) => return Err(error(at, format!("unsupported security mode {other:?}: use sandbox or insecure"))),
    };
    let meta = pb::Meta {
        args: args.clone(),
        env: state.env.list().into_iter().chain(extra_env).collect(),
        cwd: state.dir.clone(),
        user: state.user.clone(),
        proxy_env: proxy_env(&cx.options.build_args),
        remove_mount_stubs_recursive: true,
        ..Default::default()
    };
    let op = pb::Op {
        op: Some(pb::op::Op::Exec(pb::ExecOp {
            meta: Some(meta),
            mounts: mounts.into_iter().map(|(_, m)| m).chain(secrets).collect(),
            secretenv: secret_env,
            network: network as i32,
            security: security as i32,
            ..Default::default()
        })),
        platform: Some(state.pb_platform()),
        constraints: Some(Default::default()),
        ..Default::default()
    };
    let shown = display_command(cx, state, at);
    let mut info = OpInfo::named(state.step_name(&shown));
    info.description.insert("com.docker.dockerfile.v1.command".into(), at.original.trim().to_string());
    caps.sort_unstable();
    caps.dedup();
    info.caps = caps;
    info.lines = vec![(at.start_line as i32, at.end_line as i32)];
    state.output = Some(Output::new(op, inputs, info, 0));

    let mut created_by = String::from("RUN ");
    let shown = history_args(state);
    if !shown.is_empty() {
        created_by += &format!("|{} {} ", shown.len(), shown.join(" "));
    }
    created_by += &args.join(" ");
    state.history(created_by + " # buildkit", false);
    Ok(())
}

/// The proxy build arguments (predefined), passed to every RUN outside its environment so
/// they stay out of the cache key and the image. As BuildKit's proxyEnvFromBuildArgs: a name
/// in any case, the last in sorted order winning (`http_proxy` over `HTTP_PROXY`), and one
/// given empty still counts.
fn proxy_env(build_args: &std::collections::BTreeMap<String, String>) -> Option<pb::ProxyEnv> {
    let (mut proxy, mut given) = (pb::ProxyEnv::default(), false);
    for (name, value) in build_args {
        let field = match name.to_ascii_lowercase().as_str() {
            "http_proxy" => &mut proxy.http_proxy,
            "https_proxy" => &mut proxy.https_proxy,
            "ftp_proxy" => &mut proxy.ftp_proxy,
            "no_proxy" => &mut proxy.no_proxy,
            "all_proxy" => &mut proxy.all_proxy,
            _ => continue,
        };
        field.clone_from(value);
        given = true;
    }
    given.then_some(proxy)
}

/// The process's arguments, and the script file a `#!` heredoc becomes. A RUN that is one
/// heredoc runs its body as the shell script (or, with `#!`, as a program); other heredocs
/// go to the shell after the command line, each body followed by its delimiter.
fn command(state: &StageState, at: &Instruction) -> (Vec<String>, Option<Output>) {
    if at.json {
        return (instructions::words(at), None);
    }
    let line = instructions::rest_of_line(at);
    let mut args = state.shell.clone();
    let only_heredoc = match at.heredocs.as_slice() {
        [doc] => super::heredoc::parse(line.trim()).ok().flatten().is_some_and(|o| o.name == doc.name),
        _ => false,
    };
    if only_heredoc {
        let doc = &at.heredocs[0];
        let body = super::copy::body(doc);
        if body.starts_with("#!") {
            let path = format!("/{}", doc.name);
            args.push(format!("/dev/pipes/{}", doc.name));
            return (args, Some(super::copy::make_file(&path, 0o755, body.into_bytes())));
        }
        args.push(body);
        return (args, None);
    }
    let mut text = line;
    for doc in &at.heredocs {
        text += &format!("\n{}{}", super::copy::body(doc), doc.name);
    }
    args.push(text);
    (args, None)
}

/// The directory an owned cache mount starts from: `mkdir /cache` on scratch with the
/// mount's owner and mode.
fn cache_root(spec: &MountSpec) -> Output {
    let owner = pb::ChownOpt {
        user: Some(pb::UserOpt { user: Some(pb::user_opt::User::ById(spec.uid.unwrap_or(0))) }),
        group: Some(pb::UserOpt { user: Some(pb::user_opt::User::ById(spec.gid.unwrap_or(0))) }),
    };
    let mkdir = pb::FileActionMkDir {
        path: "/cache".into(),
        mode: spec.mode.unwrap_or(0o755) as i32,
        make_parents: false,
        owner: Some(owner),
        timestamp: -1,
    };
    let action = pb::FileAction {
        input: -1,
        secondary_input: -1,
        output: 0,
        action: Some(pb::file_action::Action::Mkdir(mkdir)),
    };
    let op = pb::Op {
        op: Some(pb::op::Op::File(pb::FileOp { actions: vec![action] })),
        constraints: Some(Default::default()),
        ..Default::default()
    };
    Output::new(op, Vec::new(), OpInfo { caps: vec!["file.base"], ..OpInfo::default() }, 0)
}

/// The stage or image a mount or copy reads from.
pub fn mount_source(cx: &mut Context<'_>, from: &str, at: &Instruction) -> Result<Output, ConvertError> {
    if let Some(index) = cx.stage_index(from) {
        return cx.stage_output(index, at)?.ok_or_else(|| error(at, format!("stage {from:?} is empty (FROM scratch)")));
    }
    if let Some(local) = cx.named_local(from) {
        return Ok(local);
    }
    let platform = cx.options.platform.clone();
    let (op, _, _) = cx.image_source(from, &platform, at)?;
    Ok(Output::new(op, Vec::new(), OpInfo { caps: vec!["source.image"], ..OpInfo::default() }, 0))
}

/// How BuildKit names a RUN step: the flags as written and the command with the build's
/// variables expanded.
fn display_command(cx: &Context<'_>, state: &StageState, at: &Instruction) -> String {
    let mut shown = String::from("RUN ");
    for flag in &at.flags {
        shown += flag;
        shown.push(' ');
    }
    let command = instructions::rest_of_line(at);
    if at.json {
        shown += &super::convert::go_list(&instructions::words(at));
    } else {
        shown += &cx.lexer.process_word(&command, &state.env).unwrap_or(command);
    }
    shown
}

/// HEALTHCHECK: the image's health check (nothing to run at build time).
pub fn healthcheck(state: &mut StageState, at: &Instruction, flags: &Flags) -> Result<(), ConvertError> {
    let words = instructions::words(at);
    let Some(kind) = words.first() else { return Err(error(at, "HEALTHCHECK requires at least one argument")) };
    let test: Vec<String> = match kind.to_ascii_uppercase().as_str() {
        "NONE" if words.len() == 1 => vec!["NONE".into()],
        "NONE" => return Err(error(at, "HEALTHCHECK NONE takes no arguments")),
        "CMD" if words.len() < 2 => return Err(error(at, "missing command after HEALTHCHECK CMD")),
        "CMD" if at.json => std::iter::once("CMD".to_string()).chain(words[1..].iter().cloned()).collect(),
        "CMD" => vec!["CMD-SHELL".into(), words[1..].join(" ")],
        other => return Err(error(at, format!("unknown type {other:?} in HEALTHCHECK (try CMD)"))),
    };
    let mut check = json!({"Test": test});
    for (flag, key) in [
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start-period", "StartPeriod"),
        ("start-interval", "StartInterval"),
    ] {
        if let Some(text) = flags.get(flag) {
            let nanos = parse_duration(text).ok_or_else(|| {
                error(at, format!("--{flag}={text}: time: invalid duration {text:?} (expected a duration such as 30s)"))
            })?;
            if nanos != 0 && nanos < 1_000_000 {
                return Err(error(at, format!("Interval {flag} cannot be less than 1ms")));
            }
            check[key] = json!(nanos);
        }
    }
    if let Some(text) = flags.get("retries") {
        let retries: i64 = text.parse().map_err(|_| error(at, format!("--retries={text}: expected a number")))?;
        if retries < 0 {
            return Err(error(at, "--retries cannot be negative"));
        }
        check["Retries"] = json!(retries);
    }
    // History prints the health check as Go prints the struct.
    let field = |key: &str| go_duration(check.get(key).and_then(|v| v.as_i64()).unwrap_or(0));
    let shown = format!(
        "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        test.join(" "),
        field("Interval"),
        field("Timeout"),
        field("StartPeriod"),
        field("StartInterval"),
        check.get("Retries").and_then(|v| v.as_i64()).unwrap_or(0)
    );
    state.config().insert("Healthcheck".into(), check);
    state.history(shown, true);
    Ok(())
}

/// Go's `time.Duration.String()`: `0s`, `1.5s`, `300ms`, `1m30s`, `2h0m0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let trim = |v: f64| {
        let text = format!("{v:.9}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if nanos < 1_000_000_000 {
        return match nanos {
            n if n < 1_000 => format!("{n}ns"),
            n if n < 1_000_000 => format!("{}µs", trim(n as f64 / 1e3)),
            n => format!("{}ms", trim(n as f64 / 1e6)),
        };
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = nanos / 60_000_000_000 % 60;
    let seconds = trim((nanos % 60_000_000_000) as f64 / 1e9);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

/// A Go duration (`1h2m3.5s`, `300ms`) in nanoseconds.
fn parse_duration(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// The `KEY=VALUE` words of RUN's history line, as BuildKit writes them: each ARG the stage
/// (and the stage it is based on) declared, once, where first declared, valued as the
/// environment has it now (an ENV of the same name wins), else as declared (empty if not).
fn history_args(state: &StageState) -> Vec<String> {
    let mut shown: Vec<(String, String)> = Vec::new();
    for (name, declared) in &state.args {
        let value = state.env.get(name).map(str::to_string).or_else(|| declared.clone()).unwrap_or_default();
        match shown.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => shown.push((name.clone(), value)),
        }
    }
    shown.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        for (nanos, text) in [
            (0, "0s"),
            (5_000_000_000, "5s"),
            (1_500_000_000, "1.5s"),
            (300_000_000, "300ms"),
            (90_000_000_000, "1m30s"),
            (7_200_000_000_000, "2h0m0s"),
        ] {
            assert_eq!(go_duration(nanos), text);
        }
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn proxy_build_args_are_read_as_buildkit_reads_them() {
        let args = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let proxy =
            proxy_env(&args(&[("HTTP_PROXY", "upper"), ("http_proxy", "lower"), ("No_Proxy", "x"), ("A", "b")]))
                .unwrap();
        assert_eq!((proxy.http_proxy.as_str(), proxy.no_proxy.as_str()), ("lower", "x"));
        assert_eq!(proxy_env(&args(&[("ftp_proxy", "")])), Some(pb::ProxyEnv::default()));
        assert_eq!(proxy_env(&args(&[("A", "b")])), None);
    }
}
