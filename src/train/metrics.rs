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
/// summed squared error per head [H] and squared reconstruction norms [H, B].
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

/// Counts feature firings over windows of steps; features whose firing density in the last
/// complete window is below the threshold are dead.
pub struct DeadFeatureTracker {
    n_heads: usize,
    features_per_head: usize,
    window_steps: usize,
    threshold: f64,
    /// Firing counts in the current window, [H, m] on the device.
    counts: Option<Tensor<2>>,
    steps_in_window: usize,
    tokens_in_window: u64,
    /// Density of each feature over the last complete window.
    pub last_density: Option<Vec<f64>>,
}

/// A [`DeadFeatureTracker`]'s state, saved in checkpoints so that a resumed run counts
/// dead features (and writes `sparsity.safetensors`) as an uninterrupted one would.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeadWindowState {
    /// Firing counts in the current window, `[H * m]`.
    pub counts: Option<Vec<f32>>,
    pub steps_in_window: usize,
    pub tokens_in_window: u64,
    pub last_density: Option<Vec<f64>>,
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
        })
    }

    /// Restores a checkpointed state (checked against this tracker's size).
    pub fn restore(&mut self, state: DeadWindowState, device: &Device) -> anyhow::Result<()> {
        let n = self.n_heads * self.features_per_head;
        let ok = |v: Option<usize>| v.is_none_or(|len| len == n);
        anyhow::ensure!(
            ok(state.counts.as_ref().map(Vec::len))
                && ok(state.last_density.as_ref().map(Vec::len)),
            "the checkpoint's dead-feature window is not for {} features",
            n
        );
        self.counts = state.counts.map(|c| {
            Tensor::from_data(
                burn::tensor::TensorData::new(c, [self.n_heads, self.features_per_head]),
                device,
            )
        });
        self.steps_in_window = state.steps_in_window;
        self.tokens_in_window = state.tokens_in_window;
        self.last_density = state.last_density;
        Ok(())
    }

    pub fn new(
        n_heads: usize,
        features_per_head: usize,
        window_steps: usize,
        threshold: f64,
    ) -> Self {
        Self {
            n_heads,
            features_per_head,
            window_steps: window_steps.max(1),
            threshold,
            counts: None,
            steps_in_window: 0,
            tokens_in_window: 0,
            last_density: None,
        }
    }

    /// Adds a batch's firings per feature [H, m] over `b` tokens.
    pub fn observe(&mut self, fired: Tensor<2>, b: usize) {
        self.counts = Some(match self.counts.take() {
            Some(c) => c + fired,
            None => fired,
        });
        self.steps_in_window += 1;
        self.tokens_in_window += b as u64;
        if self.steps_in_window >= self.window_steps {
            self.close_window();
        }
    }

    fn close_window(&mut self) {
        if let Some(c) = self.counts.take() {
            let tokens = self.tokens_in_window.max(1) as f64;
            let counts = host(c.reshape([self.n_heads * self.features_per_head]));
            self.last_density = Some(counts.into_iter().map(|n| n / tokens).collect());
        }
        self.steps_in_window = 0;
        self.tokens_in_window = 0;
    }

    /// Densities to judge by: the last complete window, or the current partial one.
    pub fn density(&self) -> Option<Vec<f64>> {
        if let Some(d) = &self.last_density {
            return Some(d.clone());
        }
        let c = self.counts.clone()?;
        let tokens = self.tokens_in_window.max(1) as f64;
        Some(
            host(c.reshape([self.n_heads * self.features_per_head]))
                .into_iter()
                .map(|n| n / tokens)
                .collect(),
        )
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

    #[test]
    fn histogram_bins_cover_dead_and_dense() {
        let h = density_histogram(&[0.0, 1e-3, 1.0], 10);
        assert_eq!(h.iter().map(|(_, c)| c).sum::<usize>(), 3);
        assert_eq!(h[0].1, 1);
        assert_eq!(h[9].1, 1);
    }
}
