//! Run log: the metrics a training run writes to `metrics.jsonl`, as plain data. Shared by
//! the trainer (which writes them), the dashboard file (which carries a run's history) and
//! viewers; no burn, so it compiles wherever the dashboard reader does.

use std::path::Path;

/// Metrics published every `log_every` steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub tokens: u64,
    pub loss: f64,
    pub mse: f64,
    pub sparsity_loss: f64,
    pub l0: f64,
    pub l0_per_head: Vec<f64>,
    pub explained_variance: f64,
    pub explained_variance_per_head: Vec<f64>,
    pub l2_ratio: f64,
    pub dead_features: usize,
    pub dead_per_head: Vec<usize>,
    pub lr: f64,
    pub l1_coefficient: f64,
    pub steps_per_s: f64,
    /// The AuxK term of the step's loss, without its coefficient (TopK and BatchTopK runs
    /// with AuxK, once a whole dead-feature window has passed; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_loss: Option<f64>,
}

/// CE loss of one head spliced (or ablated) alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadEval {
    pub ce_sae: f64,
    pub ce_zero: f64,
    pub ce_score: f64,
    /// The score's jackknife standard error over the windows (absent from metrics written
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_score_se: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalMetrics {
    pub step: usize,
    pub ce_clean: f64,
    pub ce_sae: f64,
    pub ce_zero: f64,
    /// `(L_zero - L_sae) / (L_zero - L_clean)`.
    pub ce_score: f64,
    pub per_head: Vec<HeadEval>,
    /// The score's jackknife standard error over the evaluation's windows (absent from
    /// metrics written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_score_se: Option<f64>,
    /// The context windows evaluated on (absent as `ce_score_se`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
}

impl EvalMetrics {
    /// The score's standard error and windows as text to follow the score, `" +- 0.016 (4
    /// windows)"` with `digits` decimals, or nothing where they were not recorded.
    pub fn score_spread(&self, digits: usize) -> String {
        match (self.ce_score_se, self.windows) {
            (Some(se), Some(n)) => format!(" +- {se:.digits$} ({n} windows)"),
            _ => String::new(),
        }
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum LogLine {
    Step(StepMetrics),
    Eval(EvalMetrics),
}

/// Whether a run's metrics (its last step's and evaluation's) are a dense SAE's: one
/// block, and CE loss scores per model head (its reconstruction spliced into one head's
/// part of hook_z at a time).
pub fn dense_metrics(last: Option<&StepMetrics>, eval: Option<&EvalMetrics>) -> bool {
    let blocks = last.map(|m| m.l0_per_head.len());
    blocks == Some(1) && eval.is_some_and(|e| e.per_head.len() > 1)
}

/// A run's step and eval history.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    pub steps: Vec<StepMetrics>,
    pub evals: Vec<EvalMetrics>,
}

impl History {
    /// Parses `metrics.jsonl` text. Lines that do not parse are counted, not fatal (a run
    /// killed mid-write leaves a partial last line).
    pub fn parse(text: &str) -> (Self, usize) {
        let mut history = Self::default();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<LogLine>(line) {
                Ok(LogLine::Step(s)) => history.steps.push(s),
                Ok(LogLine::Eval(e)) => history.evals.push(e),
                Err(_) => bad += 1,
            }
        }
        (history, bad)
    }

    /// Reads a run's `metrics.jsonl`; a missing file is an empty history.
    pub fn read(path: &Path) -> std::io::Result<(Self, usize)> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Self::default(), 0)),
            Err(e) => Err(e),
        }
    }

    /// Keeps at most `max_points` step lines, evenly spaced, always with the first and
    /// last (evals are few and kept whole).
    pub fn subsampled(mut self, max_points: usize) -> Self {
        let n = self.steps.len();
        if n > max_points && max_points >= 2 {
            let keep: Vec<usize> = (0..max_points)
                .map(|i| i * (n - 1) / (max_points - 1))
                .collect();
            let mut steps = std::mem::take(&mut self.steps);
            let mut kept = Vec::with_capacity(max_points);
            for (i, s) in steps.drain(..).enumerate() {
                if keep.binary_search(&i).is_ok() {
                    kept.push(s);
                }
            }
            self.steps = kept;
        }
        self
    }
}

/// A run's history: a run directory's `metrics.jsonl`, or the one a dashboard file records.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_history(path: &Path) -> anyhow::Result<History> {
    use anyhow::Context;
    if path.is_dir() {
        let metrics = path.join("metrics.jsonl");
        anyhow::ensure!(
            metrics.is_file(),
            "{} has no metrics.jsonl: not a run directory",
            path.display()
        );
        let (history, _) =
            History::read(&metrics).with_context(|| format!("reading {}", metrics.display()))?;
        return Ok(history);
    }
    let file = crate::dashboard::format::OwnedDashboardFile::read(path)?;
    Ok(file.meta.history.clone())
}

/// A run's name for tables and legends: its path's last two components
/// (`runs/latest`, `run/dashboard.safetensors`).
pub fn short_name(path: &Path) -> String {
    let mut parts: Vec<String> = path
        .iter()
        .rev()
        .take(2)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    parts.reverse();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsampling_keeps_ends_and_spacing() {
        let step = |i: usize| StepMetrics {
            step: i,
            tokens: 0,
            loss: 0.0,
            mse: 0.0,
            sparsity_loss: 0.0,
            l0: 0.0,
            l0_per_head: vec![],
            explained_variance: 0.0,
            explained_variance_per_head: vec![],
            l2_ratio: 0.0,
            dead_features: 0,
            dead_per_head: vec![],
            lr: 0.0,
            l1_coefficient: 0.0,
            steps_per_s: 0.0,
            aux_loss: None,
        };
        let h = History {
            steps: (0..1001).map(step).collect(),
            evals: vec![],
        }
        .subsampled(11);
        let got: Vec<usize> = h.steps.iter().map(|s| s.step).collect();
        assert_eq!(got, (0..=10).map(|i| i * 100).collect::<Vec<_>>());
    }
}
