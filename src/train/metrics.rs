//! Trainer: metrics of a batch (MSE, L0 total and per head, explained variance, L2 ratio),
//! dead-feature tracking and the feature density histogram.

use burn::prelude::*;

use crate::sae::SaeOutput;
use crate::train::StepOutput;

pub use crate::run_log::StepMetrics;

/// Batch statistics read back from the device.
pub struct BatchStats {
    pub l0_per_head: Vec<f64>,
    pub explained_variance: f64,
    pub explained_variance_per_head: Vec<f64>,
    pub l2_ratio: f64,
}

fn host(t: Tensor<1>) -> Vec<f64> {
    crate::files::host_vec(t)
        .unwrap_or_default()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The per-batch sums metrics need, from a forward pass: firings per feature [H, m],
/// summed squared error per head `[H]` and squared reconstruction norms `[H, B]`.
///
/// # Shapes
/// `x`: [H, B, d_head] in the SAE's input space.
pub fn step_sums(x: Tensor<3>, out: &SaeOutput) -> (Tensor<2>, Tensor<1>, Tensor<2>) {
    let [h, b, m] = out.feats.dims();
    let fired = out
        .feats
        .clone()
        .greater_elem(0.0)
        .float()
        .sum_dim(1)
        .reshape([h, m]);
    let resid = (x - out.recon.clone())
        .square()
        .sum_dim(2)
        .sum_dim(1)
        .reshape([h]);
    let recon_sq = out.recon.clone().square().sum_dim(2).reshape([h, b]);
    (fired, resid, recon_sq)
}

/// Explained variance `1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2` (mean over the batch,
/// per dimension), L0 per head and the mean L2 norm ratio `||x_hat|| / ||x||`, from a
/// training step's sums.
///
/// # Shapes
/// `x`: [H, B, d_head] in the SAE's input space.
pub fn batch_stats(x: Tensor<3>, out: &StepOutput) -> BatchStats {
    let [h, b, _] = x.dims();
    let l0 = out.fired.clone().sum_dim(1).reshape([h]) / b as f64;
    let centered = (x.clone() - x.clone().mean_dim(1))
        .square()
        .sum_dim(2)
        .sum_dim(1);
    let resid = host(out.resid_sq.clone());
    let centered = host(centered.reshape([h]));
    let ev_head = resid
        .iter()
        .zip(&centered)
        .map(|(r, c)| 1.0 - r / c.max(1e-30))
        .collect();
    let ev = 1.0 - resid.iter().sum::<f64>() / centered.iter().sum::<f64>().max(1e-30);
    let x_norm = x.square().sum_dim(2).sum_dim(0).reshape([b]).sqrt();
    let r_norm = out.recon_sq.clone().sum_dim(0).reshape([b]).sqrt();
    let ratio = (r_norm / x_norm.clamp_min(1e-12)).mean();
    BatchStats {
        l0_per_head: host(l0),
        explained_variance: ev,
        explained_variance_per_head: ev_head,
        l2_ratio: host(ratio)[0],
    }
}

/// Counts feature firings over a window of steps that slides: features whose firing
/// density over the last `window_steps` steps is below the threshold are dead. The window
/// is cut into sub-windows (the largest divisor of `window_steps` up to 10; 10 of 20 steps
/// for the default 200) and moves on by one sub-window at a time, so that the dead count is
/// at most a sub-window old instead of up to a whole window; at every multiple of
/// `window_steps` it covers exactly the steps since the previous multiple. Before the first
/// window is complete, the steps so far count.
pub struct DeadFeatureTracker {
    n_heads: usize,
    features_per_head: usize,
    /// Sub-windows per window, and steps per sub-window.
    n_sub: usize,
    sub_steps: usize,
    threshold: f64,
    /// Firing counts in the current sub-window, [H, m] on the device.
    counts: Option<Tensor<2>>,
    steps_in_window: usize,
    tokens_in_window: u64,
    /// The last complete sub-windows (at most `n_sub`), oldest first: their firing counts
    /// `[H * m]` and tokens.
    completed: std::collections::VecDeque<(Vec<f32>, u64)>,
    /// Density of each feature over the last complete window.
    pub last_density: Option<Vec<f64>>,
}

/// A [`DeadFeatureTracker`]'s state, saved in checkpoints so that a resumed run counts
/// dead features (and writes `sparsity.safetensors`) as an uninterrupted one would.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadWindowState {
    /// Firing counts in the current sub-window, `[H * m]`.
    pub counts: Option<Vec<f32>>,
    pub steps_in_window: usize,
    pub tokens_in_window: u64,
    pub last_density: Option<Vec<f64>>,
    /// The last complete sub-windows (counts, tokens). Checkpoints written before the
    /// window slid have none: such a run resumes with the last complete window's
    /// densities and counts anew from there.
    #[serde(default)]
    pub completed: Option<Vec<(Vec<f32>, u64)>>,
}

/// Sub-windows of a window of `steps` steps: its largest divisor up to 10.
fn sub_windows(steps: usize) -> usize {
    (1..=steps.clamp(1, 10))
        .rev()
        .find(|d| steps.is_multiple_of(*d))
        .unwrap_or(1)
}

impl DeadFeatureTracker {
    /// The state to checkpoint.
    pub fn state(&self) -> anyhow::Result<DeadWindowState> {
        Ok(DeadWindowState {
            counts: match &self.counts {
                Some(c) => Some(crate::files::host_vec(c.clone())?),
                None => None,
            },
            steps_in_window: self.steps_in_window,
            tokens_in_window: self.tokens_in_window,
            last_density: self.last_density.clone(),
            completed: Some(self.completed.iter().cloned().collect()),
        })
    }

    /// Restores a checkpointed state (checked against this tracker's size).
    pub fn restore(&mut self, state: DeadWindowState, device: &Device) -> anyhow::Result<()> {
        let n = self.n_heads * self.features_per_head;
        let ok = |v: Option<usize>| v.is_none_or(|len| len == n);
        let completed = state.completed.as_deref().unwrap_or_default();
        anyhow::ensure!(
            ok(state.counts.as_ref().map(Vec::len))
                && ok(state.last_density.as_ref().map(Vec::len))
                && completed.iter().all(|(c, _)| c.len() == n)
                && completed.len() <= self.n_sub
                && (state.completed.is_none() || state.steps_in_window < self.sub_steps),
            "the checkpoint's dead-feature window is not for {} features",
            n
        );
        self.last_density = state.last_density;
        let Some(completed) = state.completed else {
            // An older checkpoint: its partial counts span a whole window's steps, not a
            // sub-window's; count anew from here.
            (self.counts, self.steps_in_window, self.tokens_in_window) = (None, 0, 0);
            self.completed.clear();
            return Ok(());
        };
        self.counts = state.counts.map(|c| {
            Tensor::from_data(
                burn::tensor::TensorData::new(c, [self.n_heads, self.features_per_head]),
                device,
            )
        });
        self.steps_in_window = state.steps_in_window;
        self.tokens_in_window = state.tokens_in_window;
        self.completed = completed.into();
        Ok(())
    }

    pub fn new(
        n_heads: usize,
        features_per_head: usize,
        window_steps: usize,
        threshold: f64,
    ) -> Self {
        let window_steps = window_steps.max(1);
        let n_sub = sub_windows(window_steps);
        Self {
            n_heads,
            features_per_head,
            n_sub,
            sub_steps: window_steps / n_sub,
            threshold,
            counts: None,
            steps_in_window: 0,
            tokens_in_window: 0,
            completed: Default::default(),
            last_density: None,
        }
    }

    /// Steps between two moves of the window (a sub-window).
    pub fn slide_steps(&self) -> usize {
        self.sub_steps
    }

    /// Adds a batch's firings per feature [H, m] over `b` tokens.
    pub fn observe(&mut self, fired: Tensor<2>, b: usize) {
        self.counts = Some(match self.counts.take() {
            Some(c) => c + fired,
            None => fired,
        });
        self.steps_in_window += 1;
        self.tokens_in_window += b as u64;
        if self.steps_in_window >= self.sub_steps {
            self.close_sub_window();
        }
    }

    fn close_sub_window(&mut self) {
        if let Some(c) = self.counts.take() {
            let n = self.n_heads * self.features_per_head;
            let counts = crate::files::host_vec(c.reshape([n])).unwrap_or_default();
            self.completed.push_back((counts, self.tokens_in_window));
            if self.completed.len() > self.n_sub {
                self.completed.pop_front();
            }
            if self.completed.len() == self.n_sub {
                self.last_density = Some(self.sum_density(None));
            }
        }
        self.steps_in_window = 0;
        self.tokens_in_window = 0;
    }

    /// Densities over the completed sub-windows, plus `current` (counts, tokens).
    fn sum_density(&self, current: Option<(Vec<f64>, u64)>) -> Vec<f64> {
        let n = self.n_heads * self.features_per_head;
        let (mut sum, mut tokens) = current.unwrap_or_else(|| (vec![0.0; n], 0));
        for (c, t) in &self.completed {
            sum.iter_mut().zip(c).for_each(|(s, &x)| *s += x as f64);
            tokens += t;
        }
        let tokens = tokens.max(1) as f64;
        sum.into_iter().map(|x| x / tokens).collect()
    }

    /// Densities to judge by: the last complete window, or the steps so far before one is.
    pub fn density(&self) -> Option<Vec<f64>> {
        if let Some(d) = &self.last_density {
            return Some(d.clone());
        }
        if self.counts.is_none() && self.completed.is_empty() {
            return None;
        }
        let current = self.counts.clone().map(|c| {
            let n = self.n_heads * self.features_per_head;
            (host(c.reshape([n])), self.tokens_in_window)
        });
        Some(self.sum_density(current))
    }

    /// Which features are dead, [H * m], once a whole window has been seen (`None`
    /// before): what the AuxK loss trains. Unlike [`DeadFeatureTracker::dead`], the steps
    /// of an incomplete first window do not count, or every feature that has not fired yet
    /// would count as dead in the first steps.
    pub fn dead_mask(&self) -> Option<Vec<bool>> {
        let density = self.last_density.as_ref()?;
        Some(density.iter().map(|&d| d < self.threshold).collect())
    }

    /// Dead features, total and per head.
    pub fn dead(&self) -> (usize, Vec<usize>) {
        let mut per_head = vec![0; self.n_heads];
        if let Some(density) = self.density() {
            for (i, d) in density.iter().enumerate() {
                if *d < self.threshold {
                    per_head[i / self.features_per_head] += 1;
                }
            }
        }
        (per_head.iter().sum(), per_head)
    }
}

/// Histogram of `log10(density + 1e-10)` with `bins` bins over [-10, 0].
pub fn density_histogram(density: &[f64], bins: usize) -> Vec<(f64, usize)> {
    let mut counts = vec![0usize; bins];
    for d in density {
        let x = (d + 1e-10).log10().clamp(-10.0, 0.0);
        let i = (((x + 10.0) / 10.0) * bins as f64) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, c)| (-10.0 + 10.0 * (i as f64 + 0.5) / bins as f64, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::sae::{Architecture, BlockDiagSae, SaeConfig};
    use burn::tensor::TensorData;

    #[test]
    fn explained_variance_matches_the_formula() {
        let device = Device::flex();
        let mut rng = Rng::new(1);
        let cfg = SaeConfig {
            n_heads: 2,
            d_head: 3,
            features_per_head: 4,
            architecture: Architecture::Relu,
        };
        let sae = BlockDiagSae::init(cfg, &mut rng, &device);
        let xs: Vec<f32> = (0..2 * 5 * 3).map(|_| rng.normal() as f32).collect();
        let x = Tensor::<3>::from_data(TensorData::new(xs.clone(), [2, 5, 3]), &device);
        let out = sae.forward(x.clone());
        let recon: Vec<f32> = crate::files::host_vec(out.recon.clone()).unwrap();
        let (fired, resid_sq, recon_sq) = step_sums(x.clone(), &out);
        let zero = Tensor::<1>::zeros([1], &device);
        let step = StepOutput {
            mse: zero.clone(),
            sparsity: zero.clone(),
            total: zero,
            fired,
            resid_sq,
            recon_sq,
            aux: None,
            batch_threshold: None,
        };
        let stats = batch_stats(x, &step);
        // L2 ratio and L0, naively.
        let feats: Vec<f32> = crate::files::host_vec(out.feats.clone()).unwrap();
        let mut ratio = 0f64;
        for b in 0..5 {
            let (mut xn, mut rn) = (0f64, 0f64);
            for h in 0..2 {
                for j in 0..3 {
                    let i = (h * 5 + b) * 3 + j;
                    xn += (xs[i] as f64).powi(2);
                    rn += (recon[i] as f64).powi(2);
                }
            }
            ratio += rn.sqrt() / xn.sqrt() / 5.0;
        }
        assert!(
            (stats.l2_ratio - ratio).abs() < 1e-5,
            "{} vs {ratio}",
            stats.l2_ratio
        );
        for h in 0..2 {
            let l0 = feats[h * 20..(h + 1) * 20]
                .iter()
                .filter(|&&f| f > 0.0)
                .count() as f64
                / 5.0;
            assert!((stats.l0_per_head[h] - l0).abs() < 1e-6);
        }
        // Naive: over the concatenated 6-dim vector per token.
        let (mut num, mut den) = (0f64, 0f64);
        for h in 0..2 {
            for j in 0..3 {
                let col: Vec<f64> = (0..5).map(|b| xs[(h * 5 + b) * 3 + j] as f64).collect();
                let mean = col.iter().sum::<f64>() / 5.0;
                for b in 0..5 {
                    let i = (h * 5 + b) * 3 + j;
                    num += (xs[i] as f64 - recon[i] as f64).powi(2);
                    den += (xs[i] as f64 - mean).powi(2);
                }
            }
        }
        assert!((stats.explained_variance - (1.0 - num / den)).abs() < 1e-5);
    }

    /// Per step, each feature's firings over `b` tokens: feature `i` fires on a token with
    /// probability `i / n`, so that the first ones are dead or nearly.
    fn firings(rng: &mut Rng, n: usize, b: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (0..b)
                    .filter(|_| rng.uniform() < i as f64 / n as f64 / 4.0)
                    .count() as f32
            })
            .collect()
    }

    /// Densities over `steps` (1-based, inclusive), recounted from the log.
    fn recount(log: &[(Vec<f32>, usize)], steps: std::ops::RangeInclusive<usize>) -> Vec<f64> {
        let n = log[0].0.len();
        let mut sum = vec![0f64; n];
        let mut tokens = 0;
        for (fired, b) in &log[steps.start() - 1..*steps.end()] {
            sum.iter_mut().zip(fired).for_each(|(s, &f)| *s += f as f64);
            tokens += b;
        }
        sum.into_iter().map(|x| x / tokens as f64).collect()
    }

    #[test]
    fn the_dead_window_slides_by_sub_windows_and_equals_a_recount() {
        assert_eq!(
            [200, 20, 1000, 7, 13, 12, 1].map(sub_windows),
            [10, 10, 10, 7, 1, 6, 1]
        );
        let device = Device::flex();
        let (h, m, w, threshold) = (2, 6, 20, 0.02);
        let mut rng = Rng::new(3);
        let mut tracker = DeadFeatureTracker::new(h, m, w, threshold);
        assert_eq!(tracker.slide_steps(), 2);
        let mut resumed: Option<DeadFeatureTracker> = None;
        let mut log = Vec::new();
        for step in 1..=71 {
            let b = 5 + step % 4;
            let fired = firings(&mut rng, h * m, b);
            log.push((fired.clone(), b));
            let t = || Tensor::from_data(TensorData::new(fired.clone(), [h, m]), &device);
            tracker.observe(t(), b);
            // The window: the last `w` steps up to the last complete sub-window, or every
            // step so far before `w` steps.
            let want = if step < w {
                recount(&log, 1..=step)
            } else {
                let end = step - step % 2;
                recount(&log, end - w + 1..=end)
            };
            assert_eq!(tracker.density().unwrap(), want, "step {step}");
            let dead: Vec<usize> = (0..h)
                .map(|hd| {
                    want[hd * m..(hd + 1) * m]
                        .iter()
                        .filter(|&&d| d < threshold)
                        .count()
                })
                .collect();
            assert_eq!(tracker.dead(), (dead.iter().sum(), dead), "step {step}");
            // A tracker restored from a checkpoint mid-sub-window goes on identically.
            if let Some(r) = &mut resumed {
                r.observe(t(), b);
                assert_eq!(r.density(), tracker.density(), "resumed, step {step}");
            }
            if step == 33 {
                let mut r = DeadFeatureTracker::new(h, m, w, threshold);
                r.restore(tracker.state().unwrap(), &device).unwrap();
                resumed = Some(r);
            }
        }
        // A checkpoint from before the window slid: the last complete window's densities
        // stand until a new window is complete.
        let mut old = tracker.state().unwrap();
        old.completed = None;
        let mut r = DeadFeatureTracker::new(h, m, w, threshold);
        r.restore(old, &device).unwrap();
        assert_eq!(r.density(), tracker.density());
        // A state of another size is refused.
        let mut other = DeadFeatureTracker::new(h, m + 1, w, threshold);
        assert!(other.restore(tracker.state().unwrap(), &device).is_err());
    }

    #[test]
    fn histogram_bins_cover_dead_and_dense() {
        let h = density_histogram(&[0.0, 1e-3, 1.0], 10);
        assert_eq!(h.iter().map(|(_, c)| c).sum::<usize>(), 3);
        assert_eq!(h[0].1, 1);
        assert_eq!(h[9].1, 1);
    }
}
