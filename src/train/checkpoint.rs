//! Trainer: checkpoints. A checkpoint directory holds the config (TOML), the SAE (our
//! format), the Adam state, the trainer state (step, RNG, dead-feature window) and the
//! activation store state (shuffle buffer, data position), so `--resume` continues as if
//! training had never stopped. Written to a temp directory and renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::TrainConfig;
use crate::files::write_atomic;

pub const CONFIG_FILE: &str = "config.toml";
pub const STATE_FILE: &str = "trainer_state.json";
pub const LATEST_FILE: &str = "LATEST";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub tokens: u64,
    pub adam_t: usize,
}

pub fn checkpoints_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoints")
}

pub fn step_dir_name(step: usize) -> String {
    format!("step_{step:08}")
}

/// Writes a checkpoint by calling `write(tmp_dir)` and renaming the temp directory to
/// `checkpoints/step_N`; then points `checkpoints/LATEST` at it. A failure leaves the
/// previous checkpoint untouched and no partial directory behind.
pub fn write_checkpoint(
    out_dir: &Path,
    step: usize,
    config: &TrainConfig,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let root = checkpoints_dir(out_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = step_dir_name(step);
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        write_atomic(&tmp.join(CONFIG_FILE), toml::to_string(config)?.as_bytes())?;
        write(&tmp)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let final_dir = root.join(&name);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming checkpoint into {}", final_dir.display()))?;
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    Ok(final_dir)
}

/// Resolves `--resume PATH`: a checkpoint directory, or a run directory whose
/// `checkpoints/LATEST` names one.
pub fn resolve_resume(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(STATE_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let latest = checkpoints_dir(path).join(LATEST_FILE);
    if latest.exists() {
        let name = std::fs::read_to_string(&latest)
            .with_context(|| format!("reading {}", latest.display()))?;
        let dir = checkpoints_dir(path).join(name.trim());
        if dir.join(STATE_FILE).exists() {
            return Ok(dir);
        }
        bail!(
            "{} names {}, which is not a complete checkpoint",
            latest.display(),
            dir.display()
        );
    }
    bail!(
        "{} is neither a checkpoint directory (with {STATE_FILE}) nor a run directory with \
         checkpoints/{LATEST_FILE}",
        path.display()
    )
}

pub fn read_config(dir: &Path) -> anyhow::Result<TrainConfig> {
    TrainConfig::from_toml(&dir.join(CONFIG_FILE))
}
