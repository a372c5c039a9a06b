//! What the benchmarks share: their command-line flags.
// Each benchmark compiles this module for itself and uses part of it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts kernel launches while installed; with `timed`, also each launch's own time, in
/// issue order (kernels then run one at a time).
#[derive(Default)]
pub struct Launches {
    count: AtomicUsize,
    timed: bool,
    times: std::sync::Mutex<Vec<(&'static str, f64)>>,
}

impl burn::cubecl::logging::LaunchObserver for Launches {
    fn launched(&self, _kernel: &'static str) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn timing(&self) -> burn::cubecl::logging::TimingRequest {
        if self.timed {
            burn::cubecl::logging::TimingRequest::Resolved
        } else {
            burn::cubecl::logging::TimingRequest::None
        }
    }

    fn timed(
        &self,
        kernel: &'static str,
        duration: burn::cubecl::logging::Duration,
        _method: burn::cubecl::logging::TimingMethod,
    ) {
        let mut times = self.times.lock().unwrap();
        times.push((kernel, duration.as_secs_f64() * 1e3));
    }
}

impl Launches {
    /// The launches `f` makes.
    pub fn count_in(f: impl FnOnce()) -> usize {
        let launches = Arc::new(Launches::default());
        let watching = burn::cubecl::logging::LaunchObservation::new(launches.clone());
        f();
        drop(watching);
        launches.count.load(Ordering::Relaxed)
    }

    /// Each launch `f` makes, timed on its own (kernels then run one at a time), in issue
    /// order: the kernel's name without module paths, and milliseconds.
    pub fn timed_in(f: impl FnOnce()) -> Vec<(String, f64)> {
        let launches = Arc::new(Launches {
            timed: true,
            ..Default::default()
        });
        let watching = burn::cubecl::logging::LaunchObservation::new(launches.clone());
        f();
        drop(watching);
        let times = launches.times.lock().unwrap();
        times.iter().map(|(k, ms)| (short_name(k), *ms)).collect()
    }
}

/// A kernel's type name without its module paths: `a::b::Task<c::D>` -> `Task<D>`.
pub fn short_name(kernel: &str) -> String {
    let (mut out, mut path) = (String::new(), String::new());
    let flush = |path: &mut String, out: &mut String| {
        out.push_str(path.rsplit("::").next().unwrap_or_default());
        path.clear();
    };
    for c in kernel.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            flush(&mut path, &mut out);
            out.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
}

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
