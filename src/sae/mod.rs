//! SAE stage: the block-diagonal sparse autoencoder (one small SAE per attention head),
//! its losses, initialisation, input normalisation, folding and file formats.

pub mod io;
pub mod matching;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;

use crate::rng::Rng;

/// How features are made sparse, per head.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Architecture {
    /// ReLU with a decoder-norm-weighted L1 penalty (the seed's loss).
    Relu,
    /// Keep the `k` largest pre-activations of each head for each token.
    TopK { k: usize },
    /// Keep the `k * batch` largest pre-activations of each head across the batch.
    BatchTopK { k: usize },
    /// `pre * (pre > threshold)` with a learned threshold per feature and an L0 penalty,
    /// trained with straight-through gradients through a rectangle kernel of this width
    /// (Rajamanoharan et al. 2024, as SAELens does).
    JumpRelu { bandwidth: f64 },
}

impl Architecture {
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Relu => "standard",
            Architecture::TopK { .. } => "topk",
            Architecture::BatchTopK { .. } => "batchtopk",
            Architecture::JumpRelu { .. } => "jumprelu",
        }
    }
}

/// How inputs are scaled before the SAE sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Raw hook_z.
    None,
    /// One factor `sqrt(d_in) / E||z||` for all heads (the seed's, SAELens'
    /// `expected_average_only_in`).
    #[default]
    Global,
    /// One factor `sqrt(d_head) / E||z^h||` per head.
    PerHead,
}

/// Sizes and kind of a block-diagonal SAE. `n_heads = 1` over the concatenated hook_z is a
/// dense SAE.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SaeConfig {
    pub n_heads: usize,
    pub d_head: usize,
    pub features_per_head: usize,
    pub architecture: Architecture,
}

impl SaeConfig {
    /// Whether this is one dense block over the hook_z of `n_heads` (more than one) heads
    /// of `d_head`, side by side.
    pub fn is_dense_over(&self, n_heads: usize, d_head: usize) -> bool {
        crate::dashboard::format::dense_over(self.n_heads, self.d_head, n_heads, d_head)
    }

    pub fn d_in(&self) -> usize {
        self.n_heads * self.d_head
    }
    pub fn d_sae(&self) -> usize {
        self.n_heads * self.features_per_head
    }
    pub fn n_params(&self) -> usize {
        self.n_heads
            * (2 * self.d_head * self.features_per_head + self.features_per_head + self.d_head)
    }
}

/// A block-diagonal SAE: stacked per-head weights run as batched matmuls.
/// The dense block-diagonal matrix is never built.
#[derive(Clone)]
pub struct BlockDiagSae {
    pub config: SaeConfig,
    /// [H, d_head, m]
    pub w_enc: Tensor<3>,
    /// [H, m]
    pub b_enc: Tensor<2>,
    /// [H, m, d_head]
    pub w_dec: Tensor<3>,
    /// [H, d_head]
    pub b_dec: Tensor<2>,
    /// Input scale per head, `[H]` (x = scale * z); all ones when trained without
    /// normalisation or after [`BlockDiagSae::fold`].
    pub input_scale: Vec<f32>,
    /// JumpReLU only: log of the threshold per feature, [H, m].
    pub log_threshold: Option<Tensor<2>>,
    /// BatchTopK only, at inference: each feature's threshold, [H, m] (its head's running
    /// average of the batch thresholds during training, times the decoder norm once
    /// folded). A feature is then the ReLU of a pre-activation at or above it, whatever
    /// else is in the batch (Bussmann et al. 2024; SAELens does the same). `None` (an SAE
    /// saved before these were kept): the batch's own selection. Training never reads it.
    pub batch_threshold: Option<Tensor<2>>,
    /// Whether the SAE reads hook_z at a BOS token in the first position: the run's
    /// `--keep-bos`. Training drops BOS by default, and so the SAE is not applied there:
    /// the live analyses (Your text, effects, rankings) then list no features at BOS and
    /// leave its hook_z as it is. Saved as the origin's `keep_bos` in `sae_config.json`
    /// (false where not recorded); the app and the CLI take it from the run's config or the
    /// dashboard's header, the page from its manifest.
    pub reads_bos: bool,
}

/// What a forward pass gives.
pub struct SaeOutput {
    /// Pre-activations [H, B, m].
    pub pre: Tensor<3>,
    /// Feature activations [H, B, m].
    pub feats: Tensor<3>,
    /// Reconstruction [H, B, d_head].
    pub recon: Tensor<3>,
}

impl BlockDiagSae {
    /// April-update initialisation: decoder rows are random directions of norm 0.1,
    /// `W_enc = W_dec^T`, zero biases.
    /// JumpReLU thresholds start at `JUMPRELU_INIT_THRESHOLD` (SAELens' default).
    pub fn init(config: SaeConfig, rng: &mut Rng, device: &Device) -> Self {
        let (h, d, m) = (config.n_heads, config.d_head, config.features_per_head);
        let mut w_dec = vec![0f32; h * m * d];
        for row in w_dec.chunks_exact_mut(d) {
            for v in row.iter_mut() {
                *v = rng.normal() as f32;
            }
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            for v in row.iter_mut() {
                *v *= 0.1 / norm;
            }
        }
        // W_enc = W_dec^T per head, built as its own contiguous array: a transposed view
        // makes every encoder matmul on the CPU backend ~8x slower.
        let mut w_enc = vec![0f32; h * d * m];
        for head in 0..h {
            for i in 0..m {
                for j in 0..d {
                    w_enc[(head * d + j) * m + i] = w_dec[(head * m + i) * d + j];
                }
            }
        }
        let w_dec = Tensor::<3>::from_data(TensorData::new(w_dec, [h, m, d]), device);
        Self {
            w_enc: Tensor::from_data(TensorData::new(w_enc, [h, d, m]), device),
            b_enc: Tensor::zeros([h, m], device),
            w_dec,
            b_dec: Tensor::zeros([h, d], device),
            input_scale: vec![1.0; h],
            log_threshold: matches!(config.architecture, Architecture::JumpRelu { .. })
                .then(|| Tensor::full([h, m], JUMPRELU_INIT_THRESHOLD.ln(), device)),
            batch_threshold: None,
            reads_bos: false,
            config,
        }
    }

    pub fn device(&self) -> Device {
        self.w_enc.device()
    }

    /// Encodes a batch already scaled to the SAE's input space: `(pre-activations,
    /// activations)`, both [H, B, m].
    pub fn encode(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        self.encode_as(x, false)
    }

    /// [`BlockDiagSae::encode`]; `training` selects BatchTopK's features over the batch
    /// even when the SAE has inference thresholds.
    fn encode_as(&self, x: Tensor<3>, training: bool) -> (Tensor<3>, Tensor<3>) {
        let pre = x.matmul(self.w_enc.clone()) + self.b_enc.clone().unsqueeze_dim::<3>(1);
        let feats = match (
            self.config.architecture,
            &self.log_threshold,
            &self.batch_threshold,
        ) {
            (Architecture::JumpRelu { bandwidth }, Some(lt), _) => {
                jumprelu(pre.clone(), lt.clone(), bandwidth).0
            }
            (Architecture::BatchTopK { .. }, _, Some(threshold)) if !training => {
                let [h, b, m] = pre.dims();
                let cut = threshold.clone().unsqueeze_dim::<3>(1).expand([h, b, m]);
                relu_at_or_above(pre.clone(), cut)
            }
            (arch, _, _) => activate(pre.clone(), arch),
        };
        (pre, feats)
    }

    /// Encodes and decodes a batch already scaled to the SAE's input space.
    ///
    /// # Shapes
    /// `x`: [H, B, d_head]
    pub fn forward(&self, x: Tensor<3>) -> SaeOutput {
        self.forward_as(x, false)
    }

    /// [`BlockDiagSae::forward`], with [`BlockDiagSae::encode_as`]'s `training`.
    fn forward_as(&self, x: Tensor<3>, training: bool) -> SaeOutput {
        let (pre, feats) = self.encode_as(x, training);
        let recon =
            feats.clone().matmul(self.w_dec.clone()) + self.b_dec.clone().unsqueeze_dim::<3>(1);
        SaeOutput { pre, feats, recon }
    }

    /// A copy whose trained parameters track gradients (burn's autodiff), for a loss to
    /// differentiate; without inference thresholds, which training never reads.
    pub fn tracked(&self) -> Self {
        Self {
            w_enc: self.w_enc.clone().autodiff().require_grad(),
            b_enc: self.b_enc.clone().autodiff().require_grad(),
            w_dec: self.w_dec.clone().autodiff().require_grad(),
            b_dec: self.b_dec.clone().autodiff().require_grad(),
            log_threshold: self
                .log_threshold
                .clone()
                .map(|t| t.autodiff().require_grad()),
            batch_threshold: None,
            ..self.clone()
        }
    }

    /// `||W_dec[h][i,:]||`, [H, m].
    pub fn decoder_norms(&self) -> Tensor<2> {
        self.w_dec
            .clone()
            .square()
            .sum_dim(2)
            .sqrt()
            .squeeze_dim::<2>(2)
    }

    /// Loss terms for a batch `x` [H, B, d_head] in the SAE's input space.
    /// `mse` = mean over batch of the summed squared error; `sparsity` = mean over batch of
    /// `sum_h sum_i f_i ||W_dec[h][i]||` (zero weight for TopK/BatchTopK).
    pub fn loss(&self, x: Tensor<3>, l1_coefficient: f64) -> (SaeOutput, LossTerms) {
        let batch = x.dims()[1] as f64;
        // Training selects over the batch (BatchTopK's inference thresholds are not used).
        let out = self.forward_as(x.clone(), true);
        let mse = (out.recon.clone() - x).square().sum() / batch;
        // sum_{h,b,i} f[h,b,i] n[h,i] = sum_{h,i} n[h,i] sum_b f[h,b,i]: summing over the batch
        // first saves a full pass over the [H, B, m] activations (and its backward).
        let [h, _, m] = out.feats.dims();
        let sparsity =
            (out.feats.clone().sum_dim(1).reshape([h, m]) * self.decoder_norms()).sum() / batch;
        let (sparsity, total) = match (self.config.architecture, &self.log_threshold) {
            (Architecture::Relu, _) => {
                let total = mse.clone() + sparsity.clone() * l1_coefficient;
                (sparsity, total)
            }
            // JumpReLU: the penalty is L0 (mean over the batch), with straight-through
            // gradients for the thresholds.
            (Architecture::JumpRelu { bandwidth }, Some(lt)) => {
                let l0 = jumprelu(out.pre.clone(), lt.clone(), bandwidth).1.sum() / batch;
                let total = mse.clone() + l0.clone() * l1_coefficient;
                (l0, total)
            }
            _ => (sparsity, mse.clone()),
        };
        (
            out,
            LossTerms {
                total,
                mse,
                sparsity,
            },
        )
    }

    /// The AuxK term (`crate::train::fused_cpu::AuxK`) of a batch `x` [H, B, d] and its
    /// forward `out`, with `dead` the dead features [H * m]: mean over the batch of
    /// `sum_h scale_h ||e_hat^h - (x^h - x_hat^h)||^2`, where `e_hat` is the ReLU of each
    /// token's `k` largest dead pre-activations through the decoder (no bias) and
    /// `scale_h = min(1, dead_h / k)`. No gradient flows through `x - x_hat`. Shape `[1]`.
    pub fn aux_k_loss(&self, x: Tensor<3>, out: &SaeOutput, dead: &[bool], k: usize) -> Tensor<1> {
        let [h, b, m] = out.pre.dims();
        let device = out.pre.device();
        assert_eq!(dead.len(), h * m, "the dead mask must be [H * m]");
        let per_head: Vec<usize> = dead
            .chunks_exact(m)
            .map(|c| c.iter().filter(|&&d| d).count())
            .collect();
        let k_max = k.min(per_head.iter().copied().max().unwrap_or(0));
        if k_max == 0 {
            return Tensor::zeros([1], &device);
        }
        let error = (x - out.recon.clone()).detach();
        // Live features sink far below any pre-activation, so a head with fewer than
        // `k_max` dead features selects all of them (and live ones, which ReLU zeroes).
        let live = Tensor::<2, Bool>::from_data(
            TensorData::new(dead.iter().map(|&d| !d).collect::<Vec<bool>>(), [h, m]),
            &device,
        )
        .unsqueeze_dim::<3>(1)
        .expand([h, b, m]);
        let masked = out.pre.clone().mask_fill(live, -1e30);
        let kth = kth_largest(masked.clone().detach(), k_max, 2);
        let acts = relu_at_or_above(masked, kth.expand([h, b, m]));
        let e_hat = acts.matmul(self.w_dec.clone());
        let per_head_sq = (e_hat - error).square().sum_dim(2).sum_dim(1).reshape([h]);
        let scale: Vec<f32> = per_head
            .iter()
            .map(|&n| (n as f32 / k as f32).min(1.0))
            .collect();
        let scale = Tensor::<1>::from_data(TensorData::new(scale, [h]), &device);
        (per_head_sq * scale).sum() / b as f64
    }

    /// Folds decoder norms into the encoder (unit-norm decoder rows, same reconstructions)
    /// and the input scale into the weights (the SAE then takes raw hook_z).
    pub fn fold(&self) -> Self {
        let h = self.config.n_heads;
        let device = self.device();
        let norms = self.decoder_norms().clamp_min(1e-12); // [H, m]
        let scale = Tensor::<1>::from_data(TensorData::new(self.input_scale.clone(), [h]), &device);
        let w_enc = self.w_enc.clone()
            * norms.clone().unsqueeze_dim::<3>(1)
            * scale.clone().reshape([h, 1, 1]);
        let b_enc = self.b_enc.clone() * norms.clone();
        let w_dec =
            self.w_dec.clone() / norms.unsqueeze_dim::<3>(2) / scale.clone().reshape([h, 1, 1]);
        let b_dec = self.b_dec.clone() / scale.reshape([h, 1]);
        // Pre-activations grow by n_i, and so do the thresholds.
        let log_threshold = self
            .log_threshold
            .clone()
            .map(|lt| lt + self.decoder_norms().clamp_min(1e-12).log());
        let batch_threshold = self
            .batch_threshold
            .clone()
            .map(|t| t * self.decoder_norms().clamp_min(1e-12));
        Self {
            config: self.config.clone(),
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            input_scale: vec![1.0; h],
            log_threshold,
            batch_threshold,
            reads_bos: self.reads_bos,
        }
    }

    /// Scales raw hook_z `[B, H, d_head]` into the SAE's input space, `[H, B, d_head]`.
    pub fn scale_input(&self, z: Tensor<3>) -> Tensor<3> {
        let h = self.config.n_heads;
        let scale =
            Tensor::<1>::from_data(TensorData::new(self.input_scale.clone(), [h]), &z.device());
        z.swap_dims(0, 1) * scale.reshape([h, 1, 1])
    }

    /// Reconstructs raw hook_z `[B, H, d_head]` (for splicing into the LM).
    pub fn reconstruct_raw(&self, z: Tensor<3>) -> Tensor<3> {
        let h = self.config.n_heads;
        let scale =
            Tensor::<1>::from_data(TensorData::new(self.input_scale.clone(), [h]), &z.device());
        let out = self.forward(self.scale_input(z));
        (out.recon / scale.reshape([h, 1, 1])).swap_dims(0, 1)
    }
}

/// Initial JumpReLU threshold (SAELens' `jumprelu_init_threshold`).
pub const JUMPRELU_INIT_THRESHOLD: f64 = 0.001;

/// JumpReLU with straight-through gradients (rectangle kernel `K(u) = 1[|u| < 1/2]`,
/// `eps = bandwidth`). Returns the features `pre * H(pre - theta)` and the step
/// `H(pre - theta)` (for L0), both [H, B, m], with gradients
/// `d feats / d pre = H`, `d feats / d theta = -(theta / eps) K((pre - theta) / eps)`,
/// `d step / d pre = 0`, `d step / d theta = -(1 / eps) K((pre - theta) / eps)`,
/// and `theta = exp(log_threshold)` [H, m].
pub fn jumprelu(
    pre: Tensor<3>,
    log_threshold: Tensor<2>,
    bandwidth: f64,
) -> (Tensor<3>, Tensor<3>) {
    let theta = log_threshold.exp().unsqueeze_dim::<3>(1); // [H, 1, m]
    let [h, b, m] = pre.dims();
    let pre_c = pre.clone().detach();
    let theta_c = theta.clone().detach().expand([h, b, m]);
    let gate = pre_c.clone().greater(theta_c.clone()).float();
    let kernel = ((pre_c - theta_c.clone()) / bandwidth)
        .abs()
        .lower_elem(0.5)
        .float();
    let theta = theta.expand([h, b, m]);
    // `s - s.detach()` is zero in value and carries the gradient of `s`.
    let ste = |s: Tensor<3>| s.clone() - s.detach();
    let feats =
        pre * gate.clone() + ste(theta.clone() * (theta_c * kernel.clone()).neg() / bandwidth);
    let step = gate + ste(theta * kernel.neg() / bandwidth);
    (feats, step)
}

/// The three loss tensors of a batch (scalars, shape `[1]`).
pub struct LossTerms {
    pub total: Tensor<1>,
    pub mse: Tensor<1>,
    pub sparsity: Tensor<1>,
}

/// The `k`-th largest value of `t` along `dim` (`0 < k <=` its size there), that
/// dimension kept with size 1.
///
/// burn 0.22's `topk` on wgpu (cubek-reduce's kernel, which keeps `k` values per
/// invocation in workgroup memory) returns wrong values for larger `k`: on lavapipe, `k`
/// = 128 of 960 values gave `-f32::MAX`, and BatchTopK's `k x B` is far larger. So on any
/// device but the CPU backend a `k` above 8 sorts instead (`tests/sae.rs` checks both
/// against the CPU backend).
pub fn kth_largest<const D: usize>(t: Tensor<D>, k: usize, dim: usize) -> Tensor<D> {
    if k <= 8 || t.device() == Device::flex() {
        t.topk(k, dim).narrow(dim, k - 1, 1)
    } else {
        t.sort_descending(dim).narrow(dim, k - 1, 1)
    }
}

/// ReLU of the values of `pre` at or above `cut` (same shape), zero elsewhere: every
/// threshold activation (TopK, BatchTopK, BatchTopK's inference thresholds, AuxK).
fn relu_at_or_above(pre: Tensor<3>, cut: Tensor<3>) -> Tensor<3> {
    let keep = pre.clone().greater_equal(cut);
    relu(pre.mask_fill(keep.bool_not(), 0.0))
}

/// Applies the architecture's activation to pre-activations [H, B, m].
pub fn activate(pre: Tensor<3>, arch: Architecture) -> Tensor<3> {
    match arch {
        Architecture::Relu => relu(pre),
        Architecture::TopK { k } => {
            let [h, b, m] = pre.dims();
            let k = k.min(m);
            // k-th largest per (head, token); keep values at or above it.
            let kth = kth_largest(pre.clone(), k, 2);
            relu_at_or_above(pre, kth.expand([h, b, m]))
        }
        // Without its thresholds (see `BlockDiagSae::forward`), JumpReLU at zero threshold.
        Architecture::JumpRelu { .. } => relu(pre),
        Architecture::BatchTopK { k } => {
            let [h, b, m] = pre.dims();
            let n = (k * b).min(b * m);
            let flat = pre.clone().reshape([h, b * m]);
            let kth = kth_largest(flat, n, 1).reshape([h, 1, 1]);
            relu_at_or_above(pre, kth.expand([h, b, m]))
        }
    }
}
