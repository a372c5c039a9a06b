//! Dashboard stage: per-feature and per-head dashboards of a trained SAE. The builder
//! ([`build`], native: LM and SAE in burn) writes one file ([`format`](mod@format), also read by the
//! viewers, with neither burn nor tokenizers); [`neuronpedia`] exports it for the Python
//! ecosystem.

#[cfg(not(target_arch = "wasm32"))]
pub mod build;
pub mod dfa;
pub mod format;
#[cfg(not(target_arch = "wasm32"))]
pub mod kept;
pub mod labels;
#[cfg(not(target_arch = "wasm32"))]
pub mod neuronpedia;
pub mod report;
#[cfg(not(target_arch = "wasm32"))]
mod run;
pub mod sources;
#[cfg(not(target_arch = "wasm32"))]
pub mod upstream;

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
/// Tokens (the first windows') each feature's effect on the loss is estimated over: one
/// backward pass a window, about 13 s for the demo model on 2 CPU cores.
pub const DEFAULT_EFFECT_TOKENS: usize = 4096;
/// Step lines kept in a dashboard's metrics history.
pub const HISTORY_POINTS: usize = 3000;

/// The files a browser loads for the model at `model` (a `.gguf` file, a directory with
/// `config.json`, `model.safetensors` and `tokenizer.json`, or a TransformerLens checkpoint:
/// `config.json`, its `.pth`, which `serve` converts ([`crate::lm::pth_as_safetensors`]),
/// and its tokenizer, beside it or the one its config names) and for the SAE in `sae_dir`.
/// Errors name what is missing.
#[cfg(not(target_arch = "wasm32"))]
pub fn browser_files(model: &Path, sae_dir: &Path) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    use anyhow::Context as _;
    let model_files: Vec<PathBuf> = if model.is_file() {
        anyhow::ensure!(
            model.extension().is_some_and(|e| e == "gguf"),
            "{}: the browser reads a .gguf, or config.json + model.safetensors + tokenizer.json",
            model.display()
        );
        vec![model.to_path_buf()]
    } else if let Some(pth) = crate::lm::transformer_lens_pth(model) {
        let local = model.join("tokenizer.json");
        let tokenizer = match local.is_file() {
            true => local,
            false => {
                let cfg = crate::lm::weights::read_json_config(&model.join("config.json"))?;
                let name = (cfg.get("tokenizer_name").and_then(|v| v.as_str()))
                    .context("no tokenizer.json beside it, and its config names no tokenizer")?;
                crate::lm::hub::resolve_tokenizer(name)?
            }
        };
        vec![model.join("config.json"), pth, tokenizer]
    } else {
        let index = model.join(crate::lm::weights::HF_WEIGHTS_INDEX);
        anyhow::ensure!(
            !index.is_file() || model.join(crate::lm::weights::HF_WEIGHTS).is_file(),
            "{}: a checkpoint in shards ({}) is not read by the browser, whose WebAssembly \
             memory ends at 4 GB; use a .gguf of the model, or a single model.safetensors",
            model.display(),
            crate::lm::weights::HF_WEIGHTS_INDEX
        );
        [
            "config.json",
            crate::lm::weights::HF_WEIGHTS,
            "tokenizer.json",
        ]
        .iter()
        .map(|n| model.join(n))
        .collect()
    };
    let sae_files: Vec<PathBuf> = [crate::sae::io::CONFIG_FILE, crate::sae::io::WEIGHTS_FILE]
        .iter()
        .map(|n| sae_dir.join(n))
        .collect();
    if let Some(missing) = model_files.iter().chain(&sae_files).find(|f| !f.is_file()) {
        anyhow::bail!(
            "the browser reads a .gguf, or config.json + model.safetensors + tokenizer.json, and \
             the SAE's {} + {}: {} is missing",
            crate::sae::io::CONFIG_FILE,
            crate::sae::io::WEIGHTS_FILE,
            missing.display()
        );
    }
    Ok((model_files, sae_files))
}

/// The name, sha256 and size of each file.
#[cfg(not(target_arch = "wasm32"))]
pub fn file_records(paths: &[PathBuf]) -> anyhow::Result<Vec<format::FileRecord>> {
    paths
        .iter()
        .map(|p| {
            let sha256 = crate::assets::sha256_file(p)?;
            let size = std::fs::metadata(p)?.len();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| anyhow::anyhow!("{}: a file name that is not UTF-8", p.display()))?;
            Ok(format::FileRecord {
                name: name.to_string(),
                sha256,
                size,
            })
        })
        .collect()
}

/// What a dashboard records of the model and SAE it was built from, if the browser could
/// load them (a TransformerLens model's `.pth` as it is, which `serve` converts).
#[cfg(not(target_arch = "wasm32"))]
pub fn built_from(loaded: &crate::lm::LoadedModel, sae_dir: &Path) -> Option<format::BuiltFrom> {
    // `source` is the .gguf, or a directory's model.safetensors or .pth.
    let source = &loaded.source;
    let model = if source.extension().is_some_and(|e| e == "gguf") {
        source.clone()
    } else {
        source.parent()?.to_path_buf()
    };
    let (model_files, sae_files) = browser_files(&model, sae_dir).ok()?;
    Some(format::BuiltFrom {
        model: file_records(&model_files).ok()?,
        sae: file_records(&sae_files).ok()?,
    })
}

/// How a dashboard records the directory of the SAE it was built from: absolute, so that
/// the file finds it from any working directory.
pub fn recorded_path(dir: &Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// The dashboard file of a run directory.
pub fn run_dashboard_path(run_dir: &Path) -> PathBuf {
    run_dir.join(DASHBOARD_FILE)
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// A sharded checkpoint is refused for the browser with the reason, not as a missing
    /// model.safetensors; a single file beside an index is taken.
    #[test]
    fn browser_files_refuse_a_sharded_checkpoint_by_name() {
        let root = std::env::temp_dir().join(format!("attn-saes-shards-{}", std::process::id()));
        let (model, sae) = (root.join("model"), root.join("sae"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::create_dir_all(&sae).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            crate::lm::weights::HF_WEIGHTS_INDEX,
        ] {
            std::fs::write(model.join(f), "{}").unwrap();
        }
        for f in [crate::sae::io::CONFIG_FILE, crate::sae::io::WEIGHTS_FILE] {
            std::fs::write(sae.join(f), "{}").unwrap();
        }
        let err = browser_files(&model, &sae).unwrap_err().to_string();
        assert!(err.contains("in shards"), "{err}");
        std::fs::write(model.join("model.safetensors"), "").unwrap();
        let (model_files, _) = browser_files(&model, &sae).unwrap();
        assert_eq!(model_files[1], model.join("model.safetensors"));
        std::fs::remove_dir_all(&root).ok();
    }
}
