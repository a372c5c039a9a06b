//! The SAE training step on wgpu, in WGSL (`shaders/`), without autodiff: the same
//! algorithm as [`super::fused_cpu`], as a fixed sequence of kernels on burn's device.
//!
//! The launches, in order (`[ ]`: only for some activations or when the sparse path is
//! available; a dense or sparse kernel on a step of the other path returns at once):
//!
//! ```text
//! norms       n_i = ||W_dec[i]||
//! mm_pre      P = X W_enc + b_enc                     [H, B, M], kept for the backward
//! [select]    TopK: each row's threshold, exact radix selection (one workgroup a row)
//! [select_count, select_pick] x 4   BatchTopK: each head's threshold, the same selection,
//!             its digit counts over many workgroups per head, then the digit
//! fstats      firings, sum f_i and list sizes per feature over each chunk of CHUNK rows
//!             (F = act(P) formed when read)
//! fstats_total the same over the batch (the chunks in order); each chunk's list offset
//! [scan]      sparse: list offsets, and the path flag
//! [fill]      sparse: each feature's list of (token, f), in token order (per chunk of rows)
//! [dec_sparse] sparse: R = F W_dec + b_dec from each token's firing features
//! mm_dec      dense: R = F W_dec + b_dec
//! rows        dR = 2 (R - X) / B in place; squared error and |R|^2 per token
//! colsum, ksum  db_dec = sum_b dR (each chunk's sums, then the chunks' total)
//! mm_gdec     dense: dW_dec = F^T dR, as partial products over ranges of the batch
//! ksum        dense: their total (+ the L1 term through the norms; sum_gdec.wgsl)
//! mm_dp       dense: dP = (dR W_dec^T + l1 n / B) * (F > 0), [H, B, M]; JumpReLU's shares
//! colsum, ksum  dense: db_enc = sum_b dP   [the same two: JumpReLU, d log theta]
//! mm_genc, ksum dense: dW_enc = X^T dP, partial products and their total
//! [feat_grad] sparse: per feature, dW_dec, dP, dW_enc, db_enc, d log theta
//! loss        per-head squared error, [mse, sparsity, total, path]
//! [aux_mask, select, mm_dec, aux_rows, mm_gdec, ksum, mm_dp, colsum, ksum, mm_genc, ksum,
//!  add x 3, aux_loss]
//!             AuxK (TopK, BatchTopK): live features' P sunk in place, each row's k largest
//!             dead ones reconstruct the error (no bias), the difference's gradients through
//!             the same matmuls (into dP's buffer), added to the loss's; the term to the loss
//! sumsq x 4-5 partial sums of squares of each gradient (clipping's global norm)
//! adam x 4-5  clip and Adam, one launch per parameter array
//! ```
//!
//! Where under `sparse_below` of `H x B x m` fire, the sparse path replaces the decoder and
//! backward matmuls; scan.wgsl decides from the batch, so the choice is made on the device
//! with no read-back.
//!
//! A ReLU step is 24 launches on the dense path alone (25 for TopK, 32 for BatchTopK, 28
//! for JumpReLU), 28 where the sparse path is available. Every sum is computed by one
//! invocation or one workgroup tree in a fixed order, so a batch gives the same result
//! every time.
//!
//! Sums over the batch are spread over many workgroups: the column sums and feature
//! statistics by chunks of [`CHUNK`] rows (the same additions in the same order as one
//! invocation's walk), the products over the batch (dW_dec, dW_enc, whose `m x d_head`
//! outputs a head are few) by ranges of rows ([`Dims::k_split`]). On an H200 that took a
//! fresh ReLU step at the seed's shape from 13.1 to 8.4 ms (scripts/gpu-check.sh; README).
//!
//! The step is a burn backend extension ([`WgslStep`]) so that it runs in order with burn's
//! own (fused, lazy) work on the same device.

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate};
use burn::backend::{Backend, ExtensionType, backend_extension};
use burn::cubecl::prelude::KernelId;
use burn::cubecl::server::{Handle, KernelArguments};
use burn::cubecl::{CubeCount, CubeDim};
use burn::tensor::{DType, Shape};

use super::fused_cpu::Activation;

/// The kernels' sources, embedded at compile time.
pub mod sources {
    pub const ACT: &str = include_str!("../../shaders/act.wgsl");
    pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
    pub const MM_PRE: &str = include_str!("../../shaders/mm_pre.wgsl");
    pub const MM_DEC: &str = include_str!("../../shaders/mm_dec.wgsl");
    pub const MM_GDEC: &str = include_str!("../../shaders/mm_gdec.wgsl");
    pub const MM_DP: &str = include_str!("../../shaders/mm_dp.wgsl");
    pub const MM_GENC: &str = include_str!("../../shaders/mm_genc.wgsl");
    pub const NORMS: &str = include_str!("../../shaders/norms.wgsl");
    pub const FSTATS: &str = include_str!("../../shaders/fstats.wgsl");
    pub const ROWS: &str = include_str!("../../shaders/rows.wgsl");
    pub const COLSUM: &str = include_str!("../../shaders/colsum.wgsl");
    pub const FSTATS_TOTAL: &str = include_str!("../../shaders/fstats_total.wgsl");
    pub const KSUM: &str = include_str!("../../shaders/ksum.wgsl");
    pub const SUM_GDEC: &str = include_str!("../../shaders/sum_gdec.wgsl");
    pub const SUM_PLAIN: &str = include_str!("../../shaders/sum_plain.wgsl");
    pub const SELECT: &str = include_str!("../../shaders/select.wgsl");
    pub const SELECT_COUNT: &str = include_str!("../../shaders/select_count.wgsl");
    pub const SELECT_PICK: &str = include_str!("../../shaders/select_pick.wgsl");
    pub const KEYS: &str = include_str!("../../shaders/keys.wgsl");
    pub const THRESHOLD: &str = include_str!("../../shaders/threshold.wgsl");
    pub const LOSS: &str = include_str!("../../shaders/loss.wgsl");
    pub const SUMSQ: &str = include_str!("../../shaders/sumsq.wgsl");
    pub const ADAM: &str = include_str!("../../shaders/adam.wgsl");
    pub const NEAR: &str = include_str!("../../shaders/near.wgsl");
    pub const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
    pub const SCAN: &str = include_str!("../../shaders/scan.wgsl");
    pub const FILL: &str = include_str!("../../shaders/fill.wgsl");
    pub const DEC_SPARSE: &str = include_str!("../../shaders/dec_sparse.wgsl");
    pub const FEAT_GRAD: &str = include_str!("../../shaders/feat_grad.wgsl");
    pub const AUX_MASK: &str = include_str!("../../shaders/aux_mask.wgsl");
    pub const AUX_ROWS: &str = include_str!("../../shaders/aux_rows.wgsl");
    pub const AUX_LOSS: &str = include_str!("../../shaders/aux_loss.wgsl");
    pub const ADD: &str = include_str!("../../shaders/add.wgsl");
    /// The LM's products (src/lm/wgsl_linear.rs).
    pub const MM_LINEAR: &str = include_str!("../../shaders/mm_linear.wgsl");
}

/// What a step needs besides tensors: the activation and the optimizer's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSpec {
    pub act: Activation,
    pub lr: f64,
    pub betas: (f64, f64),
    /// Adam's step number, from 1.
    pub t: usize,
    /// Global gradient-norm clip (`<= 0`: none).
    pub clip: f64,
    /// The sparse path is taken when the batch's firings (and JumpReLU's near-threshold
    /// entries) are under this fraction of `H * B * m` (0: never; 1: always).
    pub sparse_below: f64,
    /// The encoder's product `X W_enc` through burn's own (autotuned) matmul instead of
    /// mm_pre.wgsl, for comparing the two on a GPU. Off by default: burn may pick a matmul
    /// that does not sum in a fixed order.
    pub burn_encoder: bool,
    /// BatchTopK's thresholds from one workgroup per head (select.wgsl, the earlier
    /// kernel) instead of four rounds of counts over many (select_count.wgsl and
    /// select_pick.wgsl), for comparing the two on a GPU. Both are exact.
    pub one_group_select: bool,
    /// The matmuls in wide tiles ([`Dims::wide_tiles`]; training's default), or the earlier
    /// 64 x 64 ones, for comparing the two on a GPU.
    pub wide_tiles: bool,
    /// AuxK's `k` (dead features per token and head) when the step has an AuxK term; its
    /// dead features, scales and coefficient come as tensors ([`run_step`]).
    pub aux_k: Option<usize>,
}

/// The SAE's parameters and Adam moments on the device. Each `mv_*` holds that parameter's
/// first moment followed by its second, flattened (`[2 * numel]`). Without JumpReLU the
/// two `log_threshold` tensors are placeholders of one element, never read.
#[derive(ExtensionType)]
#[extension_type(fusion)]
pub struct StepState<B: Backend> {
    pub w_enc: FloatTensor<B>,
    pub b_enc: FloatTensor<B>,
    pub w_dec: FloatTensor<B>,
    pub b_dec: FloatTensor<B>,
    pub log_threshold: FloatTensor<B>,
    pub mv_w_enc: FloatTensor<B>,
    pub mv_b_enc: FloatTensor<B>,
    pub mv_w_dec: FloatTensor<B>,
    pub mv_b_dec: FloatTensor<B>,
    pub mv_log_threshold: FloatTensor<B>,
}

/// A step's result: the updated state and the batch sums the metrics are made of.
#[derive(ExtensionType)]
#[extension_type(fusion)]
pub struct StepResult<B: Backend> {
    #[extension_type]
    pub state: StepState<B>,
    /// Firings per feature, [H, M].
    pub fired: FloatTensor<B>,
    /// Summed squared error per head, `[H]`.
    pub resid_sq: FloatTensor<B>,
    /// Squared norm of each token's reconstruction per head, [H, B].
    pub recon_sq: FloatTensor<B>,
    /// `[mse, sparsity, total]`, as [`super::fused_cpu::BatchSums`], then the path the
    /// step took (1: sparse, 0: dense).
    pub terms: FloatTensor<B>,
    /// The AuxK term without its coefficient, `[1]` (0 without AuxK).
    pub aux: FloatTensor<B>,
    /// TopK and BatchTopK: each token's threshold, [H, B] (BatchTopK: the head's, in
    /// every slot); unset otherwise.
    pub thresholds: FloatTensor<B>,
}

/// The step as a backend operation: CubeCL runtimes (wgpu), directly or under fusion.
#[backend_extension(Cube, Fusion)]
pub trait WgslStep: Backend {
    #[fusion(meta = step_meta)]
    fn wgsl_sae_step(
        x: FloatTensor<Self>,
        #[extension_type] state: StepState<Self>,
        dead: FloatTensor<Self>,
        aux_factors: FloatTensor<Self>,
        spec: StepSpec,
    ) -> StepResult<Self>;
}

fn step_meta(
    x: &TensorSpec,
    state: &StepStateMetadata,
    _dead: &TensorSpec,
    _aux_factors: &TensorSpec,
    _spec: &StepSpec,
) -> StepResultMetadata {
    let (h, b) = (x.shape[0], x.shape[1]);
    let m = state.w_enc.shape[2];
    let spec = |dims: &[usize]| TensorSpec::new(Shape::from(dims.to_vec()), DType::F32);
    StepResultMetadata {
        state: state.clone(),
        fired: spec(&[h, m]),
        resid_sq: spec(&[h]),
        recon_sq: spec(&[h, b]),
        terms: spec(&[4]),
        aux: spec(&[1]),
        thresholds: spec(&[h, b]),
    }
}

impl WgslStep for CubeBackend {
    fn wgsl_sae_step(
        x: FloatTensor<Self>,
        state: StepState<Self>,
        dead: FloatTensor<Self>,
        aux_factors: FloatTensor<Self>,
        spec: StepSpec,
    ) -> StepResult<Self> {
        step(x, state, dead, aux_factors, spec)
    }
}

/// Whether the WGSL step can run a batch of this shape: indices are 32-bit, a TopK launch
/// has one workgroup per token along one grid axis, and a gradient's total (ksum.wgsl) one
/// invocation per `d_head x m` output of a head along one.
pub fn check_shape(n_heads: usize, batch: usize, d_head: usize, m: usize) -> Result<(), String> {
    let largest = n_heads * batch * m.max(d_head);
    if largest >= 1 << 29 {
        return Err(format!(
            "the WGSL step indexes [H, B, m] = [{n_heads}, {batch}, {m}] with 32-bit offsets; \
             use a batch under {}",
            (1usize << 29) / (n_heads * m.max(d_head)).max(1)
        ));
    }
    if batch > 65_535 {
        return Err(format!(
            "the WGSL step takes batches of at most 65535 tokens, not {batch}"
        ));
    }
    if d_head * m > 65_535 * 256 {
        return Err(format!(
            "the WGSL step takes at most {} features per head at d_head {d_head}, not {m}",
            65_535 * 256 / d_head.max(1)
        ));
    }
    Ok(())
}

/// Indices into the step's scalar buffer (`SC_*` in the shaders).
const SCALARS: [&str; 9] = [
    "SC_COEF",
    "SC_HALF_BAND",
    "SC_INV_EPS",
    "SC_LR",
    "SC_B1",
    "SC_B2",
    "SC_BC1",
    "SC_BC2",
    "SC_CLIP",
];

/// A kernel: its complete WGSL (the generated constants, then the shader files).
pub struct Wgsl {
    source: String,
}

impl Wgsl {
    /// A kernel of this complete WGSL text.
    pub(crate) fn new(source: String) -> Self {
        Self { source }
    }

    /// The complete WGSL text.
    pub fn text(&self) -> &str {
        &self.source
    }
}

impl KernelSource for Wgsl {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.source.clone())
    }

    fn id(&self) -> KernelId {
        // The source is the kernel: the constants make each shape its own pipeline.
        KernelId::new::<Self>().info(self.source.clone())
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// The shape and activation every kernel of a step is specialised to, and whether the
/// step can take the sparse path (with room for `cap` list entries).
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub h: usize,
    pub b: usize,
    pub d: usize,
    pub m: usize,
    pub act: Activation,
    pub sparse: bool,
    pub cap: usize,
    /// The matmuls' tiles: 128 wide along the batch and features (8 outputs an invocation
    /// each way) rather than 64 (4), and 64 along `d_head` either way: a quarter of the
    /// workgroups (half where one side is `d_head`), each invocation reading half as many
    /// operands from workgroup memory per output (three quarters as many).
    pub wide_tiles: bool,
}

/// Rows of the batch per chunk of the column sums and feature statistics: each chunk is
/// summed by one invocation in row order, then the chunks in order, so that every column is
/// one sum in a fixed order and the batch is read by many workgroups at once.
pub const CHUNK: usize = 64;

/// The path flag's functions in a kernel that has no sparse path to follow: the dense path,
/// never skipped.
pub(crate) const NO_PATH_FLAG: &str = "fn path_taken() -> u32 {\n    return 0u;\n}\n\
     fn skip_dense(li: u32) -> bool {\n    return false;\n}\n";

/// Storage buffers the sparse path binds at once (feat_grad.wgsl); adapters with fewer
/// per shader stage take the dense path only (WebGPU's default is 8, native APIs more).
pub const SPARSE_BINDINGS: u32 = 13;

/// The step's kernels. A kernel's WGSL, workgroup size and bindings follow from its kind
/// and the step's [`Dims`] ([`Dims::kernel`]), for the step's launches and their
/// validation alike.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    Norms,
    MmPre,
    /// TopK's thresholds (one workgroup per token), and BatchTopK's with
    /// [`StepSpec::one_group_select`] (one workgroup per head).
    Select,
    /// BatchTopK: one round's digit counts, over [`Dims::select_groups`] workgroups per head.
    SelectCount,
    /// BatchTopK: one round's digit per head; after the fourth, the thresholds.
    SelectPick,
    /// Per-feature statistics of each chunk of [`CHUNK`] rows.
    Fstats,
    /// Their totals over the batch.
    FstatsTotal,
    Scan,
    Fill,
    DecSparse,
    MmDec,
    Rows,
    /// Column sums of each chunk of [`CHUNK`] rows of an `[H, B, n]` buffer; `dense`: a
    /// dense-path sum, skipped on sparse steps.
    Colsum {
        n: usize,
        dense: bool,
    },
    /// The chunks' column sums added: the column sums over the batch.
    ColsumTotal {
        n: usize,
        dense: bool,
    },
    /// dW_dec's partial products over ranges of the batch ([`Dims::k_split`]).
    MmGdec,
    MmDp,
    /// dW_enc's partial products over ranges of the batch.
    MmGenc,
    /// dW_dec's total over its partial products, and the L1 term.
    SumGdec,
    /// dW_enc's total over its partial products.
    SumGenc,
    FeatGrad,
    Loss,
    /// Partial sums of squares of an array of `n` values, written from partial `off` on.
    Sumsq {
        n: usize,
        off: usize,
    },
    /// Clipping and Adam over an array of `n` values, with `partials` partial sums in all.
    Adam {
        n: usize,
        partials: usize,
    },
    /// AuxK: the live features' pre-activations sunk, in place.
    AuxMask,
    /// AuxK: each token's difference from the error, its scaled square and gradient.
    AuxRows,
    /// AuxK: the term, added to the loss.
    AuxLoss,
    /// `acc += v` over `n` values.
    Add {
        n: usize,
    },
}

/// How a kernel is made and launched.
struct Recipe {
    /// Shader files, the kernel's own first.
    parts: &'static [&'static str],
    /// Constants besides the step's.
    extra: Vec<(&'static str, usize)>,
    workgroup: (u32, u32),
    /// A matmul's block of outputs per invocation (rows, columns; matmul.wgsl).
    tile: Option<(usize, usize)>,
    /// For a kernel that follows the step's path (the dense kernels, and the loss, which
    /// reports it): its number of buffers, where the path flag is bound after them.
    flag: Option<usize>,
}

impl Dims {
    fn act_code(&self) -> u32 {
        match self.act {
            Activation::Relu { .. } => 0,
            Activation::TopK { .. } => 1,
            Activation::BatchTopK { .. } => 2,
            Activation::JumpRelu { .. } => 3,
        }
    }

    /// A matmul kernel's outputs per invocation (rows, columns): 4 along `d_head`, and 4
    /// or (with [`Dims::wide_tiles`]) 8 along the batch and the features.
    pub fn tile(&self, kernel: Kernel) -> (usize, usize) {
        let (d_side, side) = (4, if self.wide_tiles { 8 } else { 4 });
        match kernel {
            Kernel::MmPre | Kernel::MmDp => (side, side),
            Kernel::MmDec | Kernel::MmGdec => (side, d_side),
            Kernel::MmGenc => (d_side, side),
            other => unreachable!("{other:?} is not a matmul"),
        }
    }

    /// A matmul kernel's workgroups for a `rows x cols` product per head (and per range
    /// of the batch, for a split product).
    fn matmul_groups(&self, kernel: Kernel, rows: usize, cols: usize) -> (u32, u32, u32) {
        let (rm, rn) = self.tile(kernel);
        let splits = self.k_split(kernel).0;
        (
            groups(cols, 16 * rn),
            groups(rows, 16 * rm),
            (self.h * splits) as u32,
        )
    }

    /// A product's sum (K) in ranges: (ranges, K per range). The products over the batch
    /// (dW_dec, dW_enc, and their totals' kernels) have few outputs (`m x d_head` a head)
    /// and a long sum, so they are split into partial products over ranges of the batch
    /// (each its own workgroups), added after in range order: up to 16 ranges of at least
    /// 64 rows, a multiple of 16. The others are one range of their whole K.
    pub fn k_split(&self, kernel: Kernel) -> (usize, usize) {
        match kernel {
            Kernel::MmGdec | Kernel::MmGenc | Kernel::SumGdec | Kernel::SumGenc => {
                let rows = self.b.div_ceil(16).max(64).next_multiple_of(16);
                (self.b.div_ceil(rows), rows)
            }
            Kernel::MmPre | Kernel::MmDp => (1, self.d),
            Kernel::MmDec => (1, self.m),
            other => unreachable!("{other:?} is not a product"),
        }
    }

    /// Chunks of [`CHUNK`] rows in the batch (the column sums' and statistics' partials).
    fn chunks(&self) -> usize {
        self.b.div_ceil(CHUNK)
    }

    /// Workgroups per head that count BatchTopK's digits: one per 1024 pre-activations
    /// of the head, at most 512.
    pub fn select_groups(&self) -> u32 {
        (self.b * self.m).div_ceil(1024).clamp(1, 512) as u32
    }

    /// A threshold selection's constants: the NTH largest of each segment of SEG
    /// pre-activations (a token's row for TopK, a head's batch for BatchTopK), written to
    /// REP slots (the segment's tokens).
    fn selection(&self) -> Vec<(&'static str, usize)> {
        let (b, m) = (self.b, self.m);
        match self.act {
            Activation::TopK { k } => vec![("SEG", m), ("NTH", k), ("REP", 1)],
            Activation::BatchTopK { k } => vec![("SEG", b * m), ("NTH", k * b), ("REP", b)],
            _ => unreachable!("only TopK and BatchTopK select thresholds"),
        }
    }

    fn recipe(&self, kernel: Kernel) -> Recipe {
        use sources::*;
        let plain = |parts, workgroup, flag| Recipe {
            parts,
            extra: Vec::new(),
            workgroup,
            tile: None,
            flag,
        };
        let (b, d, m) = (self.b, self.d, self.m);
        // A product's K in KSPLIT ranges of KS (Dims::k_split).
        let matmul = |parts, flag| {
            let (ksplit, ks) = self.k_split(kernel);
            Recipe {
                tile: Some(self.tile(kernel)),
                extra: vec![("KSPLIT", ksplit), ("KS", ks)],
                ..plain(parts, (16, 16), flag)
            }
        };
        // Totals over `n` partials of `per_head` outputs a head (ksum.wgsl).
        let ksum = |parts, n, per_head, flag| Recipe {
            extra: vec![("PARTS", n), ("PER_HEAD", per_head)],
            ..plain(parts, (256, 1), flag)
        };
        match kernel {
            Kernel::Norms => plain(&[NORMS], (256, 1), None),
            Kernel::MmPre => matmul(&[MM_PRE, MATMUL], None),
            Kernel::Select => Recipe {
                extra: self.selection(),
                ..plain(&[SELECT, KEYS, THRESHOLD], (256, 1), None)
            },
            Kernel::SelectCount => Recipe {
                extra: vec![
                    ("SEG", b * m),
                    ("CHUNK", (b * m).div_ceil(self.select_groups() as usize)),
                ],
                ..plain(&[SELECT_COUNT, KEYS], (256, 1), None)
            },
            Kernel::SelectPick => Recipe {
                extra: self.selection(),
                ..plain(&[SELECT_PICK, KEYS, THRESHOLD], (256, 1), None)
            },
            Kernel::Fstats => plain(&[FSTATS, ACT, NEAR], (256, 1), None),
            Kernel::FstatsTotal => plain(&[FSTATS_TOTAL], (256, 1), None),
            Kernel::Scan => Recipe {
                extra: vec![("CAP", self.cap)],
                ..plain(&[SCAN], (256, 1), None)
            },
            Kernel::Fill => plain(&[FILL, ACT, NEAR], (256, 1), None),
            Kernel::DecSparse => plain(&[DEC_SPARSE, ACT], (64, 1), None),
            Kernel::MmDec => matmul(&[MM_DEC, ACT, MATMUL], Some(5)),
            Kernel::Rows => plain(&[ROWS], (256, 1), None),
            Kernel::Colsum { n, dense } => Recipe {
                extra: vec![("N", n)],
                ..plain(&[COLSUM], (256, 1), dense.then_some(2))
            },
            Kernel::ColsumTotal { n, dense } => {
                ksum(&[SUM_PLAIN, KSUM], self.chunks(), n, dense.then_some(2))
            }
            Kernel::MmGdec => matmul(&[MM_GDEC, ACT, MATMUL], Some(4)),
            Kernel::MmDp => matmul(&[MM_DP, ACT, MATMUL], Some(8)),
            Kernel::MmGenc => matmul(&[MM_GENC, MATMUL], Some(3)),
            Kernel::SumGdec => ksum(&[SUM_GDEC, KSUM], self.k_split(kernel).0, d * m, Some(6)),
            Kernel::SumGenc => ksum(&[SUM_PLAIN, KSUM], self.k_split(kernel).0, d * m, Some(2)),
            Kernel::FeatGrad => plain(&[FEAT_GRAD], (256, 1), None),
            Kernel::Loss => plain(&[LOSS, REDUCE], (256, 1), Some(7)),
            Kernel::Sumsq { n, off } => Recipe {
                extra: vec![("N", n), ("OFF", off)],
                ..plain(&[SUMSQ, REDUCE], (256, 1), None)
            },
            Kernel::Adam { n, partials } => Recipe {
                extra: vec![("N", n), ("NP", partials)],
                ..plain(&[ADAM, REDUCE], (256, 1), None)
            },
            Kernel::AuxMask => plain(&[AUX_MASK], (256, 1), None),
            Kernel::AuxRows => plain(&[AUX_ROWS], (256, 1), None),
            Kernel::AuxLoss => plain(&[AUX_LOSS, REDUCE], (256, 1), None),
            Kernel::Add { n } => Recipe {
                extra: vec![("N", n)],
                ..plain(&[ADD], (256, 1), None)
            },
        }
    }

    /// A kernel's complete WGSL: the step's constants, the kernel's own, the path flag's
    /// functions, then its shader files. A kernel that follows the step's path binds the
    /// flag (scan.wgsl) where the step can go sparse: dense kernels skip themselves on
    /// sparse steps (`skip_dense`), the loss reports the path (`path_taken`). Without the
    /// sparse path neither reads anything.
    pub fn kernel(&self, kernel: Kernel) -> Wgsl {
        self.source(&self.recipe(kernel))
    }

    fn source(&self, recipe: &Recipe) -> Wgsl {
        use std::fmt::Write;
        let mut s = String::new();
        let consts = [
            ("H", self.h),
            ("B", self.b),
            ("D", self.d),
            ("M", self.m),
            ("FLAG_AT", self.h * self.m + 1),
            ("CHUNK_ROWS", CHUNK),
            ("NCH", self.chunks()),
        ];
        for (name, v) in consts.into_iter().chain(recipe.extra.iter().copied()) {
            let _ = writeln!(s, "const {name}: u32 = {v}u;");
        }
        for (i, name) in ["ACT_RELU", "ACT_TOPK", "ACT_BATCHTOPK", "ACT_JUMP"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(s, "const {name}: u32 = {i}u;");
        }
        let _ = writeln!(s, "const ACT: u32 = {}u;", self.act_code());
        let _ = writeln!(s, "const INV_B: f32 = {:?};", 1.0 / self.b as f32);
        for (i, name) in SCALARS.iter().enumerate() {
            let _ = writeln!(s, "const {name}: u32 = {i}u;");
        }
        match recipe.flag.filter(|_| self.sparse) {
            Some(n) => {
                let _ = write!(
                    s,
                    "@group(0) @binding({n}) var<storage, read_write> path_flags: array<u32>;\n\
                     var<workgroup> path_wg: u32;\n\
                     fn path_taken() -> u32 {{\n    return path_flags[FLAG_AT];\n}}\n\
                     fn skip_dense(li: u32) -> bool {{\n    if (li == 0u) {{\n        \
                     path_wg = path_flags[FLAG_AT];\n    }}\n    \
                     return workgroupUniformLoad(&path_wg) == 1u;\n}}\n"
                );
            }
            None => s.push_str(NO_PATH_FLAG),
        }
        if let Some(tile) = recipe.tile {
            s.push_str(&matmul_constants(tile));
        }
        for p in recipe.parts {
            match recipe.tile {
                Some(tile) if *p == sources::MATMUL => s.push_str(&matmul_body(tile)),
                _ => s.push_str(p),
            }
            s.push('\n');
        }
        Wgsl { source: s }
    }

    /// Every kind of kernel a step of this shape launches (for validation).
    pub fn all_kernels(&self) -> Vec<(Kernel, Wgsl)> {
        let (d, m) = (self.d, self.m);
        let mut kinds = vec![
            Kernel::Norms,
            Kernel::MmPre,
            Kernel::Fstats,
            Kernel::FstatsTotal,
            Kernel::MmDec,
            Kernel::Rows,
            Kernel::Colsum { n: d, dense: false },
            Kernel::ColsumTotal { n: d, dense: false },
            Kernel::Colsum { n: m, dense: true },
            Kernel::ColsumTotal { n: m, dense: true },
            Kernel::MmGdec,
            Kernel::SumGdec,
            Kernel::MmDp,
            Kernel::MmGenc,
            Kernel::SumGenc,
            Kernel::Loss,
            Kernel::Sumsq { n: d * m, off: 0 },
            Kernel::Adam {
                n: d * m,
                partials: 3,
            },
        ];
        match self.act {
            Activation::TopK { .. } => kinds.push(Kernel::Select),
            Activation::BatchTopK { .. } => {
                kinds.extend([Kernel::Select, Kernel::SelectCount, Kernel::SelectPick])
            }
            _ => {}
        }
        if self.sparse {
            kinds.extend([
                Kernel::Scan,
                Kernel::Fill,
                Kernel::DecSparse,
                Kernel::FeatGrad,
            ]);
        }
        kinds.into_iter().map(|k| (k, self.kernel(k))).collect()
    }

    /// The dims AuxK's kernels are made with: a TopK selection of `k` per token over the
    /// sunk pre-activations, on the dense path (AuxK's own matmuls always run).
    pub fn aux(&self, k: usize) -> Dims {
        Dims {
            act: Activation::TopK { k: k.min(self.m) },
            sparse: false,
            cap: 0,
            ..*self
        }
    }

    /// Every kind of kernel AuxK adds to a step of this shape, in [`Dims::aux`]'s dims
    /// (for validation).
    pub fn aux_kernels(&self, k: usize) -> Vec<(Kernel, Wgsl)> {
        let a = self.aux(k);
        let (d, m) = (self.d, self.m);
        [
            Kernel::AuxMask,
            Kernel::Select,
            Kernel::MmDec,
            Kernel::AuxRows,
            Kernel::MmGdec,
            Kernel::SumGdec,
            Kernel::MmDp,
            Kernel::Colsum { n: m, dense: false },
            Kernel::ColsumTotal { n: m, dense: false },
            Kernel::MmGenc,
            Kernel::SumGenc,
            Kernel::Add { n: d * m },
            Kernel::AuxLoss,
        ]
        .into_iter()
        .map(|k| (k, a.kernel(k)))
        .collect()
    }
}

/// Workgroup memory a kernel may use on every adapter (WebGPU's default limit).
const WORKGROUP_BYTES: usize = 16_384;

/// matmul.wgsl's tile constants for `rm x rn` outputs per invocation of its 16 x 16: a
/// `TM x TN` tile, over `TK` steps of K at a time (16, or 8 where two `TK x T` tiles of 16
/// and the path flag would pass [`WORKGROUP_BYTES`]).
pub(crate) fn matmul_constants((rm, rn): (usize, usize)) -> String {
    let (tm, tn) = (16 * rm, 16 * rn);
    // 16 bytes for the kernel's other workgroup variables (the path flag).
    let fits = |tk: usize| tk * (tm + tn) * 4 + 16 <= WORKGROUP_BYTES;
    let tk = if fits(16) { 16 } else { 8 };
    [
        ("TM", tm),
        ("TN", tn),
        ("TK", tk),
        ("TM4", tm / 4),
        ("TN4", tn / 4),
        ("SA_LEN", tk * tm / 4),
        ("SB_LEN", tk * tn / 4),
    ]
    .iter()
    .map(|(name, v)| format!("const {name}: u32 = {v}u;\n"))
    .collect()
}

/// matmul.wgsl with its marked lines written out for `rm x rn` outputs per invocation
/// (both multiples of 4): `rm x rn / 4` vec4 accumulators, one step of K (the rows'
/// operands in `rm / 4` vec4 loads, the columns' in `rn / 4`, then each row's operand times
/// each column quad's), and the stores.
pub(crate) fn matmul_body((rm, rn): (usize, usize)) -> String {
    use std::fmt::Write;
    let (mut acc, mut step, mut store) = (String::new(), String::new(), String::new());
    let quads = rn / 4;
    for i in 0..rm / 4 {
        let _ = writeln!(step, "            let a{i} = sa[ra + {}u];", 16 * i);
    }
    for j in 0..quads {
        let _ = writeln!(step, "            let b{j} = sb[rb + {}u];", 16 * j);
    }
    for i in 0..rm {
        for j in 0..quads {
            let _ = writeln!(acc, "    var acc_{i}_{j} = vec4<f32>(0.0);");
            let _ = writeln!(
                step,
                "            acc_{i}_{j} = fma(vec4<f32>(a{}[{}]), b{j}, acc_{i}_{j});",
                i / 4,
                i % 4
            );
            for q in 0..4 {
                let _ = writeln!(
                    store,
                    "    put(h, r0 + lid.y + {}u, c0 + lid.x + {}u, acc_{i}_{j}[{q}]);",
                    16 * i,
                    16 * (4 * j + q)
                );
            }
        }
    }
    let mut body = String::new();
    for line in sources::MATMUL.lines() {
        match line.trim() {
            "// {acc}" => body.push_str(&acc),
            "// {step}" => body.push_str(&step),
            "// {store}" => body.push_str(&store),
            _ => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    body
}

/// Workgroups to cover `n` with groups of `per`.
pub(crate) fn groups(n: usize, per: usize) -> u32 {
    n.div_ceil(per) as u32
}

/// Launches and allocations on one device.
struct Launcher<'a> {
    like: &'a CubeTensor,
    dims: Dims,
    /// The path flag's buffer, on a step that can take the sparse path.
    lists: Option<Handle>,
}

impl Launcher<'_> {
    fn empty(&self, dims: &[usize]) -> CubeTensor {
        let n: usize = dims.iter().product();
        self.tensor(self.like.client.empty(n.max(1) * 4), dims)
    }

    /// A buffer of f32 values as a contiguous tensor of shape `dims`.
    fn tensor(&self, handle: Handle, dims: &[usize]) -> CubeTensor {
        CubeTensor::new_contiguous(
            self.like.client.clone(),
            self.like.device.clone(),
            Shape::from(dims.to_vec()),
            handle,
            DType::F32,
        )
    }

    fn upload(&self, values: &[f32]) -> Handle {
        self.upload_u32(&values.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
    }

    fn upload_u32(&self, values: &[u32]) -> Handle {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.like.client.create_from_slice(&bytes)
    }

    /// Launches `kernel` over `count` workgroups on `buffers`, and the path flag after
    /// them for a kernel that follows the path on a step that can go sparse.
    fn launch(&self, kernel: Kernel, count: (u32, u32, u32), buffers: &[&Handle]) {
        let recipe = self.dims.recipe(kernel);
        let mut buffers = buffers.to_vec();
        if let Some(n) = recipe.flag {
            assert_eq!(n, buffers.len(), "{kernel:?}: the flag follows the buffers");
            buffers.extend(&self.lists);
        }
        let args = KernelArguments::new()
            .with_buffers(buffers.iter().map(|h| (*h).clone().binding()).collect());
        let (x, y) = recipe.workgroup;
        self.like.client.launch(
            Box::new(SourceKernel::new(
                self.dims.source(&recipe),
                CubeDim::new_2d(x, y),
            )),
            CubeCount::Static(count.0, count.1, count.2),
            args,
        );
    }

    /// Column sums over the batch of `v` (`[H, B, n]`) into `out` (`[H, n]`): each chunk's
    /// sums, then their totals.
    fn colsum(&self, v: &CubeTensor, out: &CubeTensor, n: usize, dense: bool) {
        let (hu, nch) = (self.dims.h as u32, self.dims.chunks());
        let part = self.empty(&[nch, self.dims.h, n]);
        self.launch(
            Kernel::Colsum { n, dense },
            (groups(n, 256), hu, nch as u32),
            &[&v.handle, &part.handle],
        );
        self.launch(
            Kernel::ColsumTotal { n, dense },
            (groups(n, 256), hu, 1),
            &[&part.handle, &out.handle],
        );
    }

    /// A product over the batch (`MmGdec`, `MmGenc`, `[H, rows, cols]`) into `out`: its
    /// partial products over ranges of the batch from `inputs`, then their totals (the
    /// `total` kernel, which also binds `more`).
    fn split_product(
        &self,
        (kernel, total): (Kernel, Kernel),
        (rows, cols): (usize, usize),
        inputs: &[&Handle],
        out: &CubeTensor,
        more: &[&Handle],
    ) {
        let part = self.empty(&[self.dims.k_split(kernel).0, self.dims.h, rows, cols]);
        let mut buffers = inputs.to_vec();
        buffers.push(&part.handle);
        self.launch(
            kernel,
            self.dims.matmul_groups(kernel, rows, cols),
            &buffers,
        );
        let mut buffers = vec![&part.handle, &out.handle];
        buffers.extend(more);
        let count = (groups(rows * cols, 256), self.dims.h as u32, 1);
        self.launch(total, count, &buffers);
    }
}

fn contiguous(t: CubeTensor) -> CubeTensor {
    burn::backend::wgpu::into_contiguous(t)
}

/// One training step (see the module's documentation).
fn step(
    x: CubeTensor,
    s: StepState<CubeBackend>,
    dead: CubeTensor,
    aux_factors: CubeTensor,
    spec: StepSpec,
) -> StepResult<CubeBackend> {
    let x = contiguous(x);
    let (dead, aux_factors) = (contiguous(dead), contiguous(aux_factors));
    let (h, b, d) = (x.meta.shape()[0], x.meta.shape()[1], x.meta.shape()[2]);
    let m = s.w_enc.meta.shape()[2];
    let bindings = x.client.properties().hardware.max_bindings;
    let sparse = spec.sparse_below > 0.0 && bindings >= SPARSE_BINDINGS && m <= 65_535;
    let dims = Dims {
        h,
        b,
        d,
        m,
        act: spec.act,
        sparse,
        cap: (spec.sparse_below.min(1.0) * (h * b * m) as f64) as usize,
        wide_tiles: spec.wide_tiles,
    };
    let jump = matches!(spec.act, Activation::JumpRelu { .. });
    let [w_enc, b_enc, w_dec, b_dec, lt] =
        [s.w_enc, s.b_enc, s.w_dec, s.b_dec, s.log_threshold].map(contiguous);
    let [mv_we, mv_be, mv_wd, mv_bd, mv_lt] = [
        s.mv_w_enc,
        s.mv_b_enc,
        s.mv_w_dec,
        s.mv_b_dec,
        s.mv_log_threshold,
    ]
    .map(contiguous);
    let (b1, b2) = spec.betas;
    let (coef, half_band, inv_eps) = match spec.act {
        Activation::Relu { l1 } => (l1, 0.0, 0.0),
        Activation::JumpRelu { coef, bandwidth } => (coef, bandwidth / 2.0, 1.0 / bandwidth),
        Activation::TopK { .. } | Activation::BatchTopK { .. } => (0.0, 0.0, 0.0),
    };
    let t = spec.t as i32;
    let mut l = Launcher {
        like: &x,
        dims,
        lists: None,
    };
    // On a step that can go sparse: the list offsets and path flag (scan.wgsl), and the
    // lists (fill.wgsl).
    let sparse_buffers = sparse.then(|| (l.empty(&[h * m + 2]), l.empty(&[2 * dims.cap.max(1)])));
    l.lists = sparse_buffers
        .as_ref()
        .map(|(lists, _)| lists.handle.clone());
    let sc = l.upload(&[
        coef as f32,
        half_band as f32,
        inv_eps as f32,
        spec.lr as f32,
        b1 as f32,
        b2 as f32,
        (1.0 - b1.powi(t)) as f32,
        (1.0 - b2.powi(t)) as f32,
        spec.clip as f32,
    ]);
    let hu = h as u32;
    let mm = |kernel, rows, cols| dims.matmul_groups(kernel, rows, cols);

    let norms = l.empty(&[h, m]);
    l.launch(
        Kernel::Norms,
        (groups(m, 256), hu, 1),
        &[&w_dec.handle, &norms.handle],
    );
    let pre = if spec.burn_encoder {
        use burn::backend::ops::FloatTensorOps;
        let product = CubeBackend::float_matmul(x.clone(), w_enc.clone());
        let bias = CubeBackend::float_reshape(b_enc.clone(), Shape::from(vec![h, 1, m]));
        contiguous(CubeBackend::float_add(product, bias))
    } else {
        let pre = l.empty(&[h, b, m]);
        l.launch(
            Kernel::MmPre,
            mm(Kernel::MmPre, b, m),
            &[&x.handle, &w_enc.handle, &b_enc.handle, &pre.handle],
        );
        pre
    };
    // The activation's gate: row thresholds, the log-thresholds, or (ReLU) nothing read.
    let gate = match spec.act {
        Activation::Relu { .. } => b_enc.handle.clone(),
        Activation::JumpRelu { .. } => lt.handle.clone(),
        Activation::BatchTopK { k } if !spec.one_group_select => {
            // Four rounds of digit counts over many workgroups per head, each followed
            // by the pick of the round's digit.
            let thr = l.empty(&[h, b]);
            let sel = l.upload_u32(&[0, 0, (k * b) as u32, 0].repeat(h));
            let counts = l.upload_u32(&vec![0; h * 256]);
            for _ in 0..4 {
                l.launch(
                    Kernel::SelectCount,
                    (dims.select_groups(), hu, 1),
                    &[&pre.handle, &sel, &counts],
                );
                l.launch(
                    Kernel::SelectPick,
                    (1, hu, 1),
                    &[&sel, &counts, &thr.handle],
                );
            }
            thr.handle
        }
        Activation::TopK { .. } | Activation::BatchTopK { .. } => {
            let thr = l.empty(&[h, b]);
            // A workgroup per token (TopK) or per head (BatchTopK).
            let per_head = if matches!(spec.act, Activation::TopK { .. }) {
                b
            } else {
                1
            };
            l.launch(
                Kernel::Select,
                (per_head as u32, hu, 1),
                &[&pre.handle, &thr.handle],
            );
            thr.handle
        }
    };
    // The thresholds, as a tensor to return (TopK and BatchTopK; unset otherwise).
    let thresholds = match spec.act {
        Activation::TopK { .. } | Activation::BatchTopK { .. } => l.tensor(gate.clone(), &[h, b]),
        _ => l.empty(&[h, b]),
    };
    let (fired, fsum, lcount) = (l.empty(&[h, m]), l.empty(&[h, m]), l.empty(&[h, m]));
    let nch = dims.chunks();
    let fparts = l.empty(&[3, h, nch, m]);
    l.launch(
        Kernel::Fstats,
        (groups(m, 256), hu, nch as u32),
        &[&pre.handle, &gate, &fparts.handle, &sc],
    );
    l.launch(
        Kernel::FstatsTotal,
        (groups(m, 256), hu, 1),
        &[&fparts.handle, &fired.handle, &fsum.handle, &lcount.handle],
    );
    let rec = l.empty(&[h, b, d]);
    if let Some((lists, ent)) = &sparse_buffers {
        l.launch(Kernel::Scan, (1, 1, 1), &[&lcount.handle, &lists.handle]);
        l.launch(
            Kernel::Fill,
            (groups(m, 256), hu, nch as u32),
            &[
                &pre.handle,
                &gate,
                &lists.handle,
                &ent.handle,
                &sc,
                &fparts.handle,
            ],
        );
        l.launch(
            Kernel::DecSparse,
            (b as u32, hu, 1),
            &[
                &pre.handle,
                &gate,
                &w_dec.handle,
                &b_dec.handle,
                &lists.handle,
                &rec.handle,
            ],
        );
    }
    l.launch(
        Kernel::MmDec,
        mm(Kernel::MmDec, b, d),
        &[
            &pre.handle,
            &gate,
            &w_dec.handle,
            &b_dec.handle,
            &rec.handle,
        ],
    );
    let (err_sq, recon_sq) = (l.empty(&[h, b]), l.empty(&[h, b]));
    l.launch(
        Kernel::Rows,
        (groups(b, 256), hu, 1),
        &[&x.handle, &rec.handle, &err_sq.handle, &recon_sq.handle],
    );
    let dr = rec;
    let g_bd = l.empty(&[h, d]);
    l.colsum(&dr, &g_bd, d, false);
    let g_wd = l.empty(&[h, m, d]);
    l.split_product(
        (Kernel::MmGdec, Kernel::SumGdec),
        (m, d),
        &[&pre.handle, &gate, &dr.handle],
        &g_wd,
        &[&w_dec.handle, &norms.handle, &fsum.handle, &sc],
    );
    let dp = l.empty(&[h, b, m]);
    let jc = if jump {
        l.empty(&[h, b, m])
    } else {
        l.empty(&[1])
    };
    l.launch(
        Kernel::MmDp,
        mm(Kernel::MmDp, b, m),
        &[
            &dr.handle,
            &w_dec.handle,
            &pre.handle,
            &gate,
            &norms.handle,
            &dp.handle,
            &jc.handle,
            &sc,
        ],
    );
    let g_be = l.empty(&[h, m]);
    l.colsum(&dp, &g_be, m, true);
    let g_lt = if jump {
        l.empty(&[h, m])
    } else {
        l.empty(&[1])
    };
    if jump {
        l.colsum(&jc, &g_lt, m, true);
    }
    let g_we = l.empty(&[h, d, m]);
    l.split_product(
        (Kernel::MmGenc, Kernel::SumGenc),
        (d, m),
        &[&x.handle, &dp.handle],
        &g_we,
        &[],
    );
    if let Some((lists, ent)) = &sparse_buffers {
        l.launch(
            Kernel::FeatGrad,
            (m as u32, hu, 1),
            &[
                &ent.handle,
                &lists.handle,
                &dr.handle,
                &x.handle,
                &w_dec.handle,
                &gate,
                &norms.handle,
                &fsum.handle,
                &sc,
                &g_wd.handle,
                &g_we.handle,
                &g_be.handle,
                &g_lt.handle,
            ],
        );
    }
    let (resid_sq, terms) = (l.empty(&[h]), l.empty(&[4]));
    l.launch(
        Kernel::Loss,
        (1, 1, 1),
        &[
            &err_sq.handle,
            &fired.handle,
            &fsum.handle,
            &norms.handle,
            &resid_sq.handle,
            &terms.handle,
            &sc,
        ],
    );

    let aux = l.upload(&[0.0]);
    if let Some(k) = spec.aux_k {
        // AuxK, dense: the dead features' top k per token reconstruct the error (mm_dec,
        // no bias), and the difference's gradient flows back through the same matmuls as
        // the loss's; its gradients are then added to the loss's.
        let la = Launcher {
            like: &x,
            dims: dims.aux(k),
            lists: None,
        };
        // In place: the loss is done with the pre-activations and dP (the dense path's, or
        // an unused buffer on the sparse path), so AuxK takes them over and needs no
        // [H, B, M] buffer of its own.
        let masked = pre;
        la.launch(
            Kernel::AuxMask,
            (groups(m, 256), b as u32, hu),
            &[&masked.handle, &dead.handle],
        );
        let thr = la.empty(&[h, b]);
        la.launch(
            Kernel::Select,
            (b as u32, hu, 1),
            &[&masked.handle, &thr.handle],
        );
        let no_bias = la.upload(&vec![0.0; h * d]);
        let ehat = la.empty(&[h, b, d]);
        la.launch(
            Kernel::MmDec,
            mm(Kernel::MmDec, b, d),
            &[
                &masked.handle,
                &thr.handle,
                &w_dec.handle,
                &no_bias,
                &ehat.handle,
            ],
        );
        let aux_sq = la.empty(&[h, b]);
        la.launch(
            Kernel::AuxRows,
            (groups(b, 256), hu, 1),
            &[
                &dr.handle,
                &ehat.handle,
                &aux_sq.handle,
                &aux_factors.handle,
            ],
        );
        let g = ehat;
        let gw_dec = la.empty(&[h, m, d]);
        la.split_product(
            (Kernel::MmGdec, Kernel::SumGdec),
            (m, d),
            &[&masked.handle, &thr.handle, &g.handle],
            &gw_dec,
            &[&w_dec.handle, &norms.handle, &fsum.handle, &sc],
        );
        let dp_aux = dp;
        let unused = la.empty(&[1]);
        la.launch(
            Kernel::MmDp,
            mm(Kernel::MmDp, b, m),
            &[
                &g.handle,
                &w_dec.handle,
                &masked.handle,
                &thr.handle,
                &norms.handle,
                &dp_aux.handle,
                &unused.handle,
                &sc,
            ],
        );
        let gb_enc = la.empty(&[h, m]);
        la.colsum(&dp_aux, &gb_enc, m, false);
        let gw_enc = la.empty(&[h, d, m]);
        la.split_product(
            (Kernel::MmGenc, Kernel::SumGenc),
            (d, m),
            &[&x.handle, &dp_aux.handle],
            &gw_enc,
            &[],
        );
        for (v, acc) in [(&gw_enc, &g_we), (&gb_enc, &g_be), (&gw_dec, &g_wd)] {
            let n = v.meta.shape().num_elements();
            la.launch(
                Kernel::Add { n },
                (groups(n, 4096), 1, 1),
                &[&v.handle, &acc.handle],
            );
        }
        la.launch(
            Kernel::AuxLoss,
            (1, 1, 1),
            &[&aux_sq.handle, &aux, &terms.handle, &aux_factors.handle],
        );
    }

    // Clipping's global norm over every gradient, then Adam per array.
    let mut arrays = vec![
        (w_enc, g_we, mv_we),
        (b_enc, g_be, mv_be),
        (w_dec, g_wd, mv_wd),
        (b_dec, g_bd, mv_bd),
    ];
    if jump {
        arrays.push((lt.clone(), g_lt, mv_lt.clone()));
    }
    let sizes: Vec<usize> = arrays
        .iter()
        .map(|(p, ..)| p.meta.shape().num_elements())
        .collect();
    let n_partials: usize = sizes.iter().map(|&n| n.div_ceil(4096)).sum();
    let partials = l.empty(&[n_partials]);
    let mut off = 0;
    for ((_, g, _), &n) in arrays.iter().zip(&sizes) {
        l.launch(
            Kernel::Sumsq { n, off },
            (groups(n, 4096), 1, 1),
            &[&g.handle, &partials.handle],
        );
        off += n.div_ceil(4096);
    }
    let mut updated = Vec::new();
    for ((p, g, mv), &n) in arrays.iter().zip(&sizes) {
        let p_out = l.empty(&p.meta.shape().to_vec());
        let mv_out = l.empty(&[2 * n]);
        l.launch(
            Kernel::Adam {
                n,
                partials: n_partials,
            },
            (groups(n, 4096), 1, 1),
            &[
                &p.handle,
                &g.handle,
                &mv.handle,
                &partials.handle,
                &sc,
                &p_out.handle,
                &mv_out.handle,
            ],
        );
        updated.push((p_out, mv_out));
    }
    let mut updated = updated.into_iter();
    let mut next = || updated.next().expect("one update per array");
    let (w_enc, mv_w_enc) = next();
    let (b_enc, mv_b_enc) = next();
    let (w_dec, mv_w_dec) = next();
    let (b_dec, mv_b_dec) = next();
    let (log_threshold, mv_log_threshold) = if jump { next() } else { (lt, mv_lt) };
    StepResult {
        state: StepState {
            w_enc,
            b_enc,
            w_dec,
            b_dec,
            log_threshold,
            mv_w_enc,
            mv_b_enc,
            mv_w_dec,
            mv_b_dec,
            mv_log_threshold,
        },
        fired,
        resid_sq,
        recon_sq,
        terms,
        aux: l.tensor(aux, &[1]),
        thresholds,
    }
}

type DispatchTensor = FloatTensor<burn::backend::Dispatch>;

/// An SAE's sizes, and whether it has thresholds (JumpReLU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamShape {
    pub n_heads: usize,
    pub d_head: usize,
    pub m: usize,
    pub jump: bool,
}

impl ParamShape {
    pub fn of(p: &super::fused_cpu::HostParams) -> Self {
        Self {
            n_heads: p.n_heads,
            d_head: p.d_head,
            m: p.m,
            jump: !p.log_threshold.is_empty(),
        }
    }
}

/// A host array as a dispatch tensor of `shape` (rank 1 to 3) on `device`.
fn to_device(v: Vec<f32>, shape: &[usize], device: &burn::tensor::Device) -> DispatchTensor {
    use burn::tensor::{Tensor, TensorData};
    let data = TensorData::new(v, shape.to_vec());
    match shape.len() {
        1 => Tensor::<1>::from_data(data, device).into_dispatch(),
        2 => Tensor::<2>::from_data(data, device).into_dispatch(),
        3 => Tensor::<3>::from_data(data, device).into_dispatch(),
        r => unreachable!("no parameter of rank {r}"),
    }
}

/// A dispatch tensor of rank `R` read back to the host.
fn to_host<const R: usize>(t: &DispatchTensor) -> anyhow::Result<Vec<f32>> {
    crate::files::host_vec(burn::tensor::Tensor::<R>::from_dispatch(t.clone()))
}

impl StepState<burn::backend::Dispatch> {
    /// Parameters and (or zero) Adam moments from the host, on `device`.
    pub fn from_host(
        p: &super::fused_cpu::HostParams,
        adam: Option<&super::fused_cpu::HostAdam>,
        device: &burn::tensor::Device,
    ) -> Self {
        let (h, d, m) = (p.n_heads, p.d_head, p.m);
        let shapes: [&[usize]; 5] = [&[h, d, m], &[h, m], &[h, m, d], &[h, d], &[h, m]];
        let mut params = Vec::new();
        let mut moments = Vec::new();
        for (i, (a, shape)) in p.arrays().into_iter().zip(shapes).enumerate() {
            if a.is_empty() {
                // No thresholds but for JumpReLU: one-element placeholders.
                params.push(to_device(vec![0.0], &[1], device));
                moments.push(to_device(vec![0.0], &[1], device));
                continue;
            }
            params.push(to_device(a.clone(), shape, device));
            let mv = match adam {
                Some(adam) => {
                    [adam.m.arrays()[i].as_slice(), adam.v.arrays()[i].as_slice()].concat()
                }
                None => vec![0.0; 2 * a.len()],
            };
            let n = mv.len();
            moments.push(to_device(mv, &[n], device));
        }
        let mut params = params.into_iter();
        let mut moments = moments.into_iter();
        let mut p = || params.next().expect("five arrays");
        let mut mv = || moments.next().expect("five arrays");
        Self {
            w_enc: p(),
            b_enc: p(),
            w_dec: p(),
            b_dec: p(),
            log_threshold: p(),
            mv_w_enc: mv(),
            mv_b_enc: mv(),
            mv_w_dec: mv(),
            mv_b_dec: mv(),
            mv_log_threshold: mv(),
        }
    }

    /// The parameters and Adam moments read back to the host.
    pub fn to_host(
        &self,
        shape: ParamShape,
    ) -> anyhow::Result<(super::fused_cpu::HostParams, super::fused_cpu::HostAdam)> {
        let jump = shape.jump;
        let p = super::fused_cpu::HostParams {
            n_heads: shape.n_heads,
            d_head: shape.d_head,
            m: shape.m,
            w_enc: to_host::<3>(&self.w_enc)?,
            b_enc: to_host::<2>(&self.b_enc)?,
            w_dec: to_host::<3>(&self.w_dec)?,
            b_dec: to_host::<2>(&self.b_dec)?,
            log_threshold: if jump {
                to_host::<2>(&self.log_threshold)?
            } else {
                Vec::new()
            },
        };
        let mut adam = super::fused_cpu::HostAdam::zeros(&p);
        let moments = [
            &self.mv_w_enc,
            &self.mv_b_enc,
            &self.mv_w_dec,
            &self.mv_b_dec,
            &self.mv_log_threshold,
        ];
        for (i, mv) in moments.into_iter().enumerate() {
            let n = p.arrays()[i].len();
            if n == 0 {
                continue;
            }
            let mv = to_host::<1>(mv)?;
            *adam.m.arrays_mut()[i] = mv[..n].to_vec();
            *adam.v.arrays_mut()[i] = mv[n..].to_vec();
        }
        Ok((p, adam))
    }
}

/// One step on burn's tensors (see the module's documentation).
pub fn run_step(
    x: burn::tensor::Tensor<3>,
    state: StepState<burn::backend::Dispatch>,
    spec: StepSpec,
    aux: Option<&super::fused_cpu::AuxK>,
) -> StepResult<burn::backend::Dispatch> {
    let [h, b, _] = x.dims();
    let device = x.device();
    let mut spec = spec;
    // AuxK's dead features [H, M] (1: dead), and per head its scale, the gradient's
    // factor, then the coefficient (fused_cpu::AuxK); one-element placeholders without.
    spec.aux_k = None;
    let (mut dead, mut factors) = (vec![0.0], vec![0.0]);
    if let Some(a) = aux
        && let Some((k, head_factors)) = a.head_factors(h, b)
    {
        spec.aux_k = Some(k);
        dead = a.dead.iter().map(|&d| f32::from(u8::from(d))).collect();
        factors = head_factors;
    }
    let tensor = |v: Vec<f32>| {
        let n = v.len();
        burn::tensor::Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [n]), &device)
            .into_dispatch()
    };
    <burn::backend::Dispatch as WgslStep>::wgsl_sae_step(
        x.into_dispatch(),
        state,
        tensor(dead),
        tensor(factors),
        spec,
    )
}

#[cfg(test)]
mod tests {
    use super::check_shape;

    #[test]
    fn shapes_past_the_kernels_limits_are_refused_with_the_batch_that_fits() {
        check_shape(12, 4096, 64, 2048).unwrap();
        let err = check_shape(12, 32_768, 64, 2048).unwrap_err();
        assert!(err.contains("use a batch under 21845"), "{err}");
        let err = check_shape(1, 70_000, 16, 32).unwrap_err();
        assert!(err.contains("at most 65535 tokens"), "{err}");
        check_shape(1, 1024, 128, 131_070).unwrap();
        let err = check_shape(1, 1024, 128, 131_072).unwrap_err();
        assert!(err.contains("at most 131070 features per head"), "{err}");
    }
}
