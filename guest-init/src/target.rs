//! Which program PID 1 starts: `fledge.cmd=` on the kernel command line (the whole argv,
//! NUL-terminated arguments in base64, so any argument survives; `fledge run IMAGE -- CMD
//! ARGS` uses it), else a command given to init itself (what follows ` -- ` on the command
//! line), else `fledge.init=PATH`, else the first line of `/.volant_init` (the
//! original Fledge's handoff file, which custom init mode writes), else the agent at
//! `/bin/kestrel`.

pub const HANDOFF_FILE: &str = "/.volant_init";
pub const DEFAULT_PROGRAM: &str = "/bin/kestrel";
/// The console line that carries the workload's exit status for the host to read.
pub const EXIT_STATUS_PREFIX: &str = "FLEDGE_EXIT_STATUS=";
/// Reported when init itself could not set up the workload's root (as `env` uses 125).
pub const INIT_FAILED: u8 = 125;

/// The workload's argv.
pub fn choose(init_args: &[String], cmdline: &str, handoff: Option<&str>) -> Vec<String> {
    let encoded = cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("fledge.cmd="));
    if let Some(argv) = encoded.and_then(decode_command) {
        return argv;
    }
    if !init_args.is_empty() {
        return init_args.to_vec();
    }
    let from_cmdline =
        cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("fledge.init=")).filter(|p| !p.is_empty());
    let from_handoff = handoff.and_then(|h| h.lines().next()).map(str::trim).filter(|p| !p.is_empty());
    vec![from_cmdline.or(from_handoff).unwrap_or(DEFAULT_PROGRAM).to_string()]
}

/// `fledge.cmd=`'s value: base64 (standard alphabet, padding optional) of the arguments,
/// each followed by a NUL byte. `None` if malformed or empty.
fn decode_command(text: &str) -> Option<Vec<String>> {
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    let argv: Vec<String> =
        bytes.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>();
    // Every argument ends with NUL, so the split leaves one empty piece at the end.
    let (last, args) = argv.split_last()?;
    (last.is_empty() && !args.is_empty() && !args[0].is_empty()).then(|| args.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_init_args_then_cmdline_then_handoff_then_agent() {
        assert_eq!(choose(&[], "console=ttyS0", None), ["/bin/kestrel"]);
        assert_eq!(choose(&[], "console=ttyS0", Some("/usr/libexec/fledge/init\n")), ["/usr/libexec/fledge/init"]);
        assert_eq!(choose(&[], "quiet fledge.init=/bin/sh", Some("/x\n")), ["/bin/sh"]);
        assert_eq!(choose(&[], "fledge.init=", Some("  \n")), ["/bin/kestrel"]);
        let args = ["sh".to_string(), "-c".to_string(), "echo hi".to_string()];
        assert_eq!(choose(&args, "fledge.init=/bin/x", None), args);
    }

    #[test]
    fn an_encoded_command_keeps_every_argument_intact() {
        // base64 of "sh\0-c\0echo \"a b\"\n\0\0"
        let argv = choose(&[], "quiet fledge.cmd=c2gALWMAZWNobyAiYSBiIgoAAA== x", None);
        assert_eq!(argv, ["sh", "-c", "echo \"a b\"\n", ""]);
        assert_eq!(choose(&[], "fledge.cmd=!!", None), ["/bin/kestrel"], "malformed: ignored");
        assert_eq!(choose(&[], "fledge.cmd=", None), ["/bin/kestrel"]);
    }
}
