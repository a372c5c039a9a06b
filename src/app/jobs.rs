//! Background work of the desktop app: a training run (then its dashboards) or a dashboard
//! build of a checkpoint, each on its own thread, reporting through channels. The UI only
//! reads the channels and sets the stop flag; nothing here blocks it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use crate::cli_train::{Stage, TrainArgs};
use crate::dashboard::{self, BuildOptions};
use crate::device::DeviceChoice;
use crate::train::{self, RunControl, TrainEvent};

/// What a job reports besides training events.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// A training event (a training job only).
    Train(TrainEvent),
    /// A phase with a known amount of work (dashboard building).
    Progress {
        phase: String,
        done: usize,
        total: usize,
    },
    /// A phase without a count (loading the model).
    Phase(String),
    /// The run directory is known (after the config resolved).
    RunDir(PathBuf),
    DashboardWritten(PathBuf),
    /// A harvest wrote its activation cache (what `harvest` prints).
    Harvested(String),
    Failed(String),
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Training,
    Dashboards,
    /// An activation cache for runs to train from (in the training job's place: both
    /// run the LM).
    Harvest,
}

/// A running (or finished) background job.
pub struct Job {
    pub kind: JobKind,
    /// Everything the job reports, in order.
    pub events: Receiver<JobEvent>,
    /// Set to stop training after the current step, with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// True while training takes its steps ([`RunControl::in_steps`]).
    pub in_steps: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Job {
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A training run to start from the app.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    pub args: TrainArgs,
    pub device: DeviceChoice,
    /// Build the dashboards so when the run finishes (not when it is stopped early); none:
    /// no dashboards.
    pub dashboards: Option<crate::dashboard::BuildOptions>,
}

/// Runs `work`; its error, or a panic inside it, as the message to show.
fn caught(work: impl FnOnce() -> anyhow::Result<()>) -> Result<(), String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(panic) => Err(format!(
            "internal error: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        )),
    }
}

/// Runs `work` on a named thread; an error or a panic becomes a [`JobEvent::Failed`], and
/// every job ends with [`JobEvent::Finished`].
fn spawn(
    kind: JobKind,
    work: impl FnOnce(&Sender<JobEvent>, RunControl) -> anyhow::Result<()> + Send + 'static,
) -> Job {
    let (tx, events) = channel();
    let control = RunControl::default();
    let (stop, in_steps) = (control.stop.clone(), control.in_steps.clone());
    let handle = std::thread::Builder::new()
        .name(format!("attn-saes {kind:?}"))
        .spawn(move || {
            if let Err(message) = caught(|| work(&tx, control)) {
                let _ = tx.send(JobEvent::Failed(message));
            }
            let _ = tx.send(JobEvent::Finished);
        })
        .ok();
    Job {
        kind,
        events,
        stop,
        in_steps,
        handle,
    }
}

/// Starts (or resumes) a training run, then builds its dashboards.
pub fn start_training(request: TrainRequest) -> Job {
    spawn(JobKind::Training, move |tx, control| {
        let control = RunControl {
            stop_after: request.args.stop_after,
            ..control
        };
        let forward = tx.clone();
        crate::cli_train::train_then_dashboards(
            &request.args,
            request.device,
            &control,
            request.dashboards.as_ref(),
            move |events| {
                for e in events {
                    let _ = forward.send(JobEvent::Train(e));
                }
            },
            &mut |stage| {
                let event = match stage {
                    Stage::Checking => JobEvent::Phase("checking the configuration".into()),
                    Stage::RunDir(dir) => JobEvent::RunDir(dir.to_path_buf()),
                    Stage::LoadingModel(model) => JobEvent::Phase(format!("loading model {model}")),
                    Stage::Device(_) => return,
                    Stage::Dashboards { phase, done, total } => {
                        dashboard_progress(phase, done, total)
                    }
                    Stage::DashboardWritten { path, notice, .. } => {
                        if let Some(notice) = notice {
                            let note = TrainEvent::Notice(notice.to_string());
                            let _ = tx.send(JobEvent::Train(note));
                        }
                        JobEvent::DashboardWritten(path.to_path_buf())
                    }
                };
                let _ = tx.send(event);
            },
        )?;
        Ok(())
    })
}

/// An activation cache to harvest from the app (`attn-saes harvest`).
#[derive(Debug, Clone)]
pub struct HarvestRequest {
    /// The harvest's flags (those `harvest` takes).
    pub args: TrainArgs,
    pub device: DeviceChoice,
    pub tokens: usize,
    pub out: PathBuf,
}

/// Harvests an activation cache; the stop flag stops it after the LM's current forward,
/// leaving no cache (see [`crate::data::store::write_cache`]).
pub fn start_harvest(request: HarvestRequest) -> Job {
    spawn(JobKind::Harvest, move |tx, control| {
        use crate::cli_train::HarvestProgress;
        let out = &request.out;
        let meta = crate::cli_train::harvest(
            &request.args,
            request.device,
            request.tokens,
            crate::data::store::DEFAULT_SHARD_TOKENS,
            out,
            &mut |p| {
                if control.stop.load(Ordering::SeqCst) {
                    anyhow::bail!(
                        "harvest stopped: {} holds no activation cache yet (its shards so far \
                         are not marked complete); Harvest with the same settings goes on \
                         from its last shard",
                        out.display()
                    );
                }
                let _ = tx.send(match p {
                    HarvestProgress::LoadingModel(m) => {
                        JobEvent::Phase(format!("loading model {m}"))
                    }
                    HarvestProgress::Resuming { shards, tokens } => JobEvent::Phase(format!(
                        "going on with the harvest stopped there: its {shards} shards \
                         ({tokens} tokens) are kept"
                    )),
                    HarvestProgress::Written(n) => JobEvent::Progress {
                        phase: "harvesting activations".into(),
                        done: n,
                        total: request.tokens,
                    },
                });
                Ok(())
            },
        )?;
        let _ = tx.send(JobEvent::Harvested(crate::cli_train::harvested_line(
            &meta, out,
        )));
        Ok(())
    })
}

fn dashboard_progress(phase: &str, done: usize, total: usize) -> JobEvent {
    JobEvent::Progress {
        phase: format!("building dashboards: {phase}"),
        done,
        total,
    }
}

/// Builds the dashboards of a run's checkpoint (`None`: its final SAE, else its latest
/// checkpoint) on `device`, writing the run's dashboard file.
pub fn start_dashboards(
    run_dir: PathBuf,
    checkpoint: Option<PathBuf>,
    device: DeviceChoice,
    upstream: bool,
) -> Job {
    spawn(JobKind::Dashboards, move |tx, _| {
        let ckpt = train::checkpoint::resolve_resume(checkpoint.as_deref().unwrap_or(&run_dir))?;
        let config = train::checkpoint::read_config(&ckpt)?;
        let _ = tx.send(JobEvent::Phase(format!("loading model {}", config.model)));
        let (_, loaded) = crate::cli_train::open_model(device, &config.model)?;
        let options = BuildOptions {
            upstream,
            ..BuildOptions::default()
        };
        build_dashboards(&run_dir, checkpoint.as_deref(), &loaded, &options, tx)
    })
}

fn build_dashboards(
    run: &Path,
    checkpoint: Option<&Path>,
    loaded: &crate::lm::LoadedModel,
    options: &BuildOptions,
    tx: &Sender<JobEvent>,
) -> anyhow::Result<()> {
    let (d, notice) = dashboard::build_for_run(
        run,
        checkpoint,
        loaded,
        dashboard::DEFAULT_TOKENS,
        None,
        options,
        &mut |phase, done, total| {
            let _ = tx.send(dashboard_progress(phase, done, total));
        },
    )?;
    let path = dashboard::run_dashboard_path(run);
    dashboard::build::write(&d, &path)?;
    if let Some(notice) = notice {
        let _ = tx.send(JobEvent::Train(TrainEvent::Notice(notice)));
    }
    let _ = tx.send(JobEvent::DashboardWritten(path));
    Ok(())
}

/// What the live-analysis worker reports.
pub enum LiveEvent {
    /// The model and SAE are loaded: a description.
    Ready(String),
    Analysis(Box<crate::live::LiveAnalysis>),
    /// The model or SAE could not be loaded (the worker has stopped), or a text failed.
    Failed(String),
    /// The answer to [`LiveRequest::Effect`].
    Effect {
        ids: Vec<u32>,
        head: usize,
        feature: usize,
        result: Result<crate::live::FeatureEffect, String>,
    },
    /// The answer to [`LiveRequest::Examples`].
    Examples {
        head: usize,
        feature: usize,
        result: Result<crate::live::ExamplesEffect, String>,
    },
    /// The answer to [`LiveRequest::Split`].
    Split {
        head: usize,
        feature: usize,
        result: Result<crate::dashboard::format::FeatureUpstream, String>,
    },
    /// The answer to [`LiveRequest::Steer`].
    Steered {
        ids: Vec<u32>,
        head: usize,
        feature: usize,
        result: Result<crate::live::Steered, String>,
    },
    /// The answer to [`LiveRequest::Upstream`].
    Upstream {
        ids: Vec<u32>,
        ask: crate::live::UpstreamAsk,
        result: Result<crate::live::Upstream, String>,
    },
    /// The answer to [`LiveRequest::Rank`].
    Ranking {
        ids: Vec<u32>,
        result: Result<crate::live::FeatureRanking, String>,
    },
    /// [`LiveRequest::RankPrompts`] has ranked on `done` of `of` prompts.
    PromptsProgress {
        done: usize,
        of: usize,
    },
    /// The answer to [`LiveRequest::RankPrompts`].
    PromptsRanking {
        lines: Vec<crate::live::PromptLine>,
        result: Result<crate::live::PromptsRanking, String>,
    },
    /// [`LiveRequest::ExactPrompts`] has removed `done` of `of` features.
    ExactProgress {
        done: usize,
        of: usize,
    },
    /// The answer to [`LiveRequest::ExactPrompts`]: `(head, feature, mean exact change)`.
    PromptsExact {
        lines: Vec<crate::live::PromptLine>,
        result: Result<crate::live::ExactChanges, String>,
    },
    /// [`LiveRequest::SpreadPrompts`] has taken the DFA apart on `done` of `of` prompts.
    SpreadProgress {
        done: usize,
        of: usize,
    },
    /// The answer to [`LiveRequest::SpreadPrompts`].
    PromptsSpread {
        lines: Vec<crate::live::PromptLine>,
        ask: crate::live::SpreadAsk,
        result: Result<crate::live::PromptsSpread, String>,
    },
}

/// What the live-analysis worker is asked to do.
#[derive(Debug, Clone)]
pub enum LiveRequest {
    /// Analyse a text.
    Analyse(String),
    /// What removing a feature changes in the predictions on these tokens (and in an
    /// answer objective's value, if given).
    Effect {
        ids: Vec<u32>,
        head: usize,
        feature: usize,
        objective: Option<crate::live::Objective>,
    },
    /// Every feature firing on these tokens, ranked by its estimated effect on the loss,
    /// or on an answer.
    Rank {
        ids: Vec<u32>,
        answer: Option<crate::live::AnswerAsk>,
    },
    /// Every feature firing in any of a prompt set's texts, ranked by its estimated effect
    /// on each one's answer, averaged ([`crate::live::PromptsRanking`]).
    RankPrompts { lines: Vec<crate::live::PromptLine> },
    /// Each of `features` removed from every prompt of a set it fires in (`ranking`, the
    /// set's), exactly: what its answer loses, averaged ([`crate::live::exact_on_prompts`]).
    ExactPrompts {
        lines: Vec<crate::live::PromptLine>,
        ranking: Box<crate::live::PromptsRanking>,
        features: Vec<(usize, usize)>,
    },
    /// A feature's DFA taken apart upstream on each of a prompt set's texts
    /// ([`crate::live::PromptsSpread`]).
    SpreadPrompts {
        lines: Vec<crate::live::PromptLine>,
        ask: crate::live::SpreadAsk,
    },
    /// These tokens continued clean and steered ([`crate::live::Steered`]).
    Steer {
        ids: Vec<u32>,
        steering: crate::live::Steering,
    },
    /// A feature's DFA at a position from a source on these tokens, by what wrote the
    /// residual stream at the source, or further up through heads
    /// ([`crate::live::Upstream`]).
    Upstream {
        ids: Vec<u32>,
        ask: crate::live::UpstreamAsk,
    },
    /// What removing a feature does on its top examples, `(window, target)` each.
    Examples {
        head: usize,
        feature: usize,
        examples: Vec<(Vec<u32>, usize)>,
    },
    /// What wrote what a feature reads over its top examples, `(window, target)` each
    /// ([`LiveModel::examples_split`]).
    Split {
        head: usize,
        feature: usize,
        examples: Vec<(Vec<u32>, usize)>,
    },
    /// Give the model and SAE loaded to another worker ([`start_live_after`]) and stop,
    /// leaving what else was asked unanswered.
    HandOver(Sender<LiveModel>),
}

impl LiveRequest {
    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// A run's model and SAE kept loaded on a thread, analysing the texts sent to it.
pub struct LiveWorker {
    pub requests: Sender<LiveRequest>,
    pub events: Receiver<LiveEvent>,
}

/// Where the live analysis gets its model and SAE.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveSource {
    /// A run directory: its config's model and layer, its final SAE (else its latest
    /// checkpoint's).
    Run(PathBuf),
    /// What a dashboard file records: the model it was built on, the SAE's directory, the
    /// layer and the hook_z convention.
    Recorded {
        model: String,
        sae_dir: PathBuf,
        layer: usize,
        z_convention: crate::lm::ZConvention,
        /// Whether the SAE reads BOS positions (the dashboard counted them).
        keep_bos: bool,
    },
}

impl LiveSource {
    /// The source the metadata of the dashboard file at `file` names.
    pub fn of_dashboard(meta: &crate::dashboard::format::DashboardMeta, file: &Path) -> Self {
        let z_convention = if meta.z_convention == "Raw" {
            crate::lm::ZConvention::Raw
        } else {
            crate::lm::ZConvention::TransformerLens
        };
        Self::Recorded {
            model: meta.model.name.clone(),
            sae_dir: meta.sae_dir(file),
            layer: meta.hook_layer,
            z_convention,
            keep_bos: meta.settings.keep_bos,
        }
    }
}

/// Loads the model and SAE `source` names on `device`, then answers each request, in order;
/// a request with a newer one of its kind waiting is skipped.
pub fn start_live(source: LiveSource, device: DeviceChoice) -> LiveWorker {
    start_live_after(source, device, None)
}

/// [`start_live`] after `before`, a worker asked to hand its model over: when it is the
/// model `source` names on the same device, it is kept and only the SAE is loaded.
pub fn start_live_after(
    source: LiveSource,
    device: DeviceChoice,
    before: Option<LiveWorker>,
) -> LiveWorker {
    let (requests, texts) = channel::<LiveRequest>();
    let (tx, events) = channel();
    let handed = before.and_then(|before| {
        let (give, take) = channel();
        before.requests.send(LiveRequest::HandOver(give)).ok()?;
        Some(take)
    });
    let _ = std::thread::Builder::new()
        .name("attn-saes live".into())
        .spawn(move || {
            let run = || {
                let before = handed.and_then(|take| take.recv().ok());
                live_loop(load_live_keeping(&source, device, before)?, &texts, &tx)
            };
            if let Err(message) = caught(run) {
                let _ = tx.send(LiveEvent::Failed(message));
            }
        });
    LiveWorker { requests, events }
}

/// A model and SAE loaded for live analysis.
pub struct LiveModel {
    pub loaded: crate::lm::LoadedModel,
    pub sae: crate::sae::BlockDiagSae,
    pub layer: usize,
    pub z_convention: crate::lm::ZConvention,
    /// `model layer L, SAE dir` (and `, the model kept` when it was).
    pub description: String,
    /// The device it runs on and why, in words (what the CLI prints for `--device`).
    pub device_description: String,
    /// The model as the run or dashboard names it, the device asked for and the one it is
    /// on: what another worker may keep.
    model: String,
    choice: DeviceChoice,
    device: burn::prelude::Device,
}

impl LiveModel {
    pub fn analyse(&self, text: &str) -> anyhow::Result<crate::live::LiveAnalysis> {
        crate::live::LiveAnalysis::run(&self.loaded, &self.sae, self.layer, self.z_convention, text)
    }

    /// What removing `feature` of `head` does on `examples`, `(window, target)` each.
    pub fn examples_effect(
        &self,
        examples: &[(Vec<u32>, usize)],
        head: usize,
        feature: usize,
    ) -> anyhow::Result<crate::live::ExamplesEffect> {
        let effects = crate::live::effects_on_examples(
            &self.loaded,
            &self.sae,
            self.layer,
            self.z_convention,
            examples,
            head,
            feature,
        )?;
        let targets: Vec<usize> = examples.iter().map(|e| e.1).collect();
        Ok(crate::live::ExamplesEffect::of(&effects, &targets))
    }

    /// What wrote what `feature` of `head` reads over `examples`, `(window, target)` each:
    /// each one's DFA from its largest source split upstream, as `dashboard --upstream`
    /// puts it in the file (`upstream --top-examples`).
    pub fn examples_split(
        &self,
        examples: &[(Vec<u32>, usize)],
        head: usize,
        feature: usize,
    ) -> anyhow::Result<crate::dashboard::format::FeatureUpstream> {
        let hook = (self.layer, self.z_convention);
        let (loaded, sae) = (&self.loaded, &self.sae);
        crate::live::examples_split(loaded, sae, hook, examples, (head, feature))
    }

    /// Every feature firing in `ids`, ranked by a first-order estimate of its effect on the
    /// loss.
    pub fn rank(&self, ids: &[u32]) -> anyhow::Result<crate::live::FeatureRanking> {
        self.rank_for(ids, &crate::live::Objective::Loss)
    }

    /// [`rank`](Self::rank) by what each feature adds to `objective`.
    pub fn rank_for(
        &self,
        ids: &[u32],
        objective: &crate::live::Objective,
    ) -> anyhow::Result<crate::live::FeatureRanking> {
        let at = (self.layer, self.z_convention);
        crate::live::rank_features_for(&self.loaded, &self.sae, at.0, at.1, ids, objective)
    }

    /// The features ranked over a prompt set (`rank --prompts`), `progress(done, of)` after
    /// each prompt.
    pub fn rank_prompts(
        &self,
        lines: &[crate::live::PromptLine],
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<crate::live::PromptsRanking> {
        let at = (self.layer, self.z_convention);
        crate::live::rank_prompt_lines(&self.loaded, &self.sae, at, lines, progress)
    }

    /// A feature's DFA taken apart upstream on each of a prompt set's texts,
    /// `progress(done, of)` after each prompt.
    pub fn spread_prompts(
        &self,
        lines: &[crate::live::PromptLine],
        ask: &crate::live::SpreadAsk,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<crate::live::PromptsSpread> {
        let at = (self.layer, self.z_convention);
        crate::live::upstream_on_prompt_lines(&self.loaded, &self.sae, at, lines, ask, progress)
    }

    /// `ids` continued clean and steered as `steering` asks.
    pub fn steer(
        &self,
        ids: &[u32],
        steering: &crate::live::Steering,
    ) -> anyhow::Result<crate::live::Steered> {
        crate::live::steer(
            &self.loaded,
            &self.sae,
            self.layer,
            self.z_convention,
            ids,
            steering,
        )
    }

    /// The split `ask` asks for of the text `ids` ([`crate::live::upstream_through`]).
    pub fn upstream(
        &self,
        ids: &[u32],
        ask: &crate::live::UpstreamAsk,
    ) -> anyhow::Result<crate::live::Upstream> {
        let hook = (self.layer, self.z_convention);
        crate::live::upstream_through(&self.loaded, &self.sae, hook, ids, ask)
    }

    /// What removing `feature` of `head` wherever it fires in `ids` changes in the model's
    /// next-token predictions.
    /// With an answer `objective`, also its value with and without the feature.
    pub fn effect(
        &self,
        ids: &[u32],
        (head, feature): (usize, usize),
        objective: Option<&crate::live::Objective>,
    ) -> anyhow::Result<crate::live::FeatureEffect> {
        crate::live::feature_effect_on(
            &self.loaded,
            &self.sae,
            (self.layer, self.z_convention),
            ids,
            (head, feature),
            0.0,
            objective,
        )
    }
}

/// Loads the model and SAE `source` names on `device`.
pub fn load_live(source: &LiveSource, device: DeviceChoice) -> anyhow::Result<LiveModel> {
    load_live_keeping(source, device, None)
}

/// [`load_live`], keeping the model of `before` when it is the same model asked for on the
/// same device.
fn load_live_keeping(
    source: &LiveSource,
    device: DeviceChoice,
    before: Option<LiveModel>,
) -> anyhow::Result<LiveModel> {
    let (model, sae_dir, config, layer, (z_convention, keep_bos)) = match source {
        // An SAE directory (a run's sae/, an import): where it was trained, as it records.
        LiveSource::Run(dir) if dir.join(crate::sae::io::CONFIG_FILE).is_file() => {
            let o = crate::sae::BlockDiagSae::read_origin(dir)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{} does not record the model and layer it was trained on: build its \
                     dashboards with `dashboard --sae {0} --model M --hook-layer L` and open \
                     the dashboard file, which records them",
                    dir.display()
                )
            })?;
            let z = (o.z_convention, o.keep_bos);
            (o.model, dir.clone(), None, Some(o.hook_layer), z)
        }
        LiveSource::Run(run_dir) => {
            let (ckpt, sae_dir) = train::checkpoint::run_sae(run_dir, None)?;
            let config = train::checkpoint::read_config(&ckpt)?;
            let (model, z) = (config.model.clone(), config.z_convention);
            let keep_bos = !config.drop_bos;
            (model, sae_dir, Some(config), None, (z, keep_bos))
        }
        LiveSource::Recorded {
            model,
            sae_dir,
            layer,
            z_convention,
            keep_bos,
        } => (
            model.clone(),
            sae_dir.clone(),
            None,
            Some(*layer),
            (*z_convention, *keep_bos),
        ),
    };
    anyhow::ensure!(
        sae_dir.is_dir(),
        "the SAE at {} is not on this machine (open its run directory instead)",
        sae_dir.display()
    );
    let kept = before.filter(|b| b.model == model && b.choice == device);
    let (loaded, on, device_description, kept) = match kept {
        Some(b) => (b.loaded, b.device, b.device_description, true),
        None => {
            let (selected, loaded) = crate::cli_train::open_model(device, &model)?;
            (loaded, selected.device, selected.description, false)
        }
    };
    let sae = crate::sae::BlockDiagSae {
        reads_bos: keep_bos,
        ..crate::sae::BlockDiagSae::load(&sae_dir, &on)?
    };
    let config_lm = &loaded.transformer.config;
    sae.check_fits(&config_lm.name, config_lm.n_heads, config_lm.d_head)?;
    let n_layers = config_lm.n_layers;
    let layer = layer
        .or_else(|| config.map(|c| c.layer(n_layers)))
        .unwrap_or(n_layers / 2);
    let description = format!(
        "{} layer {layer}, SAE {}{}",
        config_lm.name,
        sae_dir.display(),
        if kept { ", the model kept" } else { "" }
    );
    Ok(LiveModel {
        loaded,
        sae,
        layer,
        z_convention,
        description,
        device_description,
        model,
        choice: device,
        device: on,
    })
}

fn live_loop(
    live: LiveModel,
    requests: &Receiver<LiveRequest>,
    tx: &Sender<LiveEvent>,
) -> anyhow::Result<()> {
    let _ = tx.send(LiveEvent::Ready(live.description.clone()));
    while let Ok(first) = requests.recv() {
        let mut batch: Vec<LiveRequest> =
            std::iter::once(first).chain(requests.try_iter()).collect();
        // Asked to hand the model over: the rest is another SAE's business now.
        if let Some(i) = (batch.iter()).position(|r| matches!(r, LiveRequest::HandOver(_))) {
            if let LiveRequest::HandOver(give) = batch.swap_remove(i) {
                let _ = give.send(live);
            }
            return Ok(());
        }
        for (i, request) in batch.iter().enumerate() {
            if batch[i + 1..].iter().any(|r| r.same_kind(request)) {
                continue;
            }
            let event = match request {
                LiveRequest::Analyse(text) => match live.analyse(text) {
                    Ok(a) => LiveEvent::Analysis(Box::new(a)),
                    Err(e) => LiveEvent::Failed(format!("{e:#}")),
                },
                LiveRequest::Effect {
                    ids,
                    head,
                    feature,
                    objective,
                } => LiveEvent::Effect {
                    ids: ids.clone(),
                    head: *head,
                    feature: *feature,
                    result: live
                        .effect(ids, (*head, *feature), objective.as_ref())
                        .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::Examples {
                    head,
                    feature,
                    examples,
                } => LiveEvent::Examples {
                    head: *head,
                    feature: *feature,
                    result: live
                        .examples_effect(examples, *head, *feature)
                        .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::Split {
                    head,
                    feature,
                    examples,
                } => LiveEvent::Split {
                    head: *head,
                    feature: *feature,
                    result: live
                        .examples_split(examples, *head, *feature)
                        .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::Steer { ids, steering } => LiveEvent::Steered {
                    ids: ids.clone(),
                    head: steering.head,
                    feature: steering.feature,
                    result: live.steer(ids, steering).map_err(|e| format!("{e:#}")),
                },
                LiveRequest::Upstream { ids, ask } => LiveEvent::Upstream {
                    ids: ids.clone(),
                    ask: ask.clone(),
                    result: (live.upstream(ids, ask)).map_err(|e| format!("{e:#}")),
                },
                LiveRequest::Rank { ids, answer } => LiveEvent::Ranking {
                    ids: ids.clone(),
                    result: crate::live::resolve_answer(&live.loaded, ids, answer.as_ref())
                        .and_then(|objective| live.rank_for(ids, &objective))
                        .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::RankPrompts { lines } => LiveEvent::PromptsRanking {
                    lines: lines.clone(),
                    result: (live.rank_prompts(lines, &mut |done, of| {
                        let _ = tx.send(LiveEvent::PromptsProgress { done, of });
                    }))
                    .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::ExactPrompts {
                    lines,
                    ranking,
                    features,
                } => LiveEvent::PromptsExact {
                    lines: lines.clone(),
                    result: crate::live::exact_prompt_lines(
                        &live.loaded,
                        &live.sae,
                        (live.layer, live.z_convention),
                        (lines, ranking),
                        features,
                        &mut |done, of| {
                            let _ = tx.send(LiveEvent::ExactProgress { done, of });
                        },
                    )
                    .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::SpreadPrompts { lines, ask } => LiveEvent::PromptsSpread {
                    lines: lines.clone(),
                    ask: *ask,
                    result: (live.spread_prompts(lines, ask, &mut |done, of| {
                        let _ = tx.send(LiveEvent::SpreadProgress { done, of });
                    }))
                    .map_err(|e| format!("{e:#}")),
                },
                LiveRequest::HandOver(_) => unreachable!("taken out of the batch above"),
            };
            let _ = tx.send(event);
        }
    }
    Ok(())
}
