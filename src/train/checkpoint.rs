//! Trainer: checkpoints. A checkpoint directory holds the config (TOML), the SAE (our
//! format), the Adam state, the trainer state (step, RNG, dead-feature window) and the
//! activation store state (shuffle buffer, data position), so `--resume` continues as if
//! training had never stopped. Written to a temp directory and renamed into place; the
//! last `keep_checkpoints` are kept. Every reader finds checkpoints through
//! [`resolve_resume`].

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::TrainConfig;
use crate::files::{sync_dir, write_atomic};

pub const CONFIG_FILE: &str = "config.toml";
pub const STATE_FILE: &str = "trainer_state.json";
pub const LATEST_FILE: &str = "LATEST";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub tokens: u64,
    pub adam_t: usize,
    /// The dead-feature window (absent in checkpoints written before it was saved).
    #[serde(default)]
    pub dead_window: Option<super::metrics::DeadWindowState>,
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
    // Replacing a step directory: move the old one aside first, so that a crash leaves
    // either the old or the new checkpoint complete under some name.
    let aside = root.join(format!(".{name}.old"));
    if final_dir.exists() {
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(&final_dir, &aside)
            .with_context(|| format!("moving {} aside", final_dir.display()))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("renaming checkpoint into {}", final_dir.display()))?;
    sync_dir(&root);
    let _ = std::fs::remove_dir_all(&aside);
    write_atomic(&root.join(LATEST_FILE), name.as_bytes())?;
    Ok(final_dir)
}

/// Complete checkpoint directories (`step_N` with a trainer state) under a run, oldest
/// first.
pub fn complete_checkpoints(out_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(checkpoints_dir(out_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step_")?.parse().ok()?;
            let path = e.path();
            path.join(STATE_FILE).is_file().then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// Deletes all but the newest `keep` complete checkpoints (0 keeps all).
pub fn prune_checkpoints(out_dir: &Path, keep: usize) -> anyhow::Result<()> {
    let all = complete_checkpoints(out_dir);
    if keep == 0 || all.len() <= keep {
        return Ok(());
    }
    for (_, dir) in &all[..all.len() - keep] {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Files of a run besides its SAE (which a new run overwrites): removed when a new run
/// starts in the same directory.
const RUN_FILES: [&str; 3] = [
    "metrics.jsonl",
    "summary.json",
    crate::dashboard::DASHBOARD_FILE,
];

/// Clears a previous run from `out_dir` before a new (not resumed) run starts there: its
/// checkpoints (which would otherwise outrank the new run's when pruning), metrics log,
/// summary and dashboards. Returns whether there was one.
pub fn clear_previous_run(out_dir: &Path) -> anyhow::Result<bool> {
    let mut found = false;
    let checkpoints = checkpoints_dir(out_dir);
    if checkpoints.exists() {
        std::fs::remove_dir_all(&checkpoints)
            .with_context(|| format!("removing the previous run's {}", checkpoints.display()))?;
        found = true;
    }
    for name in RUN_FILES {
        let path = out_dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the previous run's {}", path.display()))?;
            found = true;
        }
    }
    Ok(found)
}

/// Removes what an interrupted checkpoint write leaves: `.step_N.tmp` and `.step_N.old`
/// directories. Returns how many.
pub fn remove_leftovers(out_dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(checkpoints_dir(out_dir))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".step_")
            && (name.ends_with(".tmp") || name.ends_with(".old"))
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Resolves a checkpoint: a checkpoint directory, or a run directory whose
/// `checkpoints/LATEST` names one. A `LATEST` that is unreadable or names an incomplete
/// directory falls back, with a warning, to the newest complete `step_*`.
pub fn resolve_resume(path: &Path) -> anyhow::Result<PathBuf> {
    if path.join(STATE_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let root = checkpoints_dir(path);
    let latest = root.join(LATEST_FILE);
    let named = std::fs::read_to_string(&latest)
        .ok()
        .map(|name| root.join(name.trim()))
        .filter(|dir| dir.parent() == Some(root.as_path()) && dir.join(STATE_FILE).is_file());
    if let Some(dir) = named {
        return Ok(dir);
    }
    if let Some((_, dir)) = complete_checkpoints(path).pop() {
        if latest.exists() {
            eprintln!(
                "warning: {} does not name a complete checkpoint; using the newest complete \
                 one, {}",
                latest.display(),
                dir.display()
            );
        }
        return Ok(dir);
    }
    bail!(
        "{} is neither a checkpoint directory (with {STATE_FILE}) nor a run directory with \
         a complete checkpoint under checkpoints/",
        path.display()
    )
}

/// The checkpoint and SAE directory of a run: of `checkpoint` when given (one of the
/// run's checkpoint directories), else the run's final `sae/`, else its latest
/// checkpoint's (a run still training). The checkpoint holds the config to use.
pub fn run_sae(run_dir: &Path, checkpoint: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ckpt = resolve_resume(checkpoint.unwrap_or(run_dir))?;
    let sae_dir = match checkpoint {
        None if run_dir.join("sae").is_dir() => run_dir.join("sae"),
        _ => ckpt.join("sae"),
    };
    Ok((ckpt, sae_dir))
}

pub fn read_config(dir: &Path) -> anyhow::Result<TrainConfig> {
    TrainConfig::from_saved_toml(&dir.join(CONFIG_FILE))
}
