//! Writes a parity case out as the directories both engines build it from: `DIR/context`,
//! `DIR/bb` (BusyBox) and `DIR/secrets`, and prints the build options, one a line, as
//! `target=`, `build-arg=K=V`, `secret=ID` or `allow=ENTITLEMENT` (for scripts such as
//! `bench/parity-builds.sh`).
//!
//! usage: cargo run -p fledge-parity --bin materialise -- CASE_FILE DIR   (BUSYBOX=PATH picks
//!        the BusyBox, /bin/busybox by default)

use std::path::Path;

use fledge_parity::{BuildOption, Case};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [case, dir] = args.as_slice() else {
        eprintln!("usage: materialise CASE_FILE DIR");
        std::process::exit(2);
    };
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    let written = Case::read(Path::new(case)).and_then(|case| {
        case.materialise(Path::new(dir), Path::new(&busybox))?;
        Ok(case)
    });
    match written {
        Ok(case) => {
            for option in &case.options {
                match option {
                    BuildOption::Target(stage) => println!("target={stage}"),
                    BuildOption::BuildArg(k, v) => println!("build-arg={k}={v}"),
                    BuildOption::Secret(id) => println!("secret={id}"),
                    BuildOption::Allow(entitlement) => println!("allow={entitlement}"),
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
