//! Fledge's fuzzing harness, on stable Rust: structure-aware mutation of seed inputs for each
//! target (the Dockerfile frontend, fledge.toml/manifest.toml loading, OCI document decoding,
//! layer tar flattening, the host's decoding of agent replies), everything in-process and
//! offline.
//!
//! Guarantees: input `i` of a run is a pure function of the seed, `i` and the corpus, so any
//! input can be replayed from its number and a run can resume after a crash; a panic (caught
//! with `catch_unwind`), an abort or stack overflow (the loop runs in a child process, see
//! [`runner`]) and a hang (an input running past the deadline) are all crashes, reported with
//! the exact input saved to a file.

pub mod mutate;
pub mod rng;
pub mod runner;
pub mod targets;

pub use rng::Rng;

/// One thing to fuzz: how to run an input, and how to make new inputs from old ones.
pub trait Target {
    fn name(&self) -> &'static str;
    /// Runs one input. Errors are expected (most inputs are invalid); a panic is a crash.
    fn run(&mut self, input: &[u8]);
    /// A new input made from `base` (a corpus input), with `corpus` for splicing.
    fn mutate(&self, base: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8>;
}

/// The targets `all` names, in the order runs report them.
pub const ALL: [&str; 5] = ["dockerfile", "config", "oci", "layer", "agent"];

/// The target called `name` (the ones in [`ALL`], and `selftest`, which crashes on purpose
/// so the harness itself can be tested).
pub fn target(name: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "dockerfile" => Box::new(targets::dockerfile::Dockerfile::new()),
        "config" => Box::new(targets::config::Config::new()),
        "oci" => Box::new(targets::oci::Oci),
        "layer" => Box::new(targets::layer::Layer::new()),
        "agent" => Box::new(targets::agent::Agent::new()),
        "selftest" => Box::new(targets::selftest::SelfTest),
        _ => return None,
    })
}

/// A short content hash (FNV-1a, 64 bits) naming saved crash inputs.
pub fn input_hash(input: &[u8]) -> String {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}
