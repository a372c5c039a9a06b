//! A training run as a value: [`RunPlan`] (the checked config, the SAE's shape, the corpus and
//! its held-out evaluation windows), then [`Trainer`]: set up or resumed ([`Trainer::start`]),
//! advanced one optimizer step at a time ([`Trainer::step`], which logs, evaluates and
//! reports as the config says), checkpointed ([`Trainer::checkpoint`]) and finished
//! ([`Trainer::finish`]). [`train`] drives one to the end or a stop; the CLI and the app
//! both call it on their own threads and read its [`TrainEvent`]s.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::thread::Scope;
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::config::{ArchitectureKind, BDecInit};
use super::metrics::{self, DeadFeatureTracker};
use super::{
    EvalMetrics, RunControl, SaeOptimizer, StepMetrics, TimeSplit, TrainConfig, TrainEvent,
    TrainSummary, checkpoint, eval, geometric_median, scalar, send, truncate_metrics,
};
use crate::data::corpus::Corpus;
use crate::data::store::{ActivationStore, StoreConfig, StreamPosition};
use crate::data::windows::{ContextWindows, WindowsPosition};
use crate::files::{read_json, write_json, write_safetensors};
use crate::lm::LoadedModel;
use crate::rng::Rng;
use crate::run_log::LogLine;
use crate::sae::io::{HookInfo, SaeOrigin};
use crate::sae::{Architecture, BlockDiagSae, Normalization, SaeConfig};
use checkpoint::TrainerState;

/// Trains an SAE as `config` says, publishing events. `resume` is a checkpoint directory.
pub fn train(
    config: TrainConfig,
    loaded: &LoadedModel,
    resume: Option<&Path>,
    device: &Device,
    device_name: &str,
    events: &Sender<TrainEvent>,
    control: &RunControl,
) -> anyhow::Result<TrainSummary> {
    let result = (|| {
        let plan = RunPlan::new(config, loaded)?;
        std::thread::scope(|scope| {
            let mut trainer =
                Trainer::start(&plan, loaded, resume, device, device_name, events, scope)?;
            let mut stopped_early = false;
            let _in_steps = InSteps::set(&control.in_steps);
            while !trainer.is_done() {
                let outcome = trainer.step()?;
                let stop = control.stop.load(Ordering::Relaxed)
                    || control.stop_after == Some(outcome.step);
                if outcome.checkpoint_due || trainer.is_done() || stop {
                    trainer.checkpoint()?;
                }
                if stop && !trainer.is_done() {
                    stopped_early = true;
                    break;
                }
            }
            trainer.finish(stopped_early)
        })
    })();
    if let Err(e) = &result {
        send(events, TrainEvent::Failed(format!("{e:#}")));
    }
    result
}

/// Marks the training steps as running until dropped (an error included).
struct InSteps<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> InSteps<'a> {
    fn set(flag: &'a std::sync::atomic::AtomicBool) -> Self {
        flag.store(true, Ordering::SeqCst);
        Self(flag)
    }
}

impl Drop for InSteps<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How fast BatchTopK's inference thresholds follow the batches' (SAELens'
/// `topk_threshold_lr`).
const BATCH_THRESHOLD_RATE: f64 = 0.01;

/// What a run is before any data moves: the validated config (the hooked layer recorded),
/// the SAE's shape, and the corpus with its held-out evaluation windows (first in the
/// corpus; training data starts after them).
pub struct RunPlan {
    pub config: TrainConfig,
    pub layer: usize,
    pub sae_config: SaeConfig,
    corpus: Option<Corpus>,
    eval_windows: Vec<Vec<u32>>,
    train_start: WindowsPosition,
}

impl RunPlan {
    pub fn new(mut config: TrainConfig, loaded: &LoadedModel) -> anyhow::Result<Self> {
        config.validate()?;
        let mc = &loaded.transformer.config;
        let layer = config.layer(mc.n_layers);
        if layer >= mc.n_layers {
            bail!(
                "--hook-layer {layer} does not exist: {} has layers 0 to {}",
                mc.name,
                mc.n_layers.saturating_sub(1)
            );
        }
        // Saved with every checkpoint: record the layer actually used.
        config.hook_layer = Some(layer);
        let (n_heads, d_head, features_per_head) = config.sae_shape(mc.n_heads, mc.d_head)?;
        // Saved too: the AuxK settings in effect (a resumed run keeps them).
        config.aux_k_coefficient = Some(config.aux_k_coefficient());
        config.aux_k = Some(config.aux_k(d_head));
        let architecture = match config.architecture {
            ArchitectureKind::Relu => Architecture::Relu,
            ArchitectureKind::Topk => Architecture::TopK { k: config.k },
            ArchitectureKind::BatchTopk => Architecture::BatchTopK { k: config.k },
            ArchitectureKind::Jumprelu => Architecture::JumpRelu {
                bandwidth: config.jumprelu_bandwidth,
            },
        };
        std::fs::create_dir_all(&config.out_dir)
            .with_context(|| format!("creating {}", config.out_dir.display()))?;
        // The corpus gives the held-out evaluation windows (and the data, unless a cache does).
        let corpus = if config.activation_cache.is_none() || config.eval_windows > 0 {
            Some(Corpus::open(
                &config.dataset,
                config.text_column.as_deref(),
            )?)
        } else {
            None
        };
        let (eval_windows, train_start) = match &corpus {
            Some(corpus) => ContextWindows::first(
                corpus,
                &loaded.tokenizer,
                config.context_size,
                mc.bos_token_id,
                config.eval_windows,
            )?,
            None => Default::default(),
        };
        Ok(Self {
            layer,
            sae_config: SaeConfig {
                n_heads,
                d_head,
                features_per_head,
                architecture,
            },
            config,
            corpus,
            eval_windows,
            train_start,
        })
    }

    fn store_config(&self) -> StoreConfig {
        let c = &self.config;
        StoreConfig {
            hook_layer: self.layer,
            context_size: c.context_size,
            batch_tokens: c.batch_size,
            n_batches_in_buffer: c.n_batches_in_buffer,
            windows_per_forward: c.windows_per_forward,
            drop_bos: c.drop_bos,
            z_convention: c.z_convention,
        }
    }
}

/// What one [`Trainer::step`] did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Steps done, this one included.
    pub step: usize,
    /// The config's checkpoint interval falls on this step.
    pub checkpoint_due: bool,
}

/// A run in progress.
pub struct Trainer<'a> {
    plan: &'a RunPlan,
    loaded: &'a LoadedModel,
    events: &'a Sender<TrainEvent>,
    store: ActivationStore<'a>,
    sae: BlockDiagSae,
    opt: SaeOptimizer,
    state: TrainerState,
    dead: DeadFeatureTracker,
    eval_tokens: Option<Tensor<2, Int>>,
    /// What every evaluation of the run shares, from the first one on.
    eval_baseline: Option<eval::Baseline>,
    metrics_file: File,
    origin: SaeOrigin,
    started: Instant,
    /// Start of the current steps/s window: `(time, step)`.
    window_start: (Instant, usize),
    /// Where the steps' time went, and the harvest thread's clock when they began.
    time: TimeSplit,
    harvest_at_start: Option<(f64, f64)>,
    last_metrics: Option<StepMetrics>,
    last_eval: Option<EvalMetrics>,
    last_checkpoint: Option<PathBuf>,
}

impl<'a> Trainer<'a> {
    /// Opens the activation stream (at the checkpoint's position when resuming; harvested
    /// on a thread of `scope` unless the config or the CPU backend says not to), initialises
    /// the SAE (normalisation factor, decoder bias) or loads the checkpoint's, and opens the
    /// metrics log (cut back to the checkpoint on resume).
    pub fn start<'scope>(
        plan: &'a RunPlan,
        loaded: &'a LoadedModel,
        resume: Option<&Path>,
        device: &Device,
        device_name: &str,
        events: &'a Sender<TrainEvent>,
        scope: &'scope Scope<'scope, 'a>,
    ) -> anyhow::Result<Self> {
        let config = &plan.config;
        if config.step == super::StepKind::Auto && *device != Device::flex() {
            // Before anything is touched: the WGSL step's limits on a batch.
            let c = &plan.sae_config;
            super::wgsl::check_shape(c.n_heads, config.batch_size, c.d_head, c.features_per_head)
                .map_err(|e| anyhow::anyhow!("{e} (or `--step autodiff`)"))?;
        }
        if resume.is_none() && checkpoint::clear_previous_run(&config.out_dir)? {
            send(
                events,
                TrainEvent::Notice(format!(
                    "a new run replaces the previous one in {} (--resume continues a run)",
                    config.out_dir.display()
                )),
            );
        }
        let mut store = open_store(plan, loaded, resume, device, scope)?;
        if let Some(meta) = store.cache_meta() {
            let held: usize = meta.shard_rows.iter().sum();
            let wanted = config.total_training_steps * config.batch_size;
            if wanted > held {
                send(
                    events,
                    TrainEvent::Notice(format!(
                        "the activation cache holds {held} tokens and {} steps x {} take \
                         {wanted}: it is read {:.1} times over (`harvest --tokens` harvests \
                         more)",
                        config.total_training_steps,
                        config.batch_size,
                        wanted as f64 / held.max(1) as f64
                    )),
                );
            }
        }
        let (sae, opt, mut state) = match resume {
            Some(dir) => {
                send(
                    events,
                    TrainEvent::Status(format!("resuming from {}", dir.display())),
                );
                resume_from(dir, plan, &mut store, device)?
            }
            None => {
                send(
                    events,
                    TrainEvent::Status("harvesting activations and estimating their norm".into()),
                );
                initialise(plan, loaded, &mut store, device)?
            }
        };
        send(
            events,
            TrainEvent::Status(format!("training step: {}", opt.path())),
        );
        let mc = &loaded.transformer.config;
        send(
            events,
            TrainEvent::Started {
                config: Box::new(config.clone()),
                model: Box::new(mc.clone()),
                sae: plan.sae_config.clone(),
                device: device_name.to_string(),
                start_step: state.step,
            },
        );
        let eval_tokens = if plan.eval_windows.is_empty() {
            None
        } else {
            Some(loaded.transformer.tokens(&plan.eval_windows)?)
        };
        let metrics_path = config.out_dir.join("metrics.jsonl");
        if resume.is_some() {
            // Lines written after the checkpoint (before a crash or kill) are written again
            // as training repeats those steps.
            truncate_metrics(&metrics_path, state.step)?;
        }
        let leftovers = checkpoint::remove_leftovers(&config.out_dir);
        if leftovers > 0 {
            send(
                events,
                TrainEvent::Status(format!(
                    "removed {leftovers} incomplete checkpoint directories"
                )),
            );
        }
        let metrics_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .with_context(|| format!("opening {}", metrics_path.display()))?;
        let s = &plan.sae_config;
        let mut dead = DeadFeatureTracker::new(
            s.n_heads,
            s.features_per_head,
            config.dead_window_steps,
            config.dead_threshold,
        );
        if let Some(window) = state.dead_window.take() {
            dead.restore(window, device)?;
        }
        let harvest_at_start = store.source_time().harvest;
        Ok(Self {
            plan,
            loaded,
            events,
            harvest_at_start,
            store,
            sae,
            opt,
            window_start: (Instant::now(), state.step),
            time: TimeSplit::default(),
            state,
            dead,
            eval_tokens,
            eval_baseline: None,
            metrics_file,
            origin: SaeOrigin {
                model: mc.name.clone(),
                hook_layer: plan.layer,
                z_convention: config.z_convention,
                keep_bos: !config.drop_bos,
            },
            started: Instant::now(),
            last_metrics: None,
            last_eval: None,
            last_checkpoint: resume.map(Path::to_path_buf),
        })
    }

    /// Steps done so far.
    pub fn steps(&self) -> usize {
        self.state.step
    }

    pub fn is_done(&self) -> bool {
        self.state.step >= self.plan.config.total_training_steps
    }

    /// One optimizer step on the next batch, then what falls due on it: the metrics line,
    /// the density histogram, a CE-loss evaluation.
    pub fn step(&mut self) -> anyhow::Result<StepOutcome> {
        let plan = self.plan;
        let config = &plan.config;
        let s = &plan.sae_config;
        let (h, d) = (s.n_heads, s.d_head);
        let step = self.state.step;
        let started = Instant::now();
        let waited = self.store.source_time().waiting;
        let z = self.store.next_batch()?; // [B, n_heads, d_head]
        let waited = self.store.source_time().waiting - waited;
        self.time.activations += waited;
        self.time.batches += started.elapsed().as_secs_f64() - waited;
        let started = Instant::now();
        let [b, _, _] = z.dims();
        let x = self.sae.scale_input(z.reshape([b, h, d]));
        let (lr, l1) = (config.lr_at(step), config.l1_at(step));
        let betas = (config.adam_beta1, config.adam_beta2);
        let aux_coef = config.aux_k_coefficient();
        let dead = if aux_coef > 0.0 {
            self.dead.dead_mask()
        } else {
            None
        };
        let aux = dead.as_deref().map(|dead| super::fused_cpu::AuxK {
            dead,
            k: config.aux_k(d),
            coef: aux_coef,
        });
        let out = self.opt.step_with_aux(
            &mut self.sae,
            x.clone(),
            l1,
            lr,
            betas,
            config.grad_clip_norm,
            aux.as_ref(),
        );
        if let Some(now) = out.batch_threshold.clone() {
            // BatchTopK's inference thresholds: a running average of each head's batch
            // threshold (SAELens' rate), from the first batch's.
            let m = s.features_per_head;
            let now = now.clamp_min(0.0).unsqueeze_dim::<2>(1).expand([h, m]);
            self.sae.batch_threshold = Some(match self.sae.batch_threshold.take() {
                Some(prev) => prev * (1.0 - BATCH_THRESHOLD_RATE) + now * BATCH_THRESHOLD_RATE,
                None => now,
            });
        }
        self.time.steps += started.elapsed().as_secs_f64();
        let started = Instant::now();
        self.dead.observe(out.fired.clone(), b);
        self.state.step += 1;
        self.state.tokens += b as u64;
        self.state.adam_t = self.opt.t;
        let done = self.state.step;
        let is_last = self.is_done();
        if done.is_multiple_of(config.log_every) || is_last {
            self.log_step(x, &out, lr, l1)?;
        }
        if done.is_multiple_of(self.dead.slide_steps())
            && let Some(density) = &self.dead.last_density
        {
            let histogram = metrics::density_histogram(density, 40);
            send(
                self.events,
                TrainEvent::Density {
                    step: done,
                    histogram,
                },
            );
        }
        self.time.metrics += started.elapsed().as_secs_f64();
        if self.eval_tokens.is_some()
            && ((config.eval_every > 0 && done.is_multiple_of(config.eval_every)) || is_last)
        {
            let started = Instant::now();
            self.evaluate()?;
            self.time.evaluation += started.elapsed().as_secs_f64();
        }
        Ok(StepOutcome {
            step: done,
            checkpoint_due: config.checkpoint_every > 0
                && done.is_multiple_of(config.checkpoint_every),
        })
    }

    /// The step's metrics to `metrics.jsonl` and the events; a non-finite loss stops the
    /// run with an error naming the last good checkpoint.
    fn log_step(
        &mut self,
        x: Tensor<3>,
        out: &super::StepOutput,
        lr: f64,
        l1: f64,
    ) -> anyhow::Result<()> {
        let done = self.state.step;
        let loss = scalar(out.total.clone());
        if !loss.is_finite() {
            bail!(
                "loss became {loss} at step {done}; training stopped. The last good checkpoint \
                 is {}. Try a lower --lr or --l1-coefficient.",
                self.last_checkpoint
                    .as_ref()
                    .map_or("none (none was written yet)".to_string(), |p| p
                        .display()
                        .to_string())
            );
        }
        let stats = metrics::batch_stats(x, out);
        let (dead_total, dead_per_head) = self.dead.dead();
        let elapsed = self.window_start.0.elapsed().as_secs_f64();
        let steps_per_s = (done - self.window_start.1) as f64 / elapsed.max(1e-9);
        self.window_start = (Instant::now(), done);
        let m = StepMetrics {
            step: done,
            tokens: self.state.tokens,
            loss,
            mse: scalar(out.mse.clone()),
            sparsity_loss: scalar(out.sparsity.clone()),
            l0: stats.l0_per_head.iter().sum(),
            l0_per_head: stats.l0_per_head,
            explained_variance: stats.explained_variance,
            explained_variance_per_head: stats.explained_variance_per_head,
            l2_ratio: stats.l2_ratio,
            dead_features: dead_total,
            dead_per_head,
            lr,
            l1_coefficient: l1,
            steps_per_s,
            aux_loss: out.aux.clone().map(scalar),
        };
        self.write_log(&LogLine::Step(m.clone()))?;
        send(self.events, TrainEvent::Step(Box::new(m.clone())));
        self.last_metrics = Some(m);
        Ok(())
    }

    /// CE loss clean / with the SAE / zero-ablated on the held-out windows.
    pub fn evaluate(&mut self) -> anyhow::Result<()> {
        let Some(tokens) = &self.eval_tokens else {
            return Ok(());
        };
        let (model, plan) = (&self.loaded.transformer, self.plan);
        let config = &plan.config;
        // Its passes (the clean and zero-ablated losses) do not depend on the SAE; runs
        // from one activation cache (a sweep's) share them through a file there.
        let baseline = match &mut self.eval_baseline {
            Some(b) => b,
            none => none.insert(match &config.activation_cache {
                Some(dir) => {
                    let (b, file) = eval::Baseline::kept_in(
                        model,
                        &plan.eval_windows,
                        plan.layer,
                        config.z_convention,
                        dir,
                        &mut |_, _| {},
                    )?;
                    send(self.events, TrainEvent::Notice(file.describe()));
                    b
                }
                None => eval::Baseline::new(
                    model,
                    tokens.clone(),
                    plan.layer,
                    config.z_convention,
                    &mut |_, _| {},
                )?,
            }),
        };
        let (e, _) = baseline.evaluate(
            model,
            &self.sae,
            config.drop_bos,
            self.state.step,
            &mut |_, _| {},
        )?;
        self.write_log(&LogLine::Eval(e.clone()))?;
        send(self.events, TrainEvent::Eval(Box::new(e.clone())));
        self.last_eval = Some(e);
        Ok(())
    }

    fn write_log(&mut self, line: &LogLine) -> anyhow::Result<()> {
        writeln!(self.metrics_file, "{}", serde_json::to_string(line)?)?;
        Ok(())
    }

    /// Writes a checkpoint of this step (SAE, Adam state, trainer and stream state) and
    /// prunes old ones.
    pub fn checkpoint(&mut self) -> anyhow::Result<PathBuf> {
        let started = Instant::now();
        let path = self.write_checkpoint();
        self.time.checkpoints += started.elapsed().as_secs_f64();
        path
    }

    fn write_checkpoint(&mut self) -> anyhow::Result<PathBuf> {
        let plan = self.plan;
        let config = &plan.config;
        let state = TrainerState {
            dead_window: Some(self.dead.state()?),
            ..self.state.clone()
        };
        let (sae, opt, store, origin) = (&self.sae, &self.opt, &self.store, &self.origin);
        let path = checkpoint::write_checkpoint(&config.out_dir, state.step, config, |dir| {
            sae.save_with_origin(&dir.join("sae"), Some(origin))?;
            write_safetensors(&dir.join("optimizer.safetensors"), &opt.to_arrays()?, None)?;
            write_json(&dir.join(checkpoint::STATE_FILE), &state)?;
            store.save_state(dir)
        })?;
        checkpoint::prune_checkpoints(&config.out_dir, config.keep_checkpoints)?;
        send(
            self.events,
            TrainEvent::Checkpoint {
                step: state.step,
                path: path.clone(),
            },
        );
        self.last_checkpoint = Some(path.clone());
        Ok(path)
    }

    /// Saves the SAE (ours and the SAELens export with feature densities) and the summary.
    pub fn finish(mut self, stopped_early: bool) -> anyhow::Result<TrainSummary> {
        self.metrics_file.flush()?;
        let plan = self.plan;
        let config = &plan.config;
        let sae_dir = config.out_dir.join("sae");
        self.sae.save_with_origin(&sae_dir, Some(&self.origin))?;
        let log_density: Option<Vec<f32>> = self
            .dead
            .density()
            .map(|d| d.iter().map(|v| (v + 1e-10).log10() as f32).collect());
        let mc = &self.loaded.transformer.config;
        let hook = HookInfo {
            model_name: mc.name.clone(),
            hook_layer: self.plan.layer,
            context_size: config.context_size,
            prepend_bos: mc.bos_token_id.is_some(),
            dataset_path: config.dataset.display().to_string(),
            z_convention: config.z_convention,
        };
        self.sae.export_saelens(
            &config.out_dir.join("saelens"),
            &hook,
            log_density.as_deref(),
        )?;
        let mut time = self.time;
        if let (Some((f, b)), Some((f0, b0))) =
            (self.store.source_time().harvest, self.harvest_at_start)
        {
            time.harvest_forward = Some(f - f0);
            time.harvest_blocked = Some(b - b0);
        }
        let summary = TrainSummary {
            time,
            steps: self.state.step,
            tokens: self.state.tokens,
            seconds: self.started.elapsed().as_secs_f64(),
            last: self.last_metrics,
            eval: self.last_eval,
            sae_dir,
            checkpoint: self.last_checkpoint,
            stopped_early,
        };
        write_json(&config.out_dir.join("summary.json"), &summary)?;
        send(self.events, TrainEvent::Finished(Box::new(summary.clone())));
        Ok(summary)
    }
}

/// The activation stream: from a cache, or from the LM over the corpus (continuing at the
/// checkpoint's position on resume), harvested on a background thread unless the config
/// says not to (default: only off the CPU backend, where both would share the cores).
fn open_store<'a, 'scope>(
    plan: &'a RunPlan,
    loaded: &'a LoadedModel,
    resume: Option<&Path>,
    device: &Device,
    scope: &'scope Scope<'scope, 'a>,
) -> anyhow::Result<ActivationStore<'a>> {
    let config = &plan.config;
    let mc = &loaded.transformer.config;
    let start = match resume.map(ActivationStore::saved_position).transpose()? {
        Some(StreamPosition::Windows(pos)) => pos,
        _ => plan.train_start,
    };
    let background = config
        .harvest_in_background
        .unwrap_or(*device != Device::flex());
    Ok(match (&config.activation_cache, &plan.corpus) {
        (Some(dir), _) => {
            let store = ActivationStore::from_cache_for_model(
                plan.store_config(),
                dir,
                mc,
                config.seed,
                device,
            )?;
            if let Some(meta) = store.cache_meta() {
                meta.check_held_out(
                    dir,
                    &config.dataset,
                    config.context_size,
                    plan.eval_windows.len(),
                )?;
            }
            store
        }
        (None, Some(corpus)) => {
            let store = ActivationStore::from_lm(
                plan.store_config(),
                &loaded.transformer,
                corpus,
                &loaded.tokenizer,
                start,
                config.seed,
                device,
            )?;
            if background {
                store.in_background(scope, 2)
            } else {
                store
            }
        }
        (None, None) => unreachable!("a corpus is opened whenever there is no cache"),
    })
}

/// The checkpoint's SAE, Adam state and trainer state; the stream restored to it.
fn resume_from(
    dir: &Path,
    plan: &RunPlan,
    store: &mut ActivationStore,
    device: &Device,
) -> anyhow::Result<(BlockDiagSae, SaeOptimizer, TrainerState)> {
    let sae = BlockDiagSae::load(&dir.join("sae"), device)?;
    if sae.config != plan.sae_config {
        bail!(
            "{}: the checkpoint's SAE ({:?}) does not match the config ({:?})",
            dir.display(),
            sae.config,
            plan.sae_config
        );
    }
    let state: TrainerState = read_json(&dir.join(checkpoint::STATE_FILE))?;
    let opt = SaeOptimizer::load(
        &sae,
        &dir.join("optimizer.safetensors"),
        state.adam_t,
        device,
        plan.config.step,
    )?;
    store.restore_state(dir)?;
    Ok((sae, opt, state))
}

/// A new SAE: initialised from the seed, its input scale from the stream's mean norm (as
/// the config's normalisation says), its decoder bias zero or the geometric median.
fn initialise(
    plan: &RunPlan,
    loaded: &LoadedModel,
    store: &mut ActivationStore,
    device: &Device,
) -> anyhow::Result<(BlockDiagSae, SaeOptimizer, TrainerState)> {
    let config = &plan.config;
    let mc = &loaded.transformer.config;
    let (h, d) = (plan.sae_config.n_heads, plan.sae_config.d_head);
    let mut rng = Rng::new(config.seed);
    let mut sae = BlockDiagSae::init(plan.sae_config.clone(), &mut rng, device);
    let (mean_norm, per_head) = store.mean_norms(config.normalization_batches.max(1))?;
    sae.input_scale = match config.normalization {
        Normalization::None => vec![1.0; h],
        Normalization::Global => {
            vec![((mc.n_heads * mc.d_head) as f64).sqrt() as f32 / mean_norm.max(1e-12) as f32; h]
        }
        Normalization::PerHead if h == mc.n_heads => per_head
            .iter()
            .map(|n| (d as f64).sqrt() as f32 / n.max(1e-12) as f32)
            .collect(),
        Normalization::PerHead => {
            bail!("--normalization per-head needs a block-diagonal SAE (not --dense)")
        }
    };
    if config.b_dec_init == BDecInit::GeometricMedian {
        // Rows are [B, H, d]; scale each head's part into the SAE input space.
        let rows = store.next_rows()?;
        let scale = &sae.input_scale;
        let scaled: Vec<f32> = rows
            .chunks_exact(d)
            .enumerate()
            .flat_map(|(i, part)| part.iter().map(move |v| v * scale[i % h]))
            .collect();
        let median = geometric_median(&scaled, h, d, 30);
        sae.b_dec = Tensor::from_data(TensorData::new(median, [h, d]), device);
    }
    let opt = SaeOptimizer::for_step(&sae, config.step);
    let state = TrainerState {
        step: 0,
        tokens: 0,
        adam_t: 0,
        dead_window: None,
    };
    Ok((sae, opt, state))
}
