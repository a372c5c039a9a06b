//! What the benchmarks share: their command-line flags.
// Each benchmark compiles this module for itself and uses part of it.
#![allow(dead_code)]

/// The value after the flag `name` (`--seconds 4` -> "4"), if given.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Whether the flag `name` is given.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}
