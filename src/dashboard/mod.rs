//! Dashboard stage: per-feature and per-head dashboards of a trained SAE. The builder
//! ([`build`], native: LM and SAE in burn) writes one file ([`format`], also read by the
//! viewers, with neither burn nor tokenizers); [`neuronpedia`] exports it for the Python
//! ecosystem.

#[cfg(not(target_arch = "wasm32"))]
pub mod build;
pub mod dfa;
pub mod format;
#[cfg(not(target_arch = "wasm32"))]
pub mod neuronpedia;
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
mod run;

use std::path::{Path, PathBuf};

pub use format::Dashboard;

#[cfg(not(target_arch = "wasm32"))]
pub use build::{BuildInputs, BuildOptions, Progress};
#[cfg(not(target_arch = "wasm32"))]
pub use run::{build_for_run, held_out_windows, windows_from};

/// A run's dashboard file, beside its `sae/`.
pub const DASHBOARD_FILE: &str = "dashboard.safetensors";
/// Tokens a dashboard scans by default (the main job's, the app's).
pub const DEFAULT_TOKENS: usize = 32_768;
/// Step lines kept in a dashboard's metrics history.
pub const HISTORY_POINTS: usize = 3000;

/// The dashboard file of a run directory.
pub fn run_dashboard_path(run_dir: &Path) -> PathBuf {
    run_dir.join(DASHBOARD_FILE)
}
