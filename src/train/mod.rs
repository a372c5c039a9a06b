//! Trainer: trains a block-diagonal SAE on hook_z of one layer. Adam with gradient-norm
//! clipping, learning-rate and sparsity-coefficient schedules, metrics every `log_every`
//! steps, CE-loss evaluations, atomic checkpoints and exact resume. Progress is published
//! as [`TrainEvent`]s on a channel (the CLI and the app both consume them).

pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod fused_cpu;
pub mod metrics;
mod run;
pub mod wgsl;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;

use anyhow::Context;
use burn::prelude::*;
use burn::tensor::TensorData;

pub use config::{StepKind, TrainConfig};
pub use eval::EvalMetrics;
pub use metrics::StepMetrics;

use crate::files::NamedArray;
use crate::lm::TransformerConfig;
use crate::lm::weights::WeightFile;
use crate::sae::{Architecture, BlockDiagSae, SaeConfig, SaeOutput};
use fused_cpu::{Activation, HostAdam, HostParams};

/// What training publishes, in order: `Started`, then `Status`/`Step`/`Eval`/`Checkpoint`
/// as they happen, then `Finished` or `Failed`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum TrainEvent {
    Started {
        config: Box<TrainConfig>,
        model: Box<TransformerConfig>,
        sae: SaeConfig,
        device: String,
        start_step: usize,
    },
    /// A phase that has no step count yet (loading, harvesting the first buffer...).
    Status(String),
    /// Something to keep in view, not a passing phase: a previous run replaced, a cache
    /// read more than once.
    Notice(String),
    Step(Box<StepMetrics>),
    Eval(Box<EvalMetrics>),
    /// Feature density histogram `(log10 density bin centre, count)` over the dead-feature
    /// window, each time it moves on.
    Density {
        step: usize,
        histogram: Vec<(f64, usize)>,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Finished(Box<TrainSummary>),
    Failed(String),
}

/// The end of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub tokens: u64,
    pub seconds: f64,
    pub last: Option<StepMetrics>,
    pub eval: Option<EvalMetrics>,
    pub sae_dir: PathBuf,
    pub checkpoint: Option<PathBuf>,
    /// True when stopped early (stop flag or `stop_after`).
    pub stopped_early: bool,
    /// Where the time went.
    #[serde(default)]
    pub time: TimeSplit,
}

/// Where a run's time went, in seconds: the training thread's part in each kind of work
/// (the rest of `seconds` is the start: loading, the first buffer), and the background
/// harvest's thread. On a GPU the steps are issued, not run: the device's work shows where
/// the thread waits for it, in `metrics` (read back every `log_every` steps) or in
/// `activations` (the harvest's forward passes share the device).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimeSplit {
    /// Getting rows: waiting for the background harvest, harvesting inline, or reading
    /// the activation cache.
    pub activations: f64,
    /// Shuffling the buffer, taking each batch and sending it to the device.
    pub batches: f64,
    /// The SAE steps (on wgpu, issuing them).
    pub steps: f64,
    /// Reading the metrics and feature counts back.
    pub metrics: f64,
    pub evaluation: f64,
    pub checkpoints: f64,
    /// The background harvest's thread: its forward passes (hook_z read back included).
    pub harvest_forward: Option<f64>,
    /// The background harvest's thread: waiting for the trainer to take a chunk (chunks
    /// ahead already waiting: harvesting keeps up).
    pub harvest_blocked: Option<f64>,
}

impl TimeSplit {
    /// One line for a run of `seconds`: each part of 1% or more (the steps always) and its
    /// share.
    pub fn describe(&self, seconds: f64) -> String {
        let secs = |s: f64| {
            if s < 10.0 {
                format!("{s:.2} s")
            } else {
                format!("{s:.1} s")
            }
        };
        let total = seconds.max(1e-9);
        let parts = [
            ("steps", self.steps),
            ("metrics read-back", self.metrics),
            ("waiting for activations", self.activations),
            ("batches", self.batches),
            ("evaluation", self.evaluation),
            ("checkpoints", self.checkpoints),
        ];
        let busy: f64 = parts.iter().map(|p| p.1).sum();
        let mut out: Vec<String> = parts
            .iter()
            .chain([("start", (seconds - busy).max(0.0))].iter())
            .filter(|p| p.1 >= 0.01 * total || p.0 == "steps")
            .map(|(name, s)| format!("{name} {} ({:.0}%)", secs(*s), 100.0 * s / total))
            .collect();
        if let (Some(f), Some(b)) = (self.harvest_forward, self.harvest_blocked) {
            out.push(format!(
                "harvest thread: forward passes {}, waiting for the trainer {}",
                secs(f),
                secs(b)
            ));
        }
        out.join(", ")
    }
}

/// Run-time controls that are not part of the configuration.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Set to stop after the current step (a checkpoint is written).
    pub stop: Arc<AtomicBool>,
    /// Stop (with a checkpoint) once this step is reached.
    pub stop_after: Option<usize>,
    /// True while the training steps run (the model loaded, the first buffer filled): a
    /// `stop` set then ends the run after the step with a checkpoint. Ctrl-C in
    /// `train --headless` reads it to choose between that and quitting at once.
    pub in_steps: Arc<AtomicBool>,
}

fn send(events: &Sender<TrainEvent>, e: TrainEvent) {
    // The receiver going away (a closed window) must not stop training.
    let _ = events.send(e);
}

/// Adam moments for one parameter.
struct Moments<const D: usize> {
    m: Tensor<D>,
    v: Tensor<D>,
}

impl<const D: usize> Moments<D> {
    fn zeros(like: &Tensor<D>) -> Self {
        Self {
            m: like.zeros_like(),
            v: like.zeros_like(),
        }
    }
}

/// One Adam update (PyTorch semantics, eps 1e-8) on plain tensors.
fn adam_update<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    mom: &mut Moments<D>,
    lr: f64,
    betas: (f64, f64),
    t: usize,
) -> Tensor<D> {
    let (b1, b2) = betas;
    mom.m = mom.m.clone() * b1 + grad.clone() * (1.0 - b1);
    mom.v = mom.v.clone() * b2 + grad.square() * (1.0 - b2);
    let bc1 = 1.0 - b1.powi(t as i32);
    let bc2 = 1.0 - b2.powi(t as i32);
    let denom = (mom.v.clone() / bc2).sqrt() + 1e-8;
    param - (mom.m.clone() / bc1) / denom * lr
}

/// The optimizer over the SAE's parameters.
///
/// On the CPU backend an SAE trains through the fused step in [`fused_cpu`], which keeps
/// the parameters and Adam moments on the host and writes the parameters back into the
/// `BlockDiagSae` after every step. Everything else goes through burn's autodiff.
pub struct SaeOptimizer {
    state: OptState,
    pub t: usize,
}

// One per training run, never moved in a loop: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum OptState {
    Autodiff {
        w_enc: Moments<3>,
        b_enc: Moments<2>,
        w_dec: Moments<3>,
        b_dec: Moments<2>,
        log_threshold: Option<Moments<2>>,
    },
    Fused {
        params: HostParams,
        adam: HostAdam,
        grads: HostParams,
    },
    /// The WGSL step on wgpu: parameters and moments on the device (`None` only while a
    /// step holds them).
    Wgsl {
        state: Option<wgsl::StepState<burn::backend::Dispatch>>,
        shape: wgsl::ParamShape,
    },
}

/// The result of one training step: loss terms and the batch sums metrics are made of.
pub struct StepOutput {
    pub mse: Tensor<1>,
    pub sparsity: Tensor<1>,
    pub total: Tensor<1>,
    /// Firings per feature in this batch, [H, m].
    pub fired: Tensor<2>,
    /// Summed squared reconstruction error per head, `[H]`.
    pub resid_sq: Tensor<1>,
    /// Squared norm of each token's reconstruction per head, [H, B].
    pub recon_sq: Tensor<2>,
    /// The AuxK term, without its coefficient (`None` when the step had no AuxK).
    pub aux: Option<Tensor<1>>,
    /// BatchTopK: each head's threshold over this batch, `[H]` (`None` otherwise).
    pub batch_threshold: Option<Tensor<1>>,
}

/// The parameter names of the optimizer file, in the order of `HostParams::arrays`.
const PARAM_NAMES: [&str; 5] = ["W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"];

impl SaeOptimizer {
    /// The fused CPU step on the CPU backend, the WGSL step on wgpu.
    pub fn new(sae: &BlockDiagSae) -> Self {
        let params = || HostParams::from_sae(sae).expect("reading the SAE's parameters");
        match fast_path(sae) {
            FastPath::Cpu => Self::fused(params(), None),
            FastPath::Wgsl => Self::wgsl(params(), None, &sae.device()),
            FastPath::None => Self::with_autodiff(sae),
        }
    }

    /// [`SaeOptimizer::new`], or autodiff when `step` asks for it.
    pub fn for_step(sae: &BlockDiagSae, step: StepKind) -> Self {
        match step {
            StepKind::Auto => Self::new(sae),
            StepKind::Autodiff => Self::with_autodiff(sae),
        }
    }

    fn wgsl(params: HostParams, adam: Option<&HostAdam>, device: &Device) -> Self {
        let state = wgsl::StepState::from_host(&params, adam, device);
        let shape = wgsl::ParamShape::of(&params);
        Self {
            state: OptState::Wgsl {
                state: Some(state),
                shape,
            },
            t: 0,
        }
    }

    /// Always burn's autodiff, on any device.
    pub fn with_autodiff(sae: &BlockDiagSae) -> Self {
        Self {
            state: OptState::Autodiff {
                w_enc: Moments::zeros(&sae.w_enc),
                b_enc: Moments::zeros(&sae.b_enc),
                w_dec: Moments::zeros(&sae.w_dec),
                b_dec: Moments::zeros(&sae.b_dec),
                log_threshold: sae.log_threshold.as_ref().map(Moments::zeros),
            },
            t: 0,
        }
    }

    fn fused(params: HostParams, adam: Option<HostAdam>) -> Self {
        let adam = adam.unwrap_or_else(|| HostAdam::zeros(&params));
        Self {
            state: OptState::Fused {
                grads: params.zeros_like(),
                params,
                adam,
            },
            t: 0,
        }
    }

    /// True when steps run through the fused CPU path.
    pub fn is_fused(&self) -> bool {
        matches!(self.state, OptState::Fused { .. })
    }

    /// Which step this optimizer runs: "fused CPU", "WGSL" or "autodiff".
    pub fn path(&self) -> &'static str {
        match self.state {
            OptState::Fused { .. } => "fused CPU",
            OptState::Wgsl { .. } => "WGSL",
            OptState::Autodiff { .. } => "autodiff",
        }
    }

    /// One optimisation step on `x` [H, B, d] (SAE input space). Returns the loss terms
    /// and batch sums (on the device; nothing is read back on the autodiff path).
    pub fn step(
        &mut self,
        sae: &mut BlockDiagSae,
        x: Tensor<3>,
        l1: f64,
        lr: f64,
        betas: (f64, f64),
        clip: f64,
    ) -> StepOutput {
        self.step_with_aux(sae, x, l1, lr, betas, clip, None)
    }

    /// [`SaeOptimizer::step`] with the AuxK term in the loss when `aux` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn step_with_aux(
        &mut self,
        sae: &mut BlockDiagSae,
        x: Tensor<3>,
        l1: f64,
        lr: f64,
        betas: (f64, f64),
        clip: f64,
        aux: Option<&fused_cpu::AuxK>,
    ) -> StepOutput {
        self.t += 1;
        let t = self.t;
        match &mut self.state {
            OptState::Fused {
                params,
                adam,
                grads,
            } => {
                let device = x.device();
                let [h, b, d] = x.dims();
                let m = params.m;
                let xs = crate::files::host_vec(x).expect("reading a CPU tensor");
                let act = Activation::new(sae.config.architecture, l1);
                let sums = fused_cpu::loss_and_grads_aux(params, &xs, b, act, aux, grads);
                fused_cpu::clip_and_adam(params, grads, adam, lr, betas, t, clip);
                sae.w_enc = host_tensor(&params.w_enc, [h, d, m], &device);
                sae.b_enc = host_tensor(&params.b_enc, [h, m], &device);
                sae.w_dec = host_tensor(&params.w_dec, [h, m, d], &device);
                sae.b_dec = host_tensor(&params.b_dec, [h, d], &device);
                if sae.log_threshold.is_some() {
                    sae.log_threshold = Some(host_tensor(&params.log_threshold, [h, m], &device));
                }
                let scalar = |v: f64| Tensor::<1>::from_floats([v as f32], &device);
                let resid: Vec<f32> = sums.resid_sq.iter().map(|&v| v as f32).collect();
                StepOutput {
                    mse: scalar(sums.mse),
                    sparsity: scalar(sums.sparsity),
                    total: scalar(sums.total),
                    fired: host_tensor(&sums.fired, [h, m], &device),
                    resid_sq: host_tensor(&resid, [h], &device),
                    recon_sq: host_tensor(&sums.recon_sq, [h, b], &device),
                    aux: aux.map(|_| scalar(sums.aux)),
                    batch_threshold: (!sums.head_threshold.is_empty())
                        .then(|| host_tensor(&sums.head_threshold, [h], &device)),
                }
            }
            OptState::Wgsl { state, .. } => {
                let spec = wgsl::StepSpec {
                    act: Activation::new(sae.config.architecture, l1),
                    lr,
                    betas,
                    t,
                    clip,
                    sparse_below: wgsl_knobs().sparse_below,
                    burn_encoder: wgsl_knobs().burn_encoder,
                    one_group_select: wgsl_knobs().one_group_select,
                    wide_tiles: wgsl_knobs().wide_tiles,
                    aux_k: None,
                };
                let state_in = state.take().expect("state between steps");
                let r = wgsl::run_step(x, state_in, spec, aux);
                let s = &r.state;
                sae.w_enc = Tensor::from_dispatch(s.w_enc.clone());
                sae.b_enc = Tensor::from_dispatch(s.b_enc.clone());
                sae.w_dec = Tensor::from_dispatch(s.w_dec.clone());
                sae.b_dec = Tensor::from_dispatch(s.b_dec.clone());
                if sae.log_threshold.is_some() {
                    sae.log_threshold = Some(Tensor::from_dispatch(s.log_threshold.clone()));
                }
                let terms = Tensor::<1>::from_dispatch(r.terms);
                *state = Some(r.state);
                StepOutput {
                    mse: terms.clone().narrow(0, 0, 1),
                    sparsity: terms.clone().narrow(0, 1, 1),
                    total: terms.narrow(0, 2, 1),
                    fired: Tensor::from_dispatch(r.fired),
                    resid_sq: Tensor::from_dispatch(r.resid_sq),
                    recon_sq: Tensor::from_dispatch(r.recon_sq),
                    aux: aux.map(|_| Tensor::from_dispatch(r.aux)),
                    batch_threshold: matches!(
                        sae.config.architecture,
                        Architecture::BatchTopK { .. }
                    )
                    .then(|| {
                        let thr = Tensor::<2>::from_dispatch(r.thresholds);
                        let h = thr.dims()[0];
                        thr.narrow(1, 0, 1).reshape([h])
                    }),
                }
            }
            OptState::Autodiff {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                log_threshold,
            } => {
                let tracked = sae.tracked();
                let x_ad = x.clone().autodiff();
                let (out, mut terms) = tracked.loss(x_ad.clone(), l1);
                let aux_term = aux.map(|a| a.add_to_loss(&tracked, x_ad, &out, &mut terms));
                let grads = terms.total.backward();
                let g = |t: &Tensor<3>| t.grad(&grads).expect("parameter has a gradient");
                let g2 = |t: &Tensor<2>| t.grad(&grads).expect("parameter has a gradient");
                let (mut gwe, mut gbe, mut gwd, mut gbd) = (
                    g(&tracked.w_enc),
                    g2(&tracked.b_enc),
                    g(&tracked.w_dec),
                    g2(&tracked.b_dec),
                );
                let mut glt = tracked.log_threshold.as_ref().map(g2);
                if clip > 0.0 {
                    // torch.nn.utils.clip_grad_norm_: coef = min(1, max_norm / (norm + 1e-6)).
                    let mut sq = gwe.clone().square().sum()
                        + gbe.clone().square().sum()
                        + gwd.clone().square().sum()
                        + gbd.clone().square().sum();
                    if let Some(g) = &glt {
                        sq = sq + g.clone().square().sum();
                    }
                    let coef = (sq.sqrt() + 1e-6).recip().mul_scalar(clip).clamp_max(1.0);
                    gwe = gwe * coef.clone().reshape([1, 1, 1]);
                    gbe = gbe * coef.clone().reshape([1, 1]);
                    gwd = gwd * coef.clone().reshape([1, 1, 1]);
                    glt = glt.map(|g| g * coef.clone().reshape([1, 1]));
                    gbd = gbd * coef.reshape([1, 1]);
                }
                sae.w_enc = adam_update(sae.w_enc.clone(), gwe, w_enc, lr, betas, t);
                sae.b_enc = adam_update(sae.b_enc.clone(), gbe, b_enc, lr, betas, t);
                sae.w_dec = adam_update(sae.w_dec.clone(), gwd, w_dec, lr, betas, t);
                sae.b_dec = adam_update(sae.b_dec.clone(), gbd, b_dec, lr, betas, t);
                if let (Some(lt), Some(g), Some(mom)) =
                    (sae.log_threshold.clone(), glt, log_threshold.as_mut())
                {
                    sae.log_threshold = Some(adam_update(lt, g, mom, lr, betas, t));
                }
                let out = SaeOutput {
                    pre: out.pre.inner(),
                    feats: out.feats.inner(),
                    recon: out.recon.inner(),
                };
                let batch_threshold = match sae.config.architecture {
                    Architecture::BatchTopK { k } => {
                        let [h, b, m] = out.pre.dims();
                        let flat = out.pre.clone().reshape([h, b * m]);
                        let n = (k * b).min(b * m);
                        Some(crate::sae::kth_largest(flat, n, 1).reshape([h]))
                    }
                    _ => None,
                };
                let (fired, resid_sq, recon_sq) = metrics::step_sums(x, &out);
                StepOutput {
                    mse: terms.mse.inner(),
                    sparsity: terms.sparsity.inner(),
                    total: terms.total.inner(),
                    fired,
                    resid_sq,
                    recon_sq,
                    aux: aux_term.map(|t| t.inner()),
                    batch_threshold,
                }
            }
        }
    }

    fn to_arrays(&self) -> anyhow::Result<Vec<NamedArray>> {
        match &self.state {
            OptState::Wgsl { state, shape } => {
                let state = state.as_ref().expect("state between steps");
                let (params, adam) = state.to_host(*shape)?;
                Ok(host_adam_arrays(&params, &adam))
            }
            OptState::Fused { params, adam, .. } => Ok(host_adam_arrays(params, adam)),
            OptState::Autodiff {
                w_enc,
                b_enc,
                w_dec,
                b_dec,
                log_threshold,
            } => {
                let mut arrays = vec![
                    NamedArray::from_tensor("m.W_enc", w_enc.m.clone())?,
                    NamedArray::from_tensor("v.W_enc", w_enc.v.clone())?,
                    NamedArray::from_tensor("m.b_enc", b_enc.m.clone())?,
                    NamedArray::from_tensor("v.b_enc", b_enc.v.clone())?,
                    NamedArray::from_tensor("m.W_dec", w_dec.m.clone())?,
                    NamedArray::from_tensor("v.W_dec", w_dec.v.clone())?,
                    NamedArray::from_tensor("m.b_dec", b_dec.m.clone())?,
                    NamedArray::from_tensor("v.b_dec", b_dec.v.clone())?,
                ];
                if let Some(mom) = log_threshold {
                    arrays.push(NamedArray::from_tensor("m.log_threshold", mom.m.clone())?);
                    arrays.push(NamedArray::from_tensor("v.log_threshold", mom.v.clone())?);
                }
                Ok(arrays)
            }
        }
    }

    fn load(
        sae: &BlockDiagSae,
        path: &Path,
        t: usize,
        device: &Device,
        step: StepKind,
    ) -> anyhow::Result<Self> {
        let file = WeightFile::open(path)?;
        let (h, d, m) = (
            sae.config.n_heads,
            sae.config.d_head,
            sae.config.features_per_head,
        );
        let path = match step {
            StepKind::Auto => fast_path(sae),
            StepKind::Autodiff => FastPath::None,
        };
        if path != FastPath::None {
            let params = HostParams::from_sae(sae)?;
            let mut adam = HostAdam::zeros(&params);
            let shapes = param_shapes(&params);
            for (i, (name, shape)) in PARAM_NAMES.iter().zip(shapes).enumerate() {
                if params.arrays()[i].is_empty() {
                    continue;
                }
                *adam.m.arrays_mut()[i] = file.read_shaped(&format!("m.{name}"), &shape)?.data;
                *adam.v.arrays_mut()[i] = file.read_shaped(&format!("v.{name}"), &shape)?.data;
            }
            let mut opt = match path {
                FastPath::Cpu => Self::fused(params, Some(adam)),
                _ => Self::wgsl(params, Some(&adam), device),
            };
            opt.t = t;
            return Ok(opt);
        }
        let t3 = |n: &str, s: [usize; 3]| -> anyhow::Result<Tensor<3>> {
            Ok(file.read_shaped(n, &s)?.into_tensor(device))
        };
        let t2 = |n: &str, s: [usize; 2]| -> anyhow::Result<Tensor<2>> {
            Ok(file.read_shaped(n, &s)?.into_tensor(device))
        };
        Ok(Self {
            state: OptState::Autodiff {
                w_enc: Moments {
                    m: t3("m.W_enc", [h, d, m])?,
                    v: t3("v.W_enc", [h, d, m])?,
                },
                b_enc: Moments {
                    m: t2("m.b_enc", [h, m])?,
                    v: t2("v.b_enc", [h, m])?,
                },
                w_dec: Moments {
                    m: t3("m.W_dec", [h, m, d])?,
                    v: t3("v.W_dec", [h, m, d])?,
                },
                b_dec: Moments {
                    m: t2("m.b_dec", [h, d])?,
                    v: t2("v.b_dec", [h, d])?,
                },
                log_threshold: match sae.log_threshold {
                    Some(_) => Some(Moments {
                        m: t2("m.log_threshold", [h, m])?,
                        v: t2("v.log_threshold", [h, m])?,
                    }),
                    None => None,
                },
            },
            t,
        })
    }
}

/// The WGSL step's benchmark knobs, read once: the density under which it takes its
/// sparse path (the fused CPU step's, or `ATTN_SAES_SPARSE_BELOW`: 0 keeps the dense path,
/// 1 the sparse one whenever it fits), whether burn's matmul makes the encoder product
/// (`ATTN_SAES_WGSL_ENCODER=burn`), whether BatchTopK's thresholds come from one
/// workgroup per head (`ATTN_SAES_BATCHTOPK_SELECT=one`), and whether the matmuls take
/// wide tiles (the default; `ATTN_SAES_WGSL_TILES=small` for the earlier 64 x 64).
fn wgsl_knobs() -> &'static WgslKnobs {
    static KNOBS: std::sync::OnceLock<WgslKnobs> = std::sync::OnceLock::new();
    KNOBS.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok();
        WgslKnobs {
            sparse_below: (var("ATTN_SAES_SPARSE_BELOW").and_then(|v| v.parse().ok()))
                .unwrap_or(fused_cpu::SPARSE_BELOW),
            burn_encoder: var("ATTN_SAES_WGSL_ENCODER").as_deref() == Some("burn"),
            one_group_select: var("ATTN_SAES_BATCHTOPK_SELECT").as_deref() == Some("one"),
            wide_tiles: var("ATTN_SAES_WGSL_TILES").as_deref() != Some("small"),
        }
    })
}

/// [`wgsl_knobs`]: [`wgsl::StepSpec`]'s fields of the same names.
struct WgslKnobs {
    sparse_below: f64,
    burn_encoder: bool,
    one_group_select: bool,
    wide_tiles: bool,
}

/// The step without autodiff that an SAE's device has.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FastPath {
    /// The fused CPU step, on the CPU backend.
    Cpu,
    /// The WGSL step, on wgpu.
    Wgsl,
    None,
}

/// Both fast steps cover every architecture: the fused CPU step on the CPU backend, the
/// WGSL step on any other (wgpu) device.
fn fast_path(sae: &BlockDiagSae) -> FastPath {
    let arch_ok = match sae.config.architecture {
        Architecture::Relu | Architecture::TopK { .. } | Architecture::BatchTopK { .. } => {
            sae.log_threshold.is_none()
        }
        Architecture::JumpRelu { .. } => sae.log_threshold.is_some(),
    };
    match (arch_ok, sae.device() == Device::flex()) {
        (false, _) => FastPath::None,
        (true, true) => FastPath::Cpu,
        (true, false) => FastPath::Wgsl,
    }
}

/// The optimizer file's arrays (`m.NAME`, `v.NAME`) from host moments.
fn host_adam_arrays(params: &HostParams, adam: &HostAdam) -> Vec<NamedArray> {
    let shapes = param_shapes(params);
    let mut arrays = Vec::new();
    for (i, (name, shape)) in PARAM_NAMES.iter().zip(shapes).enumerate() {
        if params.arrays()[i].is_empty() {
            continue; // no thresholds unless JumpReLU
        }
        arrays.push(NamedArray::new(
            format!("m.{name}"),
            shape.clone(),
            adam.m.arrays()[i].clone(),
        ));
        arrays.push(NamedArray::new(
            format!("v.{name}"),
            shape,
            adam.v.arrays()[i].clone(),
        ));
    }
    arrays
}

fn param_shapes(p: &HostParams) -> [Vec<usize>; 5] {
    let (h, d, m) = (p.n_heads, p.d_head, p.m);
    [
        vec![h, d, m],
        vec![h, m],
        vec![h, m, d],
        vec![h, d],
        vec![h, m],
    ]
}

fn host_tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

fn scalar(t: Tensor<1>) -> f64 {
    crate::files::host_vec(t)
        .ok()
        .and_then(|v| v.first().copied())
        .map_or(f64::NAN, f64::from)
}

/// Per-head geometric median (Weiszfeld) of rows `[n, H, d]`, for `b_dec` initialisation.
pub fn geometric_median(rows: &[f32], n_heads: usize, d: usize, iters: usize) -> Vec<f32> {
    let n = rows.len() / (n_heads * d);
    let mut out = Vec::with_capacity(n_heads * d);
    for h in 0..n_heads {
        let point = |i: usize| &rows[(i * n_heads + h) * d..(i * n_heads + h + 1) * d];
        let mut y: Vec<f64> = vec![0.0; d];
        for i in 0..n {
            for (a, &b) in y.iter_mut().zip(point(i)) {
                *a += b as f64 / n as f64;
            }
        }
        for _ in 0..iters {
            let mut num = vec![0f64; d];
            let mut den = 0f64;
            for i in 0..n {
                let p = point(i);
                let dist = p
                    .iter()
                    .zip(&y)
                    .map(|(&a, b)| (a as f64 - b).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-8);
                for (acc, &a) in num.iter_mut().zip(p) {
                    *acc += a as f64 / dist;
                }
                den += 1.0 / dist;
            }
            y = num.into_iter().map(|v| v / den).collect();
        }
        out.extend(y.into_iter().map(|v| v as f32));
    }
    out
}

/// Drops the lines of `metrics.jsonl` after `step` (and any partial line), so that a
/// resumed run's file holds each step once.
fn truncate_metrics(path: &Path, step: usize) -> anyhow::Result<()> {
    use crate::run_log::LogLine;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        let at = match serde_json::from_str::<LogLine>(line) {
            Ok(LogLine::Step(s)) => s.step,
            Ok(LogLine::Eval(e)) => e.step,
            Err(_) => continue,
        };
        if at <= step {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if kept.len() != text.len() {
        crate::files::write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

pub use run::{RunPlan, StepOutcome, Trainer, train};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::write_safetensors;
    use crate::rng::Rng;

    /// The run's account: each part and its share of the run, the start as what is left,
    /// parts under 1% left out (the steps always shown), the harvest thread's after.
    #[test]
    fn a_runs_time_is_described_part_by_part() {
        let t = TimeSplit {
            activations: 6.0,
            batches: 0.5,
            steps: 2.0,
            metrics: 1.0,
            evaluation: 0.0,
            checkpoints: 0.09,
            harvest_forward: None,
            harvest_blocked: None,
        };
        assert_eq!(
            t.describe(10.0),
            "steps 2.00 s (20%), metrics read-back 1.00 s (10%), waiting for activations 6.00 \
             s (60%), batches 0.50 s (5%), start 0.41 s (4%)"
        );
        let t = TimeSplit {
            steps: 0.0,
            activations: 60.0,
            harvest_forward: Some(70.5),
            harvest_blocked: Some(0.25),
            ..t
        };
        assert_eq!(
            t.describe(70.0),
            "steps 0.00 s (0%), metrics read-back 1.00 s (1%), waiting for activations 60.0 s \
             (86%), start 8.41 s (12%), harvest thread: forward passes 70.5 s, waiting for the \
             trainer 0.25 s"
        );
    }

    /// Optimizer files are the same whichever path wrote them: Adam state saved by the
    /// autodiff path and loaded into the fused one continues the same trajectory.
    #[test]
    fn optimizer_state_moves_between_autodiff_and_fused_paths() {
        let device = Device::flex();
        for architecture in [
            Architecture::Relu,
            Architecture::JumpRelu { bandwidth: 0.05 },
        ] {
            let mut rng = Rng::new(5);
            let config = SaeConfig {
                n_heads: 2,
                d_head: 8,
                features_per_head: 24,
                architecture,
            };
            let mut sae = BlockDiagSae::init(config, &mut rng, &device);
            if sae.log_threshold.is_some() {
                sae.log_threshold = Some(Tensor::full([2, 24], 0.2f64.ln(), &device));
            }
            let xs: Vec<f32> = (0..2 * 40 * 8).map(|_| rng.normal() as f32).collect();
            let x = Tensor::<3>::from_data(TensorData::new(xs, [2, 40, 8]), &device);
            let step = |opt: &mut SaeOptimizer, sae: &mut BlockDiagSae| {
                opt.step(sae, x.clone(), 0.3, 1e-2, (0.9, 0.999), 1.0);
            };
            let mut autodiff = SaeOptimizer::with_autodiff(&sae);
            step(&mut autodiff, &mut sae);
            step(&mut autodiff, &mut sae);
            let dir = std::env::temp_dir().join(format!("attn-saes-opt-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{}.safetensors", architecture.name()));
            write_safetensors(&path, &autodiff.to_arrays().unwrap(), None).unwrap();
            let mut fused =
                SaeOptimizer::load(&sae, &path, autodiff.t, &device, StepKind::Auto).unwrap();
            assert!(fused.is_fused());
            let mut sae_fused = sae.clone();
            step(&mut autodiff, &mut sae);
            step(&mut fused, &mut sae_fused);
            let a = HostParams::from_sae(&sae).unwrap();
            let b = HostParams::from_sae(&sae_fused).unwrap();
            for (x, y) in a.arrays().iter().zip(b.arrays()) {
                assert_eq!(x.len(), y.len());
                for (u, v) in x.iter().zip(y.iter()) {
                    assert!((u - v).abs() < 1e-5, "{architecture:?}: {u} vs {v}");
                }
            }
            // And back: the fused path's file loads into autodiff on any device.
            let path2 = dir.join("fused.safetensors");
            write_safetensors(&path2, &fused.to_arrays().unwrap(), None).unwrap();
            let names = WeightFile::open(&path2).unwrap().names();
            let mut want: Vec<String> = autodiff
                .to_arrays()
                .unwrap()
                .into_iter()
                .map(|a| a.name)
                .collect();
            let mut names = names;
            names.sort();
            want.sort();
            assert_eq!(names, want);
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    #[test]
    fn geometric_median_resists_outliers() {
        // Head 0: four points around (1, 1) and one far outlier; head 1: a symmetric cross.
        let pts: [[f32; 4]; 5] = [
            [0.9, 1.0, 1.0, 0.0],
            [1.1, 1.0, -1.0, 0.0],
            [1.0, 0.9, 0.0, 1.0],
            [1.0, 1.1, 0.0, -1.0],
            [100.0, 100.0, 0.0, 0.0],
        ];
        let rows: Vec<f32> = pts.iter().flatten().copied().collect();
        let median = geometric_median(&rows, 2, 2, 200);
        assert!(
            (median[0] - 1.0).abs() < 0.05 && (median[1] - 1.0).abs() < 0.05,
            "{median:?}"
        );
        assert!(
            median[2].abs() < 1e-3 && median[3].abs() < 1e-3,
            "{median:?}"
        );
        let mean0 = pts.iter().map(|p| p[0]).sum::<f32>() / 5.0;
        assert!(mean0 > 20.0, "the mean is pulled away, the median is not");
    }
}
