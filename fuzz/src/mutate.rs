//! Mutations: bytes (any target), lines (text formats), JSON values, and Dockerfile
//! structure (instructions, flags, quoting and escapes, heredocs, nested `${}`, stage
//! references).

use serde_json::Value;

use crate::Rng;

/// Bytes that change how the text formats read.
const INTERESTING: &[&[u8]] = &[
    b"\\",
    b"$",
    b"${",
    b"}",
    b"{",
    b"\"",
    b"'",
    b"`",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"<<",
    b"=",
    b",",
    b"[",
    b"]",
    b"#",
    b"-",
    b"--",
    b"\0",
    b"\xff",
    b"\xc3\xa9",
    b"\xef\xbb\xbf",
    b"..",
    b"/",
    b":",
    b"0",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"1e999",
    b"null",
    b"true",
];

/// One byte-level change: flip, insert, delete, overwrite, duplicate a range, or insert an
/// interesting token.
pub fn bytes(data: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = data.to_vec();
    let at = rng.below(out.len() + 1);
    match rng.below(7) {
        0 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
        1 => out.insert(at, rng.next_u64() as u8),
        2 if !out.is_empty() => {
            let len = 1 + rng.below(8.min(out.len()));
            let from = rng.below(out.len() - len + 1);
            out.drain(from..from + len);
        }
        3 if !out.is_empty() => {
            let i = rng.below(out.len());
            out[i] = *rng.pick(&[0u8, 0x7f, 0x80, 0xff, b'0', b'9']);
        }
        4 if !out.is_empty() => {
            let from = rng.below(out.len());
            let len = 1 + rng.below((out.len() - from).min(64));
            let chunk = out[from..from + len].to_vec();
            out.splice(at..at, chunk);
        }
        5 if out.len() > 1 => out.truncate(rng.below(out.len())),
        _ => {
            let token = rng.pick(INTERESTING);
            out.splice(at..at, token.iter().copied());
        }
    }
    out
}

/// Lines of text with their line ends.
fn lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// One line-level change: delete, duplicate or swap lines, or splice in a line from another
/// corpus input.
pub fn lines_of(data: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut all = lines(data);
    let at = rng.below(all.len() + 1);
    match rng.below(4) {
        0 if !all.is_empty() => {
            all.remove(rng.below(all.len()));
        }
        1 if !all.is_empty() => {
            let line = rng.pick(&all).clone();
            all.insert(at, line);
        }
        2 if all.len() > 1 => {
            let (a, b) = (rng.below(all.len()), rng.below(all.len()));
            all.swap(a, b);
        }
        _ => {
            let other: &Vec<u8> = rng.pick(corpus);
            let other = lines(other);
            if !other.is_empty() {
                let mut line = rng.pick(&other).clone();
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                all.insert(at, line);
            }
        }
    }
    all.concat()
}

/// A change to a JSON document's values (when it is JSON): replace, delete or duplicate one,
/// or nest it deeply; otherwise a byte change.
pub fn json(data: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else { return bytes(data, rng) };
    let pointer = random_pointer(&value, rng);
    let node = value.pointer_mut(&pointer).expect("the pointer was taken from the value");
    match rng.below(6) {
        0 => *node = random_value(rng),
        1 => {
            if let Value::Object(map) = node
                && let Some(key) = map.keys().nth(rng.below(map.len().max(1))).cloned()
            {
                map.remove(&key);
            }
        }
        2 => {
            if let Value::Array(items) = node
                && let Some(item) = items.first().cloned()
            {
                items.push(item);
            }
        }
        3 => {
            let depth = 1 + rng.below(200);
            let inner = node.take();
            *node = (0..depth).fold(inner, |v, _| Value::Array(vec![v]));
        }
        4 => {
            if let Value::Object(map) = node {
                let key = rng.pick(JSON_KEYS).to_string();
                map.insert(key, random_value(rng));
            }
        }
        _ => return bytes(&serde_json::to_vec(&value).expect("serialises"), rng),
    }
    serde_json::to_vec(&value).expect("serialises")
}

/// A JSON pointer to a random node, a few levels down.
fn random_pointer(value: &Value, rng: &mut Rng) -> String {
    let (mut node, mut pointer) = (value, String::new());
    for _ in 0..rng.below(6) {
        let (key, next) = match node {
            Value::Object(map) if !map.is_empty() => {
                let (key, next) = map.iter().nth(rng.below(map.len())).expect("in range");
                (key.replace('~', "~0").replace('/', "~1"), next)
            }
            Value::Array(items) if !items.is_empty() => {
                let i = rng.below(items.len());
                (i.to_string(), &items[i])
            }
            _ => break,
        };
        pointer = format!("{pointer}/{key}");
        node = next;
    }
    pointer
}

const JSON_KEYS: &[&str] = &[
    "mediaType",
    "schemaVersion",
    "manifests",
    "layers",
    "config",
    "digest",
    "size",
    "platform",
    "architecture",
    "os",
    "variant",
    "annotations",
    "urls",
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "OnBuild",
    "rootfs",
    "diff_ids",
    "history",
];

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(8) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => Value::from(rng.next_u64() as i64),
        3 => Value::from(*rng.pick(&[0.5, -1.0, 1e300])),
        4 => Value::from(*rng.pick(&[
            "",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "sha256:x",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "linux",
            "amd64",
            "PATH=/bin",
            "../..",
        ])),
        5 => Value::Array(vec![]),
        6 => Value::Object(Default::default()),
        _ => Value::from("\u{0}\u{ffff}é"),
    }
}

/// Dockerfile instruction keywords.
const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "COPY",
    "ADD",
    "ENV",
    "ARG",
    "WORKDIR",
    "USER",
    "LABEL",
    "EXPOSE",
    "VOLUME",
    "CMD",
    "ENTRYPOINT",
    "SHELL",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "ONBUILD",
    "MAINTAINER",
    "from",
    "Run",
    "BOGUS",
];

const FLAGS: &[&str] = &[
    "--from=",
    "--mount=type=bind,from=",
    "--mount=type=cache,target=/c,id=x,sharing=locked,mode=0700,uid=1",
    "--mount=type=tmpfs,target=/t,size=1m",
    "--mount=type=secret,id=s,env=S",
    "--mount=type=ssh",
    "--mount=from=",
    "--chmod=755",
    "--chmod=u+x,g-w",
    "--chmod=99999",
    "--chown=1:2",
    "--chown=user:group",
    "--chown=${U}",
    "--parents",
    "--parents=false",
    "--exclude=*.md",
    "--exclude=",
    "--link",
    "--link=false",
    "--platform=linux/arm64",
    "--platform=$BUILDPLATFORM",
    "--network=none",
    "--network=host",
    "--security=insecure",
    "--checksum=sha256:0",
    "--keep-git-dir",
    "--unpack=true",
    "--interval=1s",
    "--retries=3",
    "--",
    "--=",
];

const WORDS: &[&str] = &[
    "scratch",
    "busybox",
    "alpine:3.20",
    "img@sha256:abc",
    "/",
    ".",
    "..",
    "a",
    "/a/b/",
    "*",
    "**/*.txt",
    "$HOME",
    "${A}",
    "${A:-d}",
    "${A:+x}",
    "${A?err}",
    "${A#p}",
    "${A%%s}",
    "${A/x/y}",
    "${A//x}",
    "${}",
    "${:}",
    "$",
    "\"quoted $A\"",
    "'single'",
    "\"unterminated",
    "\\",
    "\\\\",
    "`",
    "[\"json\", \"form\"]",
    "[1]",
    "[",
    "AS",
    "as",
    "x=y",
    "=",
    "a=b c=d",
    "https://example.invalid/x.tar",
    "git@example.invalid:x/y.git",
    "0",
    "1",
    "-1",
    "<<EOF",
    "<<-\"EOF\"",
    "3<<'E'",
    "<<",
    "\t",
];

/// One structure-aware change to a Dockerfile.
pub fn dockerfile(data: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=2 => insert_line(data, &instruction(data, rng), rng),
        3 => lines_of(data, corpus, rng),
        4 => insert_line(data, &heredoc(rng), rng),
        5 => {
            let mut out = data.to_vec();
            let at = rng.below(out.len() + 1);
            out.splice(at..at, nested(rng).into_bytes());
            out
        }
        6 => join_line(data, rng),
        7 => {
            let directive =
                rng.pick(&["# escape=`\n", "# escape=\\\n", "# syntax=docker/dockerfile:1\n", "# check=skip=all\n"]);
            [directive.as_bytes(), data].concat()
        }
        _ => bytes(data, rng),
    }
}

fn insert_line(data: &[u8], line: &str, rng: &mut Rng) -> Vec<u8> {
    let mut all = lines(data);
    if let Some(last) = all.last_mut()
        && !last.ends_with(b"\n")
    {
        last.push(b'\n');
    }
    let at = rng.below(all.len() + 1);
    all.insert(at, format!("{line}\n").into_bytes());
    all.concat()
}

/// A trailing escape on a random line, joining the next one into it.
fn join_line(data: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut all = lines(data);
    if all.is_empty() {
        return data.to_vec();
    }
    let i = rng.below(all.len());
    let line = &mut all[i];
    let end = line.len() - usize::from(line.ends_with(b"\n"));
    let escape: &[u8] = if rng.one_in(4) { b"`" } else { b" \\" };
    line.splice(end..end, escape.iter().copied());
    all.concat()
}

/// Names and indexes of stages in `data` (`FROM x AS name`), to refer to.
fn stage_names(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let mut names = Vec::new();
    for (i, line) in text.lines().filter(|l| l.trim_start().to_ascii_lowercase().starts_with("from")).enumerate() {
        names.push(i.to_string());
        let words: Vec<&str> = line.split_whitespace().collect();
        if let [.., as_kw, name] = words.as_slice()
            && as_kw.eq_ignore_ascii_case("as")
        {
            names.push(name.to_string());
        }
    }
    names
}

/// A generated instruction: a keyword, some flags (stage references to stages of `data`),
/// and words.
fn instruction(data: &[u8], rng: &mut Rng) -> String {
    let mut stages = stage_names(data);
    stages.extend(["scratch", "busybox", "nosuchstage", "99"].map(String::from));
    let keyword = *rng.pick(KEYWORDS);
    let mut line = keyword.to_string();
    if keyword.eq_ignore_ascii_case("onbuild") {
        let inner = *rng.pick(KEYWORDS);
        line = format!("{line} {inner}");
    }
    for _ in 0..rng.below(3) {
        let flag = *rng.pick(FLAGS);
        line += " ";
        line += flag;
        if flag.ends_with("from=") {
            let stage: &String = rng.pick(&stages);
            line += stage;
            if flag.starts_with("--mount") {
                line += ",target=/m";
            }
        }
    }
    if keyword.eq_ignore_ascii_case("from") {
        line += &format!(" {}", rng.pick(&stages));
        if rng.one_in(2) {
            line += &format!(" AS s{}", rng.below(4));
        }
        return line;
    }
    for _ in 0..=rng.below(4) {
        line += " ";
        line += &if rng.one_in(5) { nested(rng) } else { rng.pick(WORDS).to_string() };
    }
    line
}

/// A heredoc instruction with its body.
fn heredoc(rng: &mut Rng) -> String {
    let (opener, name) = *rng.pick(&[("<<EOF", "EOF"), ("<<-\"EOF\"", "\tEOF"), ("<<'E'", "E"), ("3<<X", "X")]);
    let head = *rng.pick(&["RUN", "RUN cat", "COPY", "ADD", "ONBUILD RUN", "RUN [\"sh\"]"]);
    let dest = if head.starts_with("COPY") || head.starts_with("ADD") { " /dest" } else { "" };
    let body = if rng.one_in(2) { "echo $HOME ${A:-x}\n" } else { "" };
    let end = if rng.one_in(8) { "" } else { name };
    format!("{head} {opener}{dest}\n{body}{end}")
}

/// `${a:-${b:-...}}` nested to a random depth (occasionally past the frontend's limit).
fn nested(rng: &mut Rng) -> String {
    let depth = if rng.one_in(10) { 150 + rng.below(100) } else { 1 + rng.below(6) };
    let ops = [":-", "-", ":+", "+", "#", "%%", "/x/", ":?"];
    let mut word = String::from("x");
    for level in 0..depth {
        let op = if rng.one_in(3) { rng.pick(&ops) } else { ":-" };
        let quote = if rng.one_in(6) { "\"" } else { "" };
        word = format!("${{v{level}{op}{quote}{word}{quote}}}");
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_mutations_make_what_they_say() {
        let base = b"FROM scratch AS base\nCOPY a b\n";
        assert_eq!(stage_names(base), ["0", "base"]);
        let mut rng = Rng::for_input(3, 9);
        let joined = join_line(base, &mut rng);
        assert!(joined.windows(2).any(|w| w == b" \\" || w[1] == b'`'), "{}", String::from_utf8_lossy(&joined));
        let deep: Vec<String> = (0..200).map(|i| nested(&mut Rng::for_input(1, i))).collect();
        assert!(deep.iter().any(|w| w.matches("${").count() > 150), "some words nest past the limit");
        let doc = heredoc(&mut Rng::for_input(2, 2));
        assert!(doc.contains("<<"), "{doc}");
    }
}
