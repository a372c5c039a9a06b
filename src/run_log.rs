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
    /// Each window's losses with the SAE spliced into this head alone and with this head
    /// zero-ablated (absent as `ce_score_se`; the clean losses are the evaluation's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_losses: Option<HeadWindowLosses>,
}

/// A head's per-window losses in an evaluation: with the SAE spliced into it alone, and
/// with it zero-ablated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadWindowLosses {
    pub sae: Vec<f64>,
    pub zero: Vec<f64>,
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
    /// Each window's losses (absent as `ce_score_se`): what pairs two evaluations on the
    /// same windows ([`score_difference`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_losses: Option<WindowLosses>,
}

/// Each window's mean CE loss in an evaluation: clean, with the SAE spliced into every
/// head, and every head zero-ablated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowLosses {
    pub clean: Vec<f64>,
    pub sae: Vec<f64>,
    pub zero: Vec<f64>,
}

impl WindowLosses {
    /// The CE loss score over the windows, leaving out window `skip` if given: a ratio of
    /// the summed costs (so of their means).
    fn score(&self, skip: Option<usize>) -> f64 {
        let kept = |i: &usize| Some(*i) != skip;
        let n = self.clean.len();
        let zero: f64 = (0..n)
            .filter(kept)
            .map(|i| self.zero[i] - self.clean[i])
            .sum();
        let sae: f64 = (0..n)
            .filter(kept)
            .map(|i| self.sae[i] - self.clean[i])
            .sum();
        (zero - sae) / zero
    }

    /// The score over all windows and its jackknife standard error.
    pub fn jackknife_score(&self) -> (f64, f64) {
        jackknife(self.clean.len(), |skip| self.score(skip))
    }
}

/// A statistic over `n` windows and its jackknife standard error: `stat(None)` on all of
/// them, `stat(Some(i))` with window `i` left out.
pub fn jackknife(n: usize, stat: impl Fn(Option<usize>) -> f64) -> (f64, f64) {
    let leave_one: Vec<f64> = (0..n).map(|i| stat(Some(i))).collect();
    let mean = leave_one.iter().sum::<f64>() / n as f64;
    let squares: f64 = leave_one.iter().map(|r| (r - mean).powi(2)).sum();
    (stat(None), ((n as f64 - 1.0) / n as f64 * squares).sqrt())
}

/// The difference of two evaluations' CE loss scores on the same windows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScoreDifference {
    /// `b`'s score less `a`'s.
    pub difference: f64,
    /// Its jackknife standard error over the windows, paired: each window's losses of both
    /// SAEs are left out together, so what the windows share (how hard their text is,
    /// what ablation costs there) cancels.
    pub se: f64,
    pub windows: usize,
    /// The same for each head's score (the SAE spliced into that head alone), where both
    /// evaluations recorded each head's per-window losses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_head: Option<Vec<HeadDifference>>,
}

/// One head's [`ScoreDifference`]: `b`'s score less `a`'s and its paired standard error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HeadDifference {
    pub difference: f64,
    pub se: f64,
}

/// Each head's losses as [`WindowLosses`] (the evaluation's clean losses with the head's
/// own), where every head recorded them over `clean`'s windows.
fn head_losses(e: &EvalMetrics, clean: &[f64]) -> Option<Vec<WindowLosses>> {
    let n = clean.len();
    (e.per_head.iter())
        .map(|h| {
            let w = h.window_losses.as_ref()?;
            (w.sae.len() == n && w.zero.len() == n).then(|| WindowLosses {
                clean: clean.to_vec(),
                sae: w.sae.clone(),
                zero: w.zero.clone(),
            })
        })
        .collect()
}

/// `b`'s CE loss score less `a`'s, paired window by window, where both were evaluated on
/// the same windows of the same model and layer (their clean and zero-ablated losses equal
/// to the bit); otherwise why not.
pub fn score_difference(a: &EvalMetrics, b: &EvalMetrics) -> Result<ScoreDifference, String> {
    let (Some(la), Some(lb)) = (&a.window_losses, &b.window_losses) else {
        return Err("no per-window losses recorded: evaluated before they were".into());
    };
    let n = la.clean.len();
    if [la, lb]
        .iter()
        .any(|l| l.sae.len() != l.clean.len() || l.zero.len() != l.clean.len())
    {
        return Err("per-window losses of unequal lengths".into());
    }
    if lb.clean.len() != n {
        return Err(format!("other windows: {n} and {}", lb.clean.len()));
    }
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(&la.clean) != bits(&lb.clean) {
        return Err("other windows, model or device: the clean losses differ".into());
    }
    if bits(&la.zero) != bits(&lb.zero) {
        return Err("another layer: the zero-ablated losses differ".into());
    }
    if n < 2 {
        return Err(format!("{n} windows: no error to give"));
    }
    let paired =
        |x: &WindowLosses, y: &WindowLosses| jackknife(n, |skip| y.score(skip) - x.score(skip));
    let (difference, se) = paired(la, lb);
    // Per head, where both recorded each head's losses, with the same zero-ablated ones.
    let per_head = match (head_losses(a, &la.clean), head_losses(b, &lb.clean)) {
        (Some(ha), Some(hb))
            if ha.len() == hb.len()
                && (ha.iter().zip(&hb)).all(|(x, y)| bits(&x.zero) == bits(&y.zero)) =>
        {
            let heads = ha.iter().zip(&hb).map(|(x, y)| paired(x, y));
            Some(
                heads
                    .map(|(difference, se)| HeadDifference { difference, se })
                    .collect(),
            )
        }
        _ => None,
    };
    Ok(ScoreDifference {
        difference,
        se,
        windows: n,
        per_head,
    })
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

/// [`score_difference`] of two runs' last evaluations.
pub fn last_score_difference(a: &History, b: &History) -> Result<ScoreDifference, String> {
    match (a.evals.last(), b.evals.last()) {
        (Some(a), Some(b)) => score_difference(a, b),
        _ => Err("no evaluation logged".into()),
    }
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

/// A run's history: a run directory's `metrics.jsonl`, the one a dashboard file records, or
/// an `evaluate --json` report's one evaluation (a `.json` file).
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
    if path.extension().is_some_and(|e| e == "json") {
        return read_evaluate_report(path);
    }
    let file = crate::dashboard::format::OwnedDashboardFile::read(path)?;
    Ok(file.meta.history.clone())
}

/// An `evaluate --json` report as a history of one evaluation (its `metrics`) and no steps.
#[cfg(not(target_arch = "wasm32"))]
fn read_evaluate_report(path: &Path) -> anyhow::Result<History> {
    use anyhow::Context;
    #[derive(serde::Deserialize)]
    struct Report {
        metrics: EvalMetrics,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Report = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an `evaluate --json` report (nor a run directory or dashboard file)",
            path.display()
        )
    })?;
    Ok(History {
        steps: Vec::new(),
        evals: vec![report.metrics],
    })
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

    fn eval_on(clean: &[f64], sae: &[f64], zero: &[f64]) -> EvalMetrics {
        EvalMetrics {
            step: 0,
            ce_clean: 0.0,
            ce_sae: 0.0,
            ce_zero: 0.0,
            ce_score: 0.0,
            per_head: vec![],
            ce_score_se: None,
            windows: None,
            window_losses: Some(WindowLosses {
                clean: clean.to_vec(),
                sae: sae.to_vec(),
                zero: zero.to_vec(),
            }),
        }
    }

    /// Worked by hand: three windows, clean 1, zero-ablated 2, 3, 4; SAE costs a: 0.5,
    /// 0.5, 0.5, b: 0.25, 0.75, 0.5. Both score 0.75 on all three; leaving each window
    /// out in turn, a scores 4/5, 3/4, 2/3 and b 3.75/5, 3.25/4, 2/3.
    #[test]
    fn a_score_difference_is_a_paired_jackknife_over_windows() {
        let (clean, zero) = ([1.0; 3], [2.0, 3.0, 4.0]);
        let a = eval_on(&clean, &[1.5; 3], &zero);
        let b = eval_on(&clean, &[1.25, 1.75, 1.5], &zero);
        let d = score_difference(&a, &b).unwrap();
        assert!(d.difference.abs() < 1e-15 && d.windows == 3, "{d:?}");
        let loo: [f64; 3] = [0.75 - 0.8, 0.8125 - 0.75, 0.0];
        let m = loo.iter().sum::<f64>() / 3.0;
        let want = (2.0 / 3.0 * loo.iter().map(|r| (r - m).powi(2)).sum::<f64>()).sqrt();
        assert!((d.se - want).abs() < 1e-12, "{} against {want}", d.se);
        // numpy (the same jackknife on these arrays): 0.06508541396588881.
        assert!((d.se - 0.065085413965888).abs() < 1e-12);
        // b against a is the opposite, with the same error; a run against itself, 0 +- 0.
        let back = score_difference(&b, &a).unwrap();
        assert_eq!((back.difference, back.se), (-d.difference, d.se));
        let same = score_difference(&a, &a).unwrap();
        assert_eq!((same.difference, same.se), (0.0, 0.0));
        // Each run's own error (unpaired) is larger: a's costs do not vary, but the
        // windows' zero-ablation costs do.
        let own = b.window_losses.as_ref().unwrap().jackknife_score();
        assert!(own.1 > d.se, "{own:?}");
    }

    /// Each head's difference is the same paired jackknife over that head's losses (with the
    /// evaluation's clean ones). Head 1 is worked by hand: clean 1, that head zero-ablated
    /// 1.5, 2, 3; SAE costs a: 0.25 each, b: 0.5, 0.25, 0.5. Scores 2.75/3.5 and 2.25/3.5;
    /// leaving each window out in turn, differences 0.75 - 2.5/3, 0.6 - 0.8, 0.5 - 1/1.5.
    #[test]
    fn each_heads_score_difference_is_paired_too() {
        let (clean, zero) = ([1.0; 3], [2.0, 3.0, 4.0]);
        let head = |sae: &[f64], zero: &[f64]| HeadEval {
            ce_sae: 0.0,
            ce_zero: 0.0,
            ce_score: 0.0,
            ce_score_se: None,
            window_losses: Some(HeadWindowLosses {
                sae: sae.to_vec(),
                zero: zero.to_vec(),
            }),
        };
        let mut a = eval_on(&clean, &[1.5; 3], &zero);
        let mut b = eval_on(&clean, &[1.25, 1.75, 1.5], &zero);
        // Head 0 as the whole layer; head 1 worked by hand.
        let zero_1 = [1.5, 2.0, 3.0];
        a.per_head = vec![head(&[1.5; 3], &zero), head(&[1.25; 3], &zero_1)];
        b.per_head = vec![
            head(&[1.25, 1.75, 1.5], &zero),
            head(&[1.5, 1.25, 1.5], &zero_1),
        ];
        let d = score_difference(&a, &b).unwrap();
        let heads = d.per_head.clone().unwrap();
        assert_eq!(
            heads[0],
            HeadDifference {
                difference: d.difference,
                se: d.se
            }
        );
        assert!(
            (heads[1].difference - (2.25 - 2.75) / 3.5).abs() < 1e-12,
            "{heads:?}"
        );
        let loo: [f64; 3] = [0.75 - 2.5 / 3.0, 0.6 - 0.8, 0.5 - 1.0 / 1.5];
        let m = loo.iter().sum::<f64>() / 3.0;
        let want = (2.0 / 3.0 * loo.iter().map(|r| (r - m).powi(2)).sum::<f64>()).sqrt();
        assert!(
            (heads[1].se - want).abs() < 1e-12,
            "{} against {want}",
            heads[1].se
        );
        // numpy (the same jackknife on these arrays): 0.06938886664887109.
        assert!((heads[1].se - 0.069388866648871).abs() < 1e-12);
        // Without a head's losses in either, or with a head's zero-ablated losses differing,
        // the layer's difference alone.
        let mut unrecorded = b.clone();
        unrecorded.per_head[1].window_losses = None;
        let mut other_zero = b.clone();
        (other_zero.per_head[1].window_losses.as_mut().unwrap()).zero[2] = 3.5;
        for b in [unrecorded, other_zero] {
            let alone = score_difference(&a, &b).unwrap();
            assert_eq!(
                (alone.difference, alone.se, alone.per_head),
                (d.difference, d.se, None)
            );
        }
    }

    /// Evaluations that are not of the same windows, model and layer do not pair, and say why.
    #[test]
    fn only_evaluations_on_the_same_windows_pair() {
        let a = eval_on(&[1.0; 3], &[1.5; 3], &[2.0, 3.0, 4.0]);
        let why = |b: &EvalMetrics| score_difference(&a, b).unwrap_err();
        let other_clean = eval_on(&[1.0, 1.0, 1.0 + 1e-12], &[1.5; 3], &[2.0, 3.0, 4.0]);
        assert!(why(&other_clean).contains("clean losses differ"));
        let other_layer = eval_on(&[1.0; 3], &[1.5; 3], &[2.0, 3.0, 4.5]);
        assert!(why(&other_layer).contains("zero-ablated losses differ"));
        let four = eval_on(&[1.0; 4], &[1.5; 4], &[2.0; 4]);
        assert_eq!(why(&four), "other windows: 3 and 4");
        let unrecorded = EvalMetrics {
            window_losses: None,
            ..a.clone()
        };
        assert!(why(&unrecorded).contains("no per-window losses"));
        let short = eval_on(&[1.0; 3], &[1.5; 2], &[2.0, 3.0, 4.0]);
        assert!(why(&short).contains("unequal lengths"));
        let one = eval_on(&[1.0], &[1.5], &[2.0]);
        assert!(
            score_difference(&one, &one)
                .unwrap_err()
                .contains("1 windows")
        );
    }

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
