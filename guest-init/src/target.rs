//! Which program PID 1 starts: a command given to init itself (the kernel passes whatever
//! follows ` -- ` on its command line; `fledge run IMAGE -- CMD ARGS` uses it), else
//! `fledge.init=PATH` on the kernel command line, else the first line of `/.volant_init` (the
//! original Fledge's handoff file, which custom init mode writes), else the agent at
//! `/bin/kestrel`.

pub const HANDOFF_FILE: &str = "/.volant_init";
pub const DEFAULT_PROGRAM: &str = "/bin/kestrel";
/// The console line that carries the workload's exit status for the host to read.
pub const EXIT_STATUS_PREFIX: &str = "FLEDGE_EXIT_STATUS=";

/// The workload's argv.
pub fn choose(init_args: &[String], cmdline: &str, handoff: Option<&str>) -> Vec<String> {
    if !init_args.is_empty() {
        return init_args.to_vec();
    }
    let from_cmdline =
        cmdline.split_whitespace().find_map(|arg| arg.strip_prefix("fledge.init=")).filter(|p| !p.is_empty());
    let from_handoff = handoff.and_then(|h| h.lines().next()).map(str::trim).filter(|p| !p.is_empty());
    vec![from_cmdline.or(from_handoff).unwrap_or(DEFAULT_PROGRAM).to_string()]
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
}
