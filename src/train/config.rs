//! Trainer: every hyperparameter of a training run in one config, read from TOML and
//! overridden by CLI flags, saved beside every checkpoint.

use std::path::PathBuf;

use anyhow::{bail, ensure};

use crate::device::DeviceChoice;
use crate::lm::ZConvention;
use crate::sae::Normalization;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ArchitectureKind {
    /// ReLU + decoder-norm-weighted L1 (the seed's).
    #[default]
    Relu,
    /// Exactly k active features per head per token.
    Topk,
    /// k per head per token on average over the batch.
    BatchTopk,
    /// Learned threshold per feature, L0 penalty (coefficient: `l1_coefficient`).
    Jumprelu,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    #[default]
    Constant,
    Cosine,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    #[default]
    Zeros,
    /// Geometric median of a sample of the training data, per head.
    GeometricMedian,
}

/// The training step's implementation.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Without autodiff: the fused CPU step on the CPU, the WGSL kernels on wgpu.
    #[default]
    Auto,
    /// burn's autodiff (the reference path), on any device.
    Autodiff,
}

/// A training run's full configuration. Field names are the TOML keys; CLI flags use the
/// same names in kebab case.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Model reference (directory, .gguf, hub id or alias).
    pub model: String,
    /// Corpus: text file, directory, .jsonl or .parquet.
    pub dataset: PathBuf,
    /// Text column for JSONL/Parquet datasets (default `text`).
    pub text_column: Option<String>,
    /// Read activations from this cache (written by `harvest`) instead of running the LM.
    pub activation_cache: Option<PathBuf>,
    /// Layer whose hook_z is trained on; unset means the middle layer (`n_layers / 2`).
    pub hook_layer: Option<usize>,
    pub z_convention: ZConvention,
    /// Features per head = expansion_factor * d_head (so d_sae = expansion_factor * d_in).
    pub expansion_factor: usize,
    /// Overrides the total number of features; must be a multiple of the number of heads.
    pub d_sae: Option<usize>,
    /// One dense SAE over the concatenated heads instead of one per head.
    pub dense: bool,
    pub architecture: ArchitectureKind,
    /// Active features per head (TopK / BatchTopK).
    pub k: usize,
    /// Sparsity coefficient: of the L1 penalty (ReLU) or the L0 penalty (JumpReLU).
    pub l1_coefficient: f64,
    /// Width of the straight-through rectangle kernel (JumpReLU).
    pub jumprelu_bandwidth: f64,
    /// Coefficient of the AuxK loss, which trains dead features to reconstruct the error
    /// of the live ones (TopK and BatchTopK; unset: [`DEFAULT_AUX_K_COEFFICIENT`], 0 = off).
    /// A checkpoint's config written before AuxK existed reads as 0.
    pub aux_k_coefficient: Option<f64>,
    /// Dead features per token and head in the AuxK loss (unset: half the SAE's input
    /// size, `d_head / 2`).
    pub aux_k: Option<usize>,
    /// Steps over which the L1 coefficient ramps up (default: 5% of training).
    pub l1_warmup_steps: Option<usize>,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub lr_warmup_steps: usize,
    /// Steps at the end over which the learning rate decays to zero (constant schedule).
    pub lr_decay_steps: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip_norm: f64,
    pub total_training_steps: usize,
    /// Tokens per training batch.
    pub batch_size: usize,
    pub context_size: usize,
    pub n_batches_in_buffer: usize,
    /// Context windows per LM forward pass while harvesting.
    pub windows_per_forward: usize,
    /// Harvest activations on a background thread while training (default: on for GPUs,
    /// off for the CPU backend, where both share the same cores). Same data either way.
    pub harvest_in_background: Option<bool>,
    pub normalization: Normalization,
    /// Batches used to estimate the normalisation factor.
    pub normalization_batches: usize,
    pub b_dec_init: BDecInit,
    /// Leave BOS positions out of training and metrics.
    pub drop_bos: bool,
    pub seed: u64,
    pub log_every: usize,
    pub eval_every: usize,
    /// Context windows used for each CE-loss evaluation.
    pub eval_windows: usize,
    pub checkpoint_every: usize,
    /// Checkpoints kept (the newest; 0 keeps all). Each holds the shuffle buffer.
    pub keep_checkpoints: usize,
    /// Window (in steps) over which feature firing is counted for dead features.
    pub dead_window_steps: usize,
    /// A feature firing on fewer than this fraction of tokens in the window is dead.
    pub dead_threshold: f64,
    pub out_dir: PathBuf,
    pub device: DeviceChoice,
    /// The training step: `auto` (fused CPU / WGSL kernels) or `autodiff`.
    pub step: StepKind,
}

pub use crate::assets::{DEMO_CORPUS_DIR, DEMO_MODEL_FILE, cache_dir as asset_cache};

/// The defaults are the offline demo: SmolLM2-135M layer 24 on Shakespeare, sized to train
/// in a few minutes on a laptop CPU (400 steps of 512 tokens, a high learning rate).
/// Long runs want the seed's settings (see README).
impl Default for TrainConfig {
    fn default() -> Self {
        let cache = asset_cache();
        Self {
            model: cache.join(DEMO_MODEL_FILE).display().to_string(),
            dataset: cache.join(DEMO_CORPUS_DIR),
            text_column: None,
            activation_cache: None,
            hook_layer: None,
            z_convention: ZConvention::TransformerLens,
            expansion_factor: 8,
            d_sae: None,
            dense: false,
            architecture: ArchitectureKind::Relu,
            k: 8,
            l1_coefficient: 2.0,
            jumprelu_bandwidth: 0.001,
            aux_k_coefficient: None,
            aux_k: None,
            l1_warmup_steps: None,
            lr: 4e-3,
            lr_schedule: LrSchedule::Constant,
            lr_warmup_steps: 0,
            lr_decay_steps: 0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            grad_clip_norm: 1.0,
            total_training_steps: 400,
            batch_size: 512,
            context_size: 128,
            n_batches_in_buffer: 16,
            windows_per_forward: 8,
            harvest_in_background: None,
            normalization: Normalization::Global,
            normalization_batches: 8,
            b_dec_init: BDecInit::Zeros,
            drop_bos: true,
            seed: 42,
            log_every: 10,
            eval_every: 200,
            eval_windows: 4,
            checkpoint_every: 200,
            keep_checkpoints: 3,
            dead_window_steps: 200,
            dead_threshold: 1e-4,
            out_dir: PathBuf::from("runs/latest"),
            device: DeviceChoice::Auto,
            step: StepKind::Auto,
        }
    }
}

/// The AuxK coefficient of TopK and BatchTopK runs when none is given: the paper's 1/32.
pub const DEFAULT_AUX_K_COEFFICIENT: f64 = 1.0 / 32.0;

impl TrainConfig {
    /// The AuxK coefficient in effect: 0 unless the architecture is TopK or BatchTopK.
    pub fn aux_k_coefficient(&self) -> f64 {
        match self.architecture {
            ArchitectureKind::Topk | ArchitectureKind::BatchTopk => {
                self.aux_k_coefficient.unwrap_or(DEFAULT_AUX_K_COEFFICIENT)
            }
            ArchitectureKind::Relu | ArchitectureKind::Jumprelu => 0.0,
        }
    }

    /// Dead features per token and head in the AuxK loss, for an SAE of input size `d`.
    pub fn aux_k(&self, d: usize) -> usize {
        self.aux_k.unwrap_or((d / 2).max(1))
    }

    /// A checkpoint's config as TOML: a config without `aux_k_coefficient` was written
    /// before AuxK existed, by a run that trained without it, and resumes without it.
    pub fn from_saved_toml(path: &std::path::Path) -> anyhow::Result<Self> {
        let mut c = Self::from_toml(path)?;
        if c.aux_k_coefficient.is_none() {
            c.aux_k_coefficient = Some(0.0);
        }
        Ok(c)
    }

    /// Reads a TOML config; unknown keys are errors.
    pub fn from_toml(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The hooked layer for a model with `n_layers` layers.
    /// Unset, it is [`crate::assets::DEMO_HOOK_LAYER`] for the demo model and the middle
    /// layer (`n_layers / 2`) for any other.
    pub fn layer(&self, n_layers: usize) -> usize {
        let demo = crate::assets::demo_paths(&crate::assets::cache_dir()).model;
        self.hook_layer
            .unwrap_or(if self.model == demo.display().to_string() {
                crate::assets::DEMO_HOOK_LAYER
            } else {
                n_layers / 2
            })
    }

    pub fn l1_warmup(&self) -> usize {
        self.l1_warmup_steps
            .unwrap_or(self.total_training_steps / 20)
            .max(1)
    }

    /// Sparsity coefficient at `step`: linear warmup to `l1_coefficient`.
    pub fn l1_at(&self, step: usize) -> f64 {
        self.l1_coefficient * ((step + 1) as f64 / self.l1_warmup() as f64).min(1.0)
    }

    /// Learning rate at `step`: linear warmup, then constant (with optional linear decay at
    /// the end) or cosine to zero.
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = self.lr_warmup_steps;
        if step < warm {
            return self.lr * (step + 1) as f64 / warm as f64;
        }
        let total = self.total_training_steps.max(1);
        match self.lr_schedule {
            LrSchedule::Constant => {
                let decay_start = total.saturating_sub(self.lr_decay_steps);
                if self.lr_decay_steps > 0 && step >= decay_start {
                    self.lr * (total - step) as f64 / self.lr_decay_steps as f64
                } else {
                    self.lr
                }
            }
            LrSchedule::Cosine => {
                let span = (total - warm.min(total)).max(1) as f64;
                let t = (step - warm) as f64 / span;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }

    /// Checks values that do not depend on the model. Each message names the TOML key and
    /// its CLI flag, since the value may come from either.
    pub fn validate(&self) -> anyhow::Result<()> {
        /// "`batch_size` (--batch-size)".
        fn key(name: &str) -> String {
            format!("`{name}` (--{})", name.replace('_', "-"))
        }
        let positive = |name: &str, value: usize| -> anyhow::Result<()> {
            ensure!(value > 0, "{} must be positive, got 0", key(name));
            Ok(())
        };
        positive("total_training_steps", self.total_training_steps)?;
        positive("batch_size", self.batch_size)?;
        positive("expansion_factor", self.expansion_factor)?;
        if let Some(d_sae) = self.d_sae {
            positive("d_sae", d_sae)?;
        }
        positive("n_batches_in_buffer", self.n_batches_in_buffer)?;
        positive("windows_per_forward", self.windows_per_forward)?;
        positive("log_every", self.log_every)?;
        ensure!(
            self.context_size >= 2,
            "{} must be at least 2 (BOS and one token), got {}",
            key("context_size"),
            self.context_size
        );
        ensure!(
            self.lr > 0.0 && self.lr.is_finite(),
            "{} must be positive and finite, got {}",
            key("lr"),
            self.lr
        );
        ensure!(
            self.l1_coefficient >= 0.0 && self.l1_coefficient.is_finite(),
            "{} must be non-negative and finite, got {}",
            key("l1_coefficient"),
            self.l1_coefficient
        );
        for (name, beta) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            ensure!(
                (0.0..1.0).contains(&beta),
                "{} must be in [0, 1), got {beta}",
                key(name)
            );
        }
        ensure!(
            self.grad_clip_norm >= 0.0 && self.grad_clip_norm.is_finite(),
            "{} must be non-negative and finite (0 = off), got {}",
            key("grad_clip_norm"),
            self.grad_clip_norm
        );
        ensure!(
            (0.0..=1.0).contains(&self.dead_threshold),
            "{} is a fraction of tokens and must be in [0, 1], got {}",
            key("dead_threshold"),
            self.dead_threshold
        );
        if self.architecture == ArchitectureKind::Jumprelu {
            ensure!(
                self.jumprelu_bandwidth > 0.0 && self.jumprelu_bandwidth.is_finite(),
                "{} must be positive and finite, got {}",
                key("jumprelu_bandwidth"),
                self.jumprelu_bandwidth
            );
        }
        let topk = matches!(
            self.architecture,
            ArchitectureKind::Topk | ArchitectureKind::BatchTopk
        );
        if topk {
            ensure!(
                self.k > 0,
                "{} must be positive for the TopK and BatchTopK architectures, got 0",
                key("k")
            );
        }
        if let Some(c) = self.aux_k_coefficient {
            ensure!(
                c >= 0.0 && c.is_finite(),
                "{} must be non-negative and finite (0 = off), got {c}",
                key("aux_k_coefficient")
            );
            ensure!(
                topk || c == 0.0,
                "{} applies to the topk and batch-topk architectures only (ReLU and JumpReLU \
                 have their sparsity penalties); drop it or set 0",
                key("aux_k_coefficient")
            );
        }
        if let Some(k) = self.aux_k {
            positive("aux_k", k)?;
        }
        Ok(())
    }

    /// Heads and features per head for a model with `n_heads` x `d_head`.
    pub fn sae_shape(
        &self,
        n_heads: usize,
        d_head: usize,
    ) -> anyhow::Result<(usize, usize, usize)> {
        let (h, d) = if self.dense {
            (1, n_heads * d_head)
        } else {
            (n_heads, d_head)
        };
        let d_sae = self
            .d_sae
            .unwrap_or(self.expansion_factor * n_heads * d_head);
        if !d_sae.is_multiple_of(h) {
            bail!(
                "--d-sae {d_sae} is not divisible by the {h} heads of a block-diagonal SAE; \
                 use a multiple of {h}"
            );
        }
        let m = d_sae / h;
        if let ArchitectureKind::Topk | ArchitectureKind::BatchTopk = self.architecture {
            ensure!(
                self.k <= m,
                "--k {} exceeds the {m} features per head",
                self.k
            );
        }
        Ok((h, d, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let cfg = TrainConfig {
            total_training_steps: 100,
            lr: 1.0,
            lr_warmup_steps: 10,
            lr_decay_steps: 20,
            l1_coefficient: 2.0,
            l1_warmup_steps: Some(4),
            ..TrainConfig::default()
        };
        assert_eq!(cfg.lr_at(0), 0.1);
        assert_eq!(cfg.lr_at(9), 1.0);
        assert_eq!(cfg.lr_at(50), 1.0);
        assert_eq!(cfg.lr_at(90), 0.5);
        assert_eq!(cfg.l1_at(0), 0.5);
        assert_eq!(cfg.l1_at(3), 2.0);
        assert_eq!(cfg.l1_at(50), 2.0);
        let cos = TrainConfig {
            lr_schedule: LrSchedule::Cosine,
            ..cfg
        };
        assert!((cos.lr_at(55) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn toml_round_trip_and_unknown_keys() {
        let cfg = TrainConfig::default();
        let text = toml::to_string(&cfg).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg, back);
        assert!(toml::from_str::<TrainConfig>("hook_layr = 3").is_err());
        let partial: TrainConfig = toml::from_str("hook_layer = 3\nlr = 0.001").unwrap();
        assert_eq!(partial.hook_layer, Some(3));
        assert_eq!(partial.batch_size, TrainConfig::default().batch_size);
    }

    /// Every zero size (and bad float) from a config file is refused with a message naming
    /// its key; the defaults pass.
    #[test]
    fn validate_names_the_bad_key() {
        TrainConfig::default().validate().unwrap();
        let cases: Vec<(&str, &str)> = vec![
            (
                "total_training_steps = 0",
                "`total_training_steps` (--total-training-steps)",
            ),
            ("batch_size = 0", "`batch_size` (--batch-size)"),
            ("expansion_factor = 0", "`expansion_factor`"),
            ("d_sae = 0", "`d_sae` (--d-sae)"),
            ("n_batches_in_buffer = 0", "`n_batches_in_buffer`"),
            ("windows_per_forward = 0", "`windows_per_forward`"),
            ("log_every = 0", "`log_every`"),
            (
                "context_size = 0",
                "`context_size` (--context-size) must be at least 2",
            ),
            ("context_size = 1", "`context_size`"),
            ("lr = 0.0", "`lr`"),
            ("lr = inf", "`lr`"),
            ("l1_coefficient = -1.0", "`l1_coefficient`"),
            ("l1_coefficient = nan", "`l1_coefficient`"),
            ("adam_beta1 = 1.0", "`adam_beta1`"),
            ("adam_beta2 = -0.1", "`adam_beta2`"),
            ("grad_clip_norm = nan", "`grad_clip_norm`"),
            ("dead_threshold = 2.0", "`dead_threshold`"),
            (
                "architecture = \"jumprelu\"\njumprelu_bandwidth = 0.0",
                "`jumprelu_bandwidth`",
            ),
            (
                "architecture = \"topk\"\nk = 0",
                "`k` (--k) must be positive",
            ),
            (
                "architecture = \"batch_topk\"\nk = 0",
                "`k` (--k) must be positive",
            ),
            (
                "architecture = \"topk\"\naux_k_coefficient = -0.5",
                "`aux_k_coefficient` (--aux-k-coefficient) must be non-negative",
            ),
            (
                "aux_k_coefficient = 0.1",
                "`aux_k_coefficient` (--aux-k-coefficient) applies to the topk",
            ),
            ("architecture = \"topk\"\naux_k = 0", "`aux_k` (--aux-k)"),
        ];
        for (toml_text, wanted) in cases {
            let cfg: TrainConfig = toml::from_str(toml_text).unwrap();
            let msg = cfg
                .validate()
                .expect_err(&format!("{toml_text:?} must be refused"))
                .to_string();
            assert!(msg.contains(wanted), "{toml_text:?}: {msg}");
        }
        // k = 0 only matters for TopK architectures; sizes that mean "off" stay allowed.
        for ok in [
            "k = 0",
            "eval_every = 0",
            "checkpoint_every = 0",
            "keep_checkpoints = 0",
            "grad_clip_norm = 0.0",
            "l1_coefficient = 0.0",
            "aux_k_coefficient = 0.0",
            "architecture = \"batch_topk\"\naux_k_coefficient = 0.5\naux_k = 3",
        ] {
            let cfg: TrainConfig = toml::from_str(ok).unwrap();
            cfg.validate().unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    /// A checkpoint's config without `aux_k_coefficient` comes from a run that trained
    /// without AuxK, and resumes without it; a config given to start a run takes the
    /// default for TopK and none for ReLU.
    #[test]
    fn aux_k_defaults_and_older_checkpoints() {
        let dir = std::env::temp_dir().join(format!("attn-saes-auxk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "architecture = \"topk\"\nk = 4\n").unwrap();
        let started = TrainConfig::from_toml(&path).unwrap();
        assert_eq!(started.aux_k_coefficient(), DEFAULT_AUX_K_COEFFICIENT);
        assert_eq!(started.aux_k(64), 32);
        let saved = TrainConfig::from_saved_toml(&path).unwrap();
        assert_eq!(saved.aux_k_coefficient(), 0.0);
        std::fs::write(&path, "architecture = \"topk\"\naux_k_coefficient = 0.1\n").unwrap();
        assert_eq!(
            TrainConfig::from_saved_toml(&path)
                .unwrap()
                .aux_k_coefficient(),
            0.1
        );
        assert_eq!(TrainConfig::default().aux_k_coefficient(), 0.0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn d_sae_must_divide() {
        let cfg = TrainConfig {
            d_sae: Some(100),
            ..TrainConfig::default()
        };
        let err = cfg.sae_shape(12, 64).unwrap_err().to_string();
        assert!(err.contains("not divisible"), "{err}");
        assert_eq!(cfg.sae_shape(4, 64).unwrap(), (4, 64, 25));
    }
}
