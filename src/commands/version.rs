//! `fledge version`.

pub fn run() {
    println!("fledge version {}", crate::VERSION);
    println!("  build date: {}", option_env!("FLEDGE_BUILD_DATE").unwrap_or("unknown"));
    println!("  git commit: {}", option_env!("FLEDGE_GIT_COMMIT").unwrap_or("unknown"));
}
