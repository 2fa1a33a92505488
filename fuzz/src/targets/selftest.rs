//! Crashes on purpose, for testing the harness: input `panic` panics, `abort` aborts, `deep`
//! overflows the stack, `hang` never returns; anything else is fine.

use crate::{Rng, Target};

pub struct SelfTest;

/// Recursion without a bound (until the stack runs out, which aborts the process).
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    std::hint::black_box(&frame);
    if std::hint::black_box(depth) == u64::MAX { 0 } else { recurse(depth + 1) + frame[0] }
}

impl Target for SelfTest {
    fn name(&self) -> &'static str {
        "selftest"
    }

    fn run(&mut self, input: &[u8]) {
        match input {
            b"panic" => panic!("selftest panic"),
            b"abort" => std::process::abort(),
            b"deep" => drop(std::hint::black_box(recurse(0))),
            b"hang" => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            _ => {}
        }
    }

    fn mutate(&self, _: &[u8], _: &[Vec<u8>], _: &mut Rng) -> Vec<u8> {
        b"fine".to_vec()
    }
}
