//! The egui app: training with live curves, and per-head feature dashboards.
//!
//! Structure (rerun's): [`AttnSaesApp`] owns the data (the open dashboard, the curves, the
//! run and its background job, messages); [`UiState`] holds what the user chose (view,
//! selections, toggles, the training form; persisted); UI code pushes [`Command`]s that
//! are applied between frames. The app knows training only through `TrainEvent`s and the
//! run directory, and dashboards only through the dashboard file.
//!
//! `curves`, `features` and `text_view` compile for wasm32 (no burn, threads or files); the
//! training parts are native only. Your text gets its analyses from a worker thread on the
//! desktop and from the page's inference bundle on the web (`WebText`, `src/web.rs`).

pub mod curves;
pub mod features;
#[cfg(not(target_arch = "wasm32"))]
pub mod jobs;
pub mod text_view;
#[cfg(not(target_arch = "wasm32"))]
pub mod train_view;

#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

use eframe::egui;

#[cfg(not(target_arch = "wasm32"))]
use crate::run_log::short_name;
use curves::{Compared, Curves, CurvesAction, CurvesState};
use features::{FeaturesState, LoadedDashboard};

#[cfg(not(target_arch = "wasm32"))]
use crate::train::TrainEvent;
#[cfg(not(target_arch = "wasm32"))]
use jobs::{HarvestRequest, Job, JobEvent, JobKind, TrainRequest};
#[cfg(not(target_arch = "wasm32"))]
use train_view::{FieldError, FormAction, JobStatus, TrainForm};

/// The app's top-level views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum View {
    Train,
    Curves,
    #[default]
    Features,
    /// Live analysis of the user's text.
    Text,
}

impl View {
    pub fn label(self) -> &'static str {
        match self {
            Self::Train => "Train",
            Self::Curves => "Curves",
            Self::Features => "Features",
            Self::Text => "Your text",
        }
    }
}

/// What the user chose; saved between launches.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UiState {
    pub view: View,
    /// Recently opened runs and dashboard files, newest first.
    pub recent: Vec<String>,
    pub features: FeaturesState,
    pub curves: CurvesState,
    #[cfg(not(target_arch = "wasm32"))]
    pub form: TrainForm,
    pub text: text_view::TextState,
}

/// Something the UI asks for, applied between frames.
pub enum Command {
    /// A dashboard file's bytes (dropped, fetched or read), with a name to show.
    OpenBytes {
        name: String,
        bytes: Vec<u8>,
    },
    /// A run directory or a dashboard file.
    #[cfg(not(target_arch = "wasm32"))]
    OpenPath(PathBuf),
    /// A run directory (its `metrics.jsonl`) or a dashboard file to compare with.
    #[cfg(not(target_arch = "wasm32"))]
    ComparePath(PathBuf),
    #[cfg(not(target_arch = "wasm32"))]
    StartTraining(Box<TrainRequest>),
    /// Harvest an activation cache for runs to train from.
    #[cfg(not(target_arch = "wasm32"))]
    StartHarvest(Box<HarvestRequest>),
    #[cfg(not(target_arch = "wasm32"))]
    StopTraining,
    /// Build the dashboards of the open run (its final SAE or latest checkpoint).
    #[cfg(not(target_arch = "wasm32"))]
    /// Build the open run's dashboards; with what wrote what each feature reads when true.
    BuildDashboards(bool),
    SetView(View),
    /// Show one feature's dashboard (`app --feature`, the page's `?feature=`).
    OpenFeature {
        head: usize,
        feature: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

const STORAGE_KEY: &str = "attn-saes-ui";
#[cfg(not(target_arch = "wasm32"))]
const MAX_RECENT: usize = 10;
const MAX_MESSAGES: usize = 6;

/// The app.
pub struct AttnSaesApp {
    pub ui: UiState,
    pub dashboard: Option<LoadedDashboard>,
    pub curves: Curves,
    /// Other runs whose curves are drawn beside the open run's (kept when another opens).
    pub compared: Vec<Compared>,
    /// Compared runs' dashboards, kept to be opened ([`curves::ComparedSource::Kept`]; the page).
    pub kept: Vec<LoadedDashboard>,
    /// Dashboards opened so far: tells one open dashboard from the next of the same name.
    pub opened: u64,
    pub messages: Vec<(Level, String)>,
    commands: Vec<Command>,
    #[cfg(not(target_arch = "wasm32"))]
    pub native: Native,
    #[cfg(target_arch = "wasm32")]
    pub web: WebText,
}

/// The web page's side of "Your text": the analyses come from the page's inference bundle
/// (`src/web.rs` sends the requests and fills in the results).
#[cfg(target_arch = "wasm32")]
#[derive(Default)]
pub struct WebText {
    pub status: String,
    pub analysis: Option<std::rc::Rc<dyn crate::live::Analysed>>,
    /// A text to analyse, taken by `src/web.rs`.
    pub requested: Option<String>,
    /// The feature effect asked for, and the request `src/web.rs` takes and sends to the
    /// page (it fills in the answer).
    pub effect: Option<crate::live::AskedEffect>,
    pub effect_request: Option<(Vec<u32>, usize, usize, Option<crate::live::Objective>)>,
    /// The same for the feature ranking.
    pub ranking: Option<crate::live::AskedRanking>,
    pub ranking_request: Option<(Vec<u32>, Option<crate::live::AnswerAsk>)>,
    /// The same for a steered continuation.
    pub steer: Option<crate::live::AskedSteer>,
    pub steer_request: Option<(Vec<u32>, crate::live::Steering)>,
    /// The same for a feature's effect on its top examples.
    pub examples: Option<crate::live::AskedExamples>,
    pub examples_request: Option<ExamplesRequest>,
    /// The same for what wrote what a feature reads over its top examples.
    pub split: Option<crate::live::AskedSplit>,
    pub split_request: Option<ExamplesRequest>,
    /// The same for a source's DFA taken upstream.
    pub upstream: Option<crate::live::AskedUpstream>,
    pub upstream_request: Option<crate::live::UpstreamKey>,
    /// The same for the features ranked over a prompt set.
    pub prompts: Option<crate::live::AskedPrompts>,
    pub prompts_request: Option<Vec<crate::live::PromptLine>>,
    /// The same for a feature's DFA taken apart upstream over a prompt set.
    pub spread: Option<crate::live::AskedSpread>,
    pub spread_request: Option<(Vec<crate::live::PromptLine>, crate::live::SpreadAsk)>,
    /// The exact changes of the listed features over the prompt set ranked, asked for.
    pub exact_request: Option<ExactRequest>,
    /// The page's inference bundle has a model loaded.
    pub live_ready: bool,
    /// The model and SAE loaded were checked against another dashboard than the open one
    /// (one opened since: a file, a compared run's): Your text's features are not its.
    pub live_other: bool,
    /// The open dashboard's `built_from` the page was last asked to load the model and SAE
    /// of (when it has them: a compared run `serve` serves), so that it is asked once.
    pub followed: String,
    /// Whether to analyse the text again once the model and SAE being loaded are ready.
    pub rerun: bool,
}

/// An exact-changes request of the page: the prompt set's lines and the features.
#[cfg(target_arch = "wasm32")]
pub type ExactRequest = (Vec<crate::live::PromptLine>, Vec<(usize, usize)>);

/// What opening the prompt set's file `name` with `text` says: how many prompts it holds,
/// or why it is not a prompt set, naming the line.
pub fn prompt_set_said(name: &str, text: &str) -> Result<String, String> {
    crate::live::PromptLine::parse_set(text, name).map(|lines| {
        format!(
            "{} prompts from {name} in Your text's prompt set (Rank over the set, under a text \
             analysed)",
            lines.len()
        )
    })
}

/// Opens the page's picker for a prompt set's file (web/index.html's hidden `prompt-file`
/// input, which hands the file's text to `attnSaes.open_prompt_set`).
#[cfg(target_arch = "wasm32")]
fn pick_prompt_file_in_page() {
    use wasm_bindgen::JsCast;
    let input = (web_sys::window().and_then(|w| w.document()))
        .and_then(|d| d.get_element_by_id("prompt-file"))
        .and_then(|e| e.dyn_into::<web_sys::HtmlElement>().ok());
    if let Some(input) = input {
        input.click();
    }
}

#[cfg(target_arch = "wasm32")]
impl WebText {
    /// Asks (through `src/web.rs`) what removing a feature changes in the analysed text.
    /// With the ranking's answer objective when there is one for the text.
    pub fn ask_effect(&mut self, head: usize, feature: usize) {
        let Some(a) = &self.analysis else { return };
        let ids = a.tokens().ids.clone();
        let objective = self.ranking.as_ref().and_then(|r| r.answer_for(&ids));
        self.effect_request = Some((ids.clone(), head, feature, objective));
        self.effect = Some(crate::live::Asked::computing(ids, head, feature));
    }

    /// Asks (through `src/web.rs`) for a feature's DFA at a position from a source in the
    /// analysed text, by what wrote the residual stream at the source (or further up).
    pub fn ask_upstream(&mut self, ask: crate::live::UpstreamAsk) {
        let Some(a) = &self.analysis else { return };
        let ids = a.tokens().ids.clone();
        self.upstream_request = Some((ids.clone(), ask.clone()));
        self.upstream = Some(crate::live::AskedUpstream::computing(ids, ask));
    }

    /// Asks (through `src/web.rs`) for the analysed text continued clean and steered.
    pub fn ask_steer(&mut self, steering: crate::live::Steering) {
        let Some(a) = &self.analysis else { return };
        let ids = a.tokens().ids.clone();
        let (head, feature) = (steering.head, steering.feature);
        self.steer_request = Some((ids.clone(), steering));
        self.steer = Some(crate::live::Asked::computing(ids, head, feature));
    }

    /// Asks (through `src/web.rs`) for the features ranked over a prompt set.
    pub fn ask_prompts(&mut self, lines: Vec<crate::live::PromptLine>) {
        self.prompts_request = Some(lines.clone());
        self.prompts = Some(crate::live::AskedPrompts::computing(lines));
    }

    /// Asks (through `src/web.rs`) for the exact changes of `features` over the prompt set
    /// ranked (the inference bundle keeps its last ranking of it).
    pub fn ask_exact(&mut self, features: Vec<(usize, usize)>) {
        if let Some(asked) = self.prompts.as_mut().filter(|p| p.ranking().is_some()) {
            self.exact_request = Some((asked.lines.clone(), features.clone()));
            asked.ask_exact(features.len());
        }
    }

    /// Asks (through `src/web.rs`) for a feature's DFA taken apart upstream over a prompt
    /// set.
    pub fn ask_spread(&mut self, lines: Vec<crate::live::PromptLine>, ask: crate::live::SpreadAsk) {
        self.spread_request = Some((lines.clone(), ask));
        self.spread = Some(crate::live::AskedSpread::computing(lines, ask));
    }

    /// Asks (through `src/web.rs`) for the ranking of the analysed text's features.
    pub fn ask_ranking(&mut self, answer: Option<crate::live::AnswerAsk>) {
        let Some(a) = &self.analysis else { return };
        let ids = a.tokens().ids.clone();
        self.ranking_request = Some((ids.clone(), answer));
        self.ranking = Some(crate::live::AskedRanking {
            ids,
            state: crate::live::Answer::Computing,
        });
    }

    /// Asks (through `src/web.rs`) what removing a feature does on its top examples.
    pub fn ask_examples(&mut self, head: usize, feature: usize, examples: Vec<(Vec<u32>, usize)>) {
        let asked = (&mut self.examples, &mut self.examples_request);
        ask_about_examples(asked, (head, feature, examples));
    }

    /// Asks (through `src/web.rs`) what wrote what a feature reads over its top examples.
    pub fn ask_split(&mut self, head: usize, feature: usize, examples: Vec<(Vec<u32>, usize)>) {
        ask_about_examples(
            (&mut self.split, &mut self.split_request),
            (head, feature, examples),
        );
    }
}

/// A question about `(head, feature)`'s top examples, `(window, target)` each.
pub type ExamplesRequest = (usize, usize, crate::live::Examples);

/// Asks (through `src/web.rs`) something about `feature` of `head`'s top examples,
/// `(window, target)` each: shown as computing, the request kept for the page to send.
pub fn ask_about_examples<T>(
    (shown, request): (
        &mut Option<crate::live::AskedOfExamples<T>>,
        &mut Option<ExamplesRequest>,
    ),
    (head, feature, examples): ExamplesRequest,
) {
    *shown = Some(crate::live::AskedOfExamples::computing(head, feature));
    *request = Some((head, feature, examples));
}

/// The desktop-only data: the open run and its background job.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Default)]
pub struct Native {
    pub run_dir: Option<PathBuf>,
    /// The dashboard file last opened (a run's, or one opened alone).
    pub dashboard_file: Option<PathBuf>,
    /// The training job.
    pub job: Option<Job>,
    pub status: JobStatus,
    /// A dashboard build (may run beside training, on a checkpoint).
    pub builder: Option<Job>,
    pub builder_status: JobStatus,
    pub form_errors: Vec<FieldError>,
    /// Where a job goes when the window closes while it runs ("keep training headless").
    pub detached: Option<std::sync::Arc<std::sync::Mutex<Option<Job>>>>,
    /// The close dialog is showing.
    close_dialog: bool,
    /// Close once the job has stopped.
    close_when_stopped: bool,
    /// The user chose to quit.
    closing: bool,
    /// The live-analysis worker and what it loaded.
    pub live: Option<(jobs::LiveSource, jobs::LiveWorker)>,
    /// The worker of a run no longer open, kept for the next one to take its model over.
    idle_live: Option<jobs::LiveWorker>,
    pub live_status: String,
    /// What the live worker said it loaded (`model layer L, SAE dir[, the model kept]`).
    pub live_loaded: String,
    pub analysis: Option<Box<crate::live::LiveAnalysis>>,
    /// The feature effect asked of the worker.
    pub effect: Option<crate::live::AskedEffect>,
    /// The feature ranking asked of the worker.
    pub ranking: Option<crate::live::AskedRanking>,
    /// The steered continuation asked of the worker.
    pub steer: Option<crate::live::AskedSteer>,
    /// A feature's effect on its top examples, asked of the worker.
    pub examples: Option<crate::live::AskedExamples>,
    /// What wrote what a feature reads over its top examples, asked of the worker.
    pub split: Option<crate::live::AskedSplit>,
    /// A source's DFA taken upstream, asked of the worker.
    pub upstream: Option<crate::live::AskedUpstream>,
    /// The features ranked over a prompt set, asked of the worker.
    pub prompts: Option<crate::live::AskedPrompts>,
    /// A feature's DFA taken apart upstream over a prompt set, asked of the worker.
    pub spread: Option<crate::live::AskedSpread>,
    /// A text was sent to the worker and its analysis has not arrived.
    text_pending: bool,
}

impl AttnSaesApp {
    /// Puts the text of a prompt set's file `name` (`rank --prompts`' lines) in Your text's
    /// prompt set and shows Your text; says (and returns) how many prompts it holds, or why
    /// it is not a prompt set (its text is put there either way, to mend).
    pub fn open_prompt_set(&mut self, name: &str, text: String) -> Result<String, String> {
        let said = prompt_set_said(name, &text);
        (self.ui.text.prompt_set, self.ui.text.prompt_set_asked) = (text, None);
        self.ui.view = View::Text;
        match &said {
            Ok(said) => self.message(Level::Info, said.clone()),
            Err(why) => self.message(Level::Error, why.clone()),
        }
        said
    }

    /// A new app with `ui` restored from eframe storage when there is one.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let ui = cc
            .storage
            .and_then(|s| eframe::get_value(s, STORAGE_KEY))
            .unwrap_or_default();
        Self::with_state(ui)
    }

    pub fn with_state(ui: UiState) -> Self {
        Self {
            ui,
            dashboard: None,
            curves: Curves::default(),
            compared: Vec::new(),
            kept: Vec::new(),
            opened: 0,
            messages: Vec::new(),
            commands: Vec::new(),
            #[cfg(not(target_arch = "wasm32"))]
            native: Native::default(),
            #[cfg(target_arch = "wasm32")]
            web: WebText::default(),
        }
    }

    pub fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    pub fn message(&mut self, level: Level, text: impl Into<String>) {
        self.messages.push((level, text.into()));
        let extra = self.messages.len().saturating_sub(MAX_MESSAGES);
        self.messages.drain(..extra);
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn remember(&mut self, name: String) {
        self.ui.recent.retain(|r| *r != name);
        self.ui.recent.insert(0, name);
        self.ui.recent.truncate(MAX_RECENT);
    }

    /// Opens a dashboard held in memory, or says why it cannot.
    pub fn open_bytes(&mut self, name: String, bytes: Vec<u8>) {
        match LoadedDashboard::new(name.clone(), bytes) {
            Ok(d) => self.open_loaded(d),
            Err(e) => self.message(Level::Error, format!("{name}: {e}")),
        }
    }

    /// Draws `history` (another run's, named `name`) beside the open run's curves; a run
    /// of the same name already compared is replaced.
    pub fn compare(&mut self, name: String, history: crate::run_log::History) {
        self.compare_sae(name, history, None);
    }

    /// [`Self::compare`], with the compared run's SAE (from its dashboard file) for the
    /// Features view's closest features in it.
    pub fn compare_sae(
        &mut self,
        name: String,
        history: crate::run_log::History,
        sae: Option<curves::ComparedSae>,
    ) {
        self.compare_run(Compared {
            name,
            history,
            sae,
            source: None,
        });
    }

    /// A label being typed belongs to the dashboard open until now: it is given to that one
    /// (when it changes its label) before another opens, whose field starts anew, so that it
    /// never goes to the other's feature of the same or the next selected index.
    fn take_label_draft(&mut self) {
        let Some(((h, f), draft)) = self.ui.features.label_draft.take() else {
            return;
        };
        let open = self.dashboard.as_ref();
        if open.is_some_and(|d| d.labels.get(h, f).unwrap_or_default() != draft.trim()) {
            self.label_feature(h, f, &draft);
        }
    }

    /// Compares the run of the dashboard `d` and keeps `d`, so that its closest features
    /// open it ([`Self::open_compared`]): the page's Compare… and `?compare=`.
    pub fn compare_kept(&mut self, d: LoadedDashboard) {
        let sae = curves::ComparedSae::of(&d.file).ok().flatten();
        let sae = sae.map(|sae| curves::ComparedSae {
            labels: d.labels.clone(),
            ..sae
        });
        let (name, history) = (d.name.clone(), d.file.meta.history.clone());
        let compared = self.compare_run(Compared {
            name: name.clone(),
            history,
            sae,
            source: Some(curves::ComparedSource::Kept),
        });
        if compared {
            self.kept.retain(|k| k.name != name);
            self.kept.push(d);
        }
    }

    /// Opens the compared run `name` at head `head` feature `feature` (a link among its
    /// closest features), and compares the run that was open instead, so that the links
    /// among its closest features lead back.
    pub fn open_compared(&mut self, name: &str, head: usize, feature: usize) {
        let source = (self.compared.iter())
            .find(|c| c.name == name)
            .and_then(|c| c.source.clone());
        let opened = match source {
            #[cfg(not(target_arch = "wasm32"))]
            Some(curves::ComparedSource::Path(path)) => self.open_compared_path(name, &path),
            Some(curves::ComparedSource::Kept) => self.open_kept(name),
            _ => false,
        };
        if opened {
            self.open_feature(head, feature);
        }
    }

    /// [`Self::open_compared`] for a kept dashboard: the open one is kept in its place.
    fn open_kept(&mut self, name: &str) -> bool {
        let Some(i) = self.kept.iter().position(|d| d.name == name) else {
            return false;
        };
        self.take_label_draft();
        let d = self.kept.remove(i);
        self.compared.retain(|c| c.name != name);
        if let Some(open) = self.dashboard.take() {
            self.compare_kept(open);
        }
        self.curves = Curves::default();
        self.open_loaded(d);
        true
    }

    /// [`Self::compare_sae`] with everything a compared run can hold. A run with neither
    /// training metrics nor an SAE's decoder rows (nothing to compare) is an error: false.
    pub fn compare_run(&mut self, compared: Compared) -> bool {
        let Compared {
            name, history, sae, ..
        } = &compared;
        if let Err(why) = curves::comparable(name, history, sae.as_ref()) {
            self.message(Level::Error, why);
            return false;
        }
        let name = name.clone();
        self.compared.retain(|c| c.name != name);
        self.message(Level::Info, format!("comparing with {name}"));
        self.compared.push(compared);
        self.ui.view = View::Curves;
        true
    }

    /// Shows a parsed dashboard; its history becomes the curves unless a run's are shown.
    pub fn open_loaded(&mut self, d: LoadedDashboard) {
        self.take_label_draft();
        self.opened += 1;
        if self.curves.is_empty() {
            self.curves = Curves::from_history(d.name.clone(), d.file.meta.history.clone());
        }
        let heads = d.file.n_heads();
        if self.ui.features.head >= heads {
            self.ui.features = FeaturesState::default();
        }
        let text = format!("opened {}: {}", d.name, d.file.meta.shape_text());
        self.message(Level::Info, text);
        // What was asked about a feature's top examples was of the file before (a rebuilt
        // one may hold other examples).
        #[cfg(not(target_arch = "wasm32"))]
        {
            (self.native.examples, self.native.split) = (None, None);
        }
        #[cfg(target_arch = "wasm32")]
        {
            (self.web.examples, self.web.split) = (None, None);
        }
        self.dashboard = Some(d);
        self.ui.view = View::Features;
    }

    /// The largest activation the open dashboard records for the feature picked in Your
    /// text (what steering strengths are multiples of), when there is one.
    fn largest_activation(&mut self) -> Option<f32> {
        let (head, feature) = self.ui.text.pick?;
        let d = self.dashboard.as_mut()?;
        let largest = d.head(head).ok()?.features.get(feature)?.max_activation;
        (largest > 0.0).then_some(largest)
    }

    /// What is selected, in words (the web page exposes it to scripts and tests).
    pub fn selection(&self) -> String {
        let f = &self.ui.features;
        let mut text = format!("view {:?}", self.ui.view);
        if let Some(d) = &self.dashboard {
            text += &format!(" · {}", d.file.meta.block_name(f.head));
            if let Some(feature) = f.feature {
                text += &format!(" · feature {feature}");
                let data = d.cached_head(f.head).and_then(|h| h.features.get(feature));
                if let Some(data) = data {
                    text += &format!(" · density {:.3e}", data.density);
                }
                if let Some(label) = d.labels.get(f.head, feature) {
                    text += &format!(" · label {label:?}");
                }
            }
        }
        text
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::OpenBytes { name, bytes } => self.open_bytes(name, bytes),
            #[cfg(not(target_arch = "wasm32"))]
            Command::OpenPath(path) => self.open_path(&path),
            #[cfg(not(target_arch = "wasm32"))]
            Command::StartTraining(request) => self.start_training(*request),
            #[cfg(not(target_arch = "wasm32"))]
            Command::StartHarvest(request) => self.start_harvest(*request),
            #[cfg(not(target_arch = "wasm32"))]
            Command::StopTraining => {
                if let Some(job) = &self.native.job {
                    job.request_stop();
                    self.native.status.stopping = true;
                }
            }
            #[cfg(not(target_arch = "wasm32"))]
            Command::BuildDashboards(upstream) => self.build_dashboards(upstream),
            #[cfg(not(target_arch = "wasm32"))]
            Command::ComparePath(path) => self.compare_path(&path),
            Command::SetView(v) => self.ui.view = v,
            Command::OpenFeature { head, feature } => self.open_feature(head, feature),
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("attn-saes");
            ui.separator();
            #[cfg(not(target_arch = "wasm32"))]
            let views = [View::Train, View::Curves, View::Features, View::Text];
            #[cfg(target_arch = "wasm32")]
            let views = [View::Curves, View::Features, View::Text];
            for v in views {
                if ui.selectable_label(self.ui.view == v, v.label()).clicked() {
                    self.push(Command::SetView(v));
                }
            }
            ui.separator();
            #[cfg(not(target_arch = "wasm32"))]
            self.open_buttons(ui);
            #[cfg(not(target_arch = "wasm32"))]
            if self.native.run_dir.is_some()
                && !self.builder_running()
                && ui
                    .button("Build dashboards now")
                    .on_hover_text(
                        "of the run's final SAE, or of its latest checkpoint while it trains",
                    )
                    .clicked()
            {
                self.push(Command::BuildDashboards(false));
            }
            if let Some(d) = &self.dashboard {
                ui.separator();
                ui.label(format!("dashboard: {}", d.name));
            }
        });
    }

    fn messages_ui(&mut self, ui: &mut egui::Ui) {
        let mut clear = false;
        for (level, text) in &self.messages {
            let color = match level {
                Level::Info => ui.visuals().text_color(),
                Level::Error => ui.visuals().error_fg_color,
            };
            ui.colored_label(color, text);
        }
        if !self.messages.is_empty() && ui.small_button("clear messages").clicked() {
            clear = true;
        }
        if clear {
            self.messages.clear();
        }
    }

    fn central(&mut self, ui: &mut egui::Ui) {
        match self.ui.view {
            #[cfg(not(target_arch = "wasm32"))]
            View::Train => self.train_ui(ui),
            #[cfg(target_arch = "wasm32")]
            View::Train => self.ui.view = View::Features,
            #[cfg(target_arch = "wasm32")]
            View::Text => self.web_text_ui(ui),
            #[cfg(not(target_arch = "wasm32"))]
            View::Text => self.live_ui(ui),
            View::Curves => {
                #[cfg(not(target_arch = "wasm32"))]
                self.compare_buttons(ui);
                let action =
                    curves::curves_ui(ui, &self.curves, &self.compared, &mut self.ui.curves);
                if let Some(CurvesAction::Uncompare(i)) = action {
                    // A kept dashboard (the page) with labels not saved stays: dropping it
                    // would lose them.
                    let name = self.compared[i].name.clone();
                    if self.kept.iter().any(|d| d.name == name && d.labels_unsaved) {
                        let why = format!(
                            "{name} has labels not saved: open it (a link among its closest \
                             features) and Save labels first; still comparing with it"
                        );
                        self.message(Level::Error, why);
                    } else {
                        let gone = self.compared.remove(i);
                        self.kept.retain(|d| d.name != gone.name);
                        self.message(
                            Level::Info,
                            format!("no longer comparing with {}", gone.name),
                        );
                    }
                }
            }
            View::Features => {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    self.ui.features.can_build =
                        self.native.run_dir.is_some() && !self.builder_running();
                }
                self.features_view(ui)
            }
        }
    }

    /// The Features view on the open dashboard (or how to open one), and what it asks for.
    fn features_view(&mut self, ui: &mut egui::Ui) {
        match &mut self.dashboard {
            Some(d) => {
                #[cfg(not(target_arch = "wasm32"))]
                let ask = features::ExamplesAsk::Ask(
                    self.native.examples.as_ref(),
                    self.native.split.as_ref(),
                );
                #[cfg(target_arch = "wasm32")]
                let ask = match self.web.live_ready && !self.web.live_other {
                    true => features::ExamplesAsk::Ask(
                        self.web.examples.as_ref(),
                        self.web.split.as_ref(),
                    ),
                    false => features::ExamplesAsk::Unavailable,
                };
                let action =
                    features::features_ui(ui, d, &mut self.ui.features, ask, &self.compared);
                match action {
                    Some(features::FeaturesAction::ExamplesEffect {
                        head,
                        feature,
                        examples,
                    }) => {
                        #[cfg(not(target_arch = "wasm32"))]
                        self.ask_about_examples((head, feature), examples, false);
                        #[cfg(target_arch = "wasm32")]
                        self.web.ask_examples(head, feature, examples);
                    }
                    Some(features::FeaturesAction::UseInText {
                        head,
                        feature,
                        example,
                    }) => self.use_in_text(head, feature, example),
                    Some(features::FeaturesAction::Label {
                        head,
                        feature,
                        label,
                    }) => self.label_feature(head, feature, &label),
                    Some(features::FeaturesAction::OpenCompared {
                        name,
                        head,
                        feature,
                    }) => self.open_compared(&name, head, feature),
                    Some(features::FeaturesAction::BuildWithUpstream) => {
                        #[cfg(not(target_arch = "wasm32"))]
                        self.push(Command::BuildDashboards(true));
                    }
                    Some(features::FeaturesAction::ExamplesSplit {
                        head,
                        feature,
                        examples,
                    }) => {
                        #[cfg(not(target_arch = "wasm32"))]
                        self.ask_about_examples((head, feature), examples, true);
                        #[cfg(target_arch = "wasm32")]
                        self.web.ask_split(head, feature, examples);
                    }
                    None => {}
                }
            }
            None => self.no_dashboard_ui(ui),
        }
    }

    /// Labels a feature of the open dashboard and saves the labels where they were read
    /// from (the desktop), or keeps them for the page's Save labels.
    pub fn label_feature(&mut self, head: usize, feature: usize, label: &str) {
        use features::LabelsEdit;
        let Some(d) = &mut self.dashboard else {
            return self.message(Level::Error, "no dashboard is open to label");
        };
        let failed = |e: &dyn std::fmt::Display| {
            (
                Level::Error,
                format!("head {head} feature {feature}: label not saved: {e}"),
            )
        };
        let (level, text) = match d.set_label(head, feature, label) {
            Err(e) => failed(&e),
            Ok(false) => return,
            Ok(true) => {
                let said = match d.labels.get(head, feature) {
                    Some(label) => format!("head {head} feature {feature}: {label:?}"),
                    None => format!("head {head} feature {feature}: label removed"),
                };
                match &d.labels_edit {
                    LabelsEdit::File(path) => match d.labels.write(path) {
                        Ok(()) => (Level::Info, format!("{said} (saved in {})", path.display())),
                        Err(e) => failed(&e),
                    },
                    LabelsEdit::Download => {
                        (Level::Info, format!("{said} (Save labels downloads them)"))
                    }
                    LabelsEdit::Shown => return,
                }
            }
        };
        self.message(level, text);
    }

    /// The Features view's "Use it in Your text": Your text with the feature picked, on the
    /// text analysed there, else on `example` (or the text typed) once analysed.
    fn use_in_text(&mut self, head: usize, feature: usize, example: String) {
        self.ui.view = View::Text;
        let text = &mut self.ui.text;
        #[cfg(not(target_arch = "wasm32"))]
        let analysed = self.native.analysis.as_deref().map(|a| &a.tokens);
        #[cfg(target_arch = "wasm32")]
        let analysed = self.web.analysis.as_deref().map(|a| a.tokens());
        if let Some(a) = analysed {
            text.use_feature(a, head, feature);
            return;
        }
        if text.prompt.trim().is_empty() {
            text.prompt = example;
        }
        text.pending_pick = Some((head, feature));
        let prompt = text.prompt.clone();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(source) = self.live_source() {
            self.native.text_pending = true;
            let _ = (self.live_worker(source).requests).send(jobs::LiveRequest::Analyse(prompt));
        }
        #[cfg(target_arch = "wasm32")]
        {
            self.web.requested = Some(prompt);
        }
    }

    /// "Open its dashboard" from Your text, and [`Command::OpenFeature`].
    fn open_feature(&mut self, head: usize, feature: usize) {
        if let Some(d) = &self.dashboard {
            let (heads, m) = (d.file.n_heads(), d.file.meta.sae.features_per_head);
            if head >= heads || feature >= m {
                let why = format!(
                    "no head {head} feature {feature}: the dashboard has {heads} heads x {m} features"
                );
                self.message(Level::Error, why);
                return;
            }
            let f = &mut self.ui.features;
            (f.head, f.feature, f.example, f.reveal) = (head, Some(feature), None, true);
            self.ui.view = View::Features;
        } else {
            #[cfg(not(target_arch = "wasm32"))]
            let why = "this run has no dashboards yet: Build dashboards now";
            #[cfg(target_arch = "wasm32")]
            let why = "no dashboard is open: open the one built with this SAE";
            self.message(Level::Error, why);
        }
    }

    /// Your text in the web page: the page's inference bundle analyses the text.
    #[cfg(target_arch = "wasm32")]
    fn web_text_ui(&mut self, ui: &mut egui::Ui) {
        if self.web.live_other {
            features::error_label(
                ui,
                "the model and SAE loaded are another dashboard's: the features here are that \
                 SAE's, not the open dashboard's (open that dashboard again, or load this \
                 one's with Model + SAE…)",
            );
        }
        let largest = self.largest_activation();
        let action = text_view::text_ui(
            ui,
            &mut self.ui.text,
            self.web.analysis.as_deref(),
            &self.web.status,
            text_view::Answers {
                effect: self.web.effect.as_ref(),
                ranking: self.web.ranking.as_ref(),
                steer: self.web.steer.as_ref(),
                upstream: self.web.upstream.as_ref(),
                largest,
                labels: self.dashboard.as_ref().map(|d| &d.labels),
                prompts: self.web.prompts.as_ref(),
                spread: self.web.spread.as_ref(),
            },
        );
        match action {
            Some(text_view::TextAction::Run) => {
                self.web.requested = Some(self.ui.text.prompt.clone());
            }
            Some(text_view::TextAction::Rank(answer)) => self.web.ask_ranking(answer),
            Some(text_view::TextAction::Steer(steering)) => self.web.ask_steer(steering),
            Some(text_view::TextAction::Upstream(ask)) => self.web.ask_upstream(ask),
            Some(text_view::TextAction::RankPrompts(lines)) => self.web.ask_prompts(lines),
            Some(text_view::TextAction::SpreadPrompts(lines, ask)) => {
                self.web.ask_spread(lines, ask)
            }
            Some(text_view::TextAction::ExactPrompts(features)) => self.web.ask_exact(features),
            Some(text_view::TextAction::OpenPromptFile) => pick_prompt_file_in_page(),
            Some(text_view::TextAction::Effect { head, feature }) => {
                self.web.ask_effect(head, feature)
            }
            Some(text_view::TextAction::OpenFeature { head, feature }) => {
                self.open_feature(head, feature)
            }
            None => {}
        }
    }

    fn no_dashboard_ui(&mut self, ui: &mut egui::Ui) {
        ui.label("No dashboard open.");
        ui.label(
            "Open a run directory or a dashboard file (drag and drop works too), or train a \
             run: its dashboards are built when it ends.",
        );
    }

    /// Dropped files: each opens as a run directory or a dashboard file.
    #[cfg(not(target_arch = "wasm32"))]
    fn dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for file in dropped {
            self.push(Command::OpenPath(file.path().to_path_buf()));
        }
    }
}

impl eframe::App for AttnSaesApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        #[cfg(not(target_arch = "wasm32"))]
        self.native_logic(ctx);
        #[cfg(target_arch = "wasm32")]
        let _ = ctx;
        for command in std::mem::take(&mut self.commands) {
            self.apply(command);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar(ui));
        egui::Panel::bottom("status")
            .resizable(false)
            .show(ui, |ui| {
                #[cfg(not(target_arch = "wasm32"))]
                self.jobs_ui(ui);
                self.messages_ui(ui);
            });
        #[cfg(not(target_arch = "wasm32"))]
        self.close_dialog(ui);
        egui::CentralPanel::default().show(ui, |ui| self.central(ui));
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, STORAGE_KEY, &self.ui);
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn on_exit(&mut self) {
        // A job still running here was detached ("keep training headless"): hand it over.
        // (Training first; a dashboard build beside it ends with the process.)
        let running = self.native.job.take().filter(Job::is_running);
        if let (Some(job), Some(slot)) = (
            running.or(self.native.builder.take()),
            &self.native.detached,
        ) && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(job);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Desktop: runs, jobs, files

#[cfg(not(target_arch = "wasm32"))]
impl AttnSaesApp {
    /// Opens a run directory (curves from `metrics.jsonl`, the form from its config, its
    /// dashboards if built) or a dashboard file; a `.jsonl` file goes to Your text's prompt
    /// set ([`Self::open_prompt_file`]).
    pub fn open_path(&mut self, path: &Path) {
        if path.extension().is_some_and(|e| e == "jsonl") {
            return self.open_prompt_file(path);
        }
        self.take_label_draft();
        let shown = path.display().to_string();
        if path.is_dir() {
            self.open_run(path);
            self.remember(shown);
            return;
        }
        match std::fs::read(path) {
            Ok(bytes) => {
                self.curves = Curves::default();
                self.native.run_dir = None;
                self.open_dashboard_file(path, bytes);
                if self.dashboard.is_some() {
                    self.remember(shown);
                }
            }
            Err(e) => self.message(Level::Error, format!("reading {shown}: {e}")),
        }
    }

    /// Puts a prompt set's file (`rank --prompts`' lines) in Your text's prompt set and shows
    /// Your text ([`AttnSaesApp::open_prompt_set`]).
    pub fn open_prompt_file(&mut self, path: &Path) {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let _ = self.open_prompt_set(&shown, text);
            }
            Err(e) => self.message(Level::Error, format!("reading {shown}: {e}")),
        }
    }

    /// [`Self::open_compared`] for a run read from `path`: the run that was open is compared
    /// from its own path.
    fn open_compared_path(&mut self, name: &str, path: &Path) -> bool {
        let before = self.native.dashboard_file.clone();
        let previous = self.native.run_dir.clone().or_else(|| before.clone());
        self.open_path(path);
        if self.dashboard.is_none() || self.native.dashboard_file == before {
            return false; // its dashboard did not open (the messages say why)
        }
        self.compared.retain(|c| c.name != name);
        if let Some(previous) = previous {
            self.compare_path(&previous);
        }
        true
    }

    /// Opens a dashboard file read from `path`, with the labels beside it (edited labels
    /// are saved there; labels that cannot be read are neither shown nor written over).
    fn open_dashboard_file(&mut self, path: &Path, bytes: Vec<u8>) {
        use crate::dashboard::labels::{Labels, labels_path};
        let mut d = match LoadedDashboard::new(short_name(path), bytes) {
            Ok(d) => d,
            Err(e) => {
                let text = format!("{}: {e}", short_name(path));
                return self.message(Level::Error, text);
            }
        };
        self.native.dashboard_file = Some(path.to_path_buf());
        let file = labels_path(path);
        let said = match Labels::read(&file, &d.file.meta) {
            Ok(labels) => {
                let n = labels.len();
                d.labels = labels;
                d.labels_edit = features::LabelsEdit::File(file.clone());
                (n > 0).then(|| (Level::Info, format!("{n} labels from {}", file.display())))
            }
            Err(e) => Some((
                Level::Error,
                format!("labels not shown, and not saved over: {e:#}"),
            )),
        };
        self.open_loaded(d);
        if let Some((level, text)) = said {
            self.message(level, text);
        }
    }

    fn open_run(&mut self, dir: &Path) {
        use crate::train::checkpoint;
        let metrics = dir.join("metrics.jsonl");
        let latest = checkpoint::resolve_resume(dir).ok();
        if !metrics.exists() && latest.is_none() {
            // An SAE's directory with the dashboards `dashboard --sae` wrote beside it.
            let file = crate::dashboard::run_dashboard_path(dir);
            if let Ok(bytes) = std::fs::read(&file) {
                self.curves = Curves::default();
                self.native.run_dir = None;
                return self.open_dashboard_file(&file, bytes);
            }
            self.message(
                Level::Error,
                format!(
                    "{} is not a run directory (no metrics.jsonl or checkpoints/), nor an \
                     SAE's directory with its dashboards (dashboard.safetensors)",
                    dir.display()
                ),
            );
            return;
        }
        self.native.run_dir = Some(dir.to_path_buf());
        self.curves = match crate::run_log::History::read(&metrics) {
            Ok((history, _)) => Curves::from_history(short_name(dir), history),
            Err(_) => Curves::default(),
        };
        if let Some(config) = latest.and_then(|c| checkpoint::read_config(&c).ok()) {
            self.ui.form = TrainForm::from_config(&config);
        }
        self.dashboard = None;
        let file = crate::dashboard::run_dashboard_path(dir);
        match std::fs::read(&file) {
            Ok(bytes) => self.open_dashboard_file(&file, bytes),
            Err(_) => {
                self.message(
                    Level::Info,
                    format!(
                        "opened run {} (no dashboards yet: Build dashboards now)",
                        dir.display()
                    ),
                );
                self.ui.view = View::Curves;
            }
        }
    }

    /// Jobs' events, the close request, drag and drop.
    fn native_logic(&mut self, ctx: &egui::Context) {
        self.drain_job();
        self.follow_open_run();
        self.drain_live(ctx);
        self.handle_close(ctx);
        if self.job_running() || self.builder_running() {
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        }
        self.dropped_files(ctx);
    }

    fn drain_live(&mut self, ctx: &egui::Context) {
        let Some((_, worker)) = &self.native.live else {
            return;
        };
        let events: Vec<jobs::LiveEvent> = worker.events.try_iter().collect();
        use crate::live::Answer::Computing;
        let effect_due = (self.native.effect.as_ref())
            .is_some_and(|e| matches!(e.state, Computing))
            || (self.native.ranking.as_ref()).is_some_and(|r| matches!(r.state, Computing))
            || (self.native.examples.as_ref()).is_some_and(|r| matches!(r.state, Computing))
            || (self.native.split.as_ref()).is_some_and(|r| matches!(r.state, Computing))
            || (self.native.upstream.as_ref()).is_some_and(|u| matches!(u.state, Computing))
            || (self.native.prompts.as_ref()).is_some_and(|u| matches!(u.state, Computing))
            || (self.native.spread.as_ref()).is_some_and(|u| matches!(u.state, Computing))
            || (self.native.prompts.as_ref())
                .is_some_and(|u| matches!(u.exact, Some((Computing, _))));
        if self.native.live_status.ends_with('…') || effect_due {
            ctx.request_repaint_after(std::time::Duration::from_millis(100));
        }
        for e in events {
            match e {
                jobs::LiveEvent::Ready(what) => {
                    self.native.live_loaded = what.clone();
                    self.native.live_status = if self.native.text_pending {
                        format!("loaded {what}; running…")
                    } else {
                        format!("loaded {what}")
                    }
                }
                jobs::LiveEvent::Analysis(a) => {
                    self.native.text_pending = false;
                    self.native.live_status = format!("{} tokens", a.len());
                    self.ui.text.arrived(&a);
                    self.native.analysis = Some(a);
                }
                jobs::LiveEvent::Failed(why) => {
                    self.native.text_pending = false;
                    self.native.live_status = "failed".into();
                    self.message(Level::Error, why);
                    self.native.live = None;
                }
                jobs::LiveEvent::Effect {
                    ids,
                    head,
                    feature,
                    result,
                } => {
                    if let Some(asked) = &mut self.native.effect {
                        asked.answer((&ids, head, feature), result);
                    }
                }
                jobs::LiveEvent::Steered {
                    ids,
                    head,
                    feature,
                    result,
                } => {
                    if let Some(asked) = &mut self.native.steer {
                        asked.answer((&ids, head, feature), result);
                    }
                }
                jobs::LiveEvent::Examples {
                    head,
                    feature,
                    result,
                } => {
                    if let Some(asked) = &mut self.native.examples {
                        asked.answer((head, feature), result);
                    }
                }
                jobs::LiveEvent::Split {
                    head,
                    feature,
                    result,
                } => {
                    if let Some(asked) = &mut self.native.split {
                        asked.answer((head, feature), result);
                    }
                }
                jobs::LiveEvent::Upstream { ids, ask, result } => {
                    if let Some(asked) = &mut self.native.upstream {
                        asked.answer((&ids, &ask), result);
                    }
                }
                jobs::LiveEvent::Ranking { ids, result } => {
                    if let Some(asked) = self.native.ranking.as_mut().filter(|r| r.ids == ids) {
                        asked.state = crate::live::Answer::of(result);
                    }
                }
                jobs::LiveEvent::PromptsProgress { done, of } => {
                    if let Some(asked) = &mut self.native.prompts {
                        asked.progress = (done, of);
                    }
                }
                jobs::LiveEvent::PromptsRanking { lines, result } => {
                    if let Some(asked) = self.native.prompts.as_mut().filter(|p| p.lines == lines) {
                        asked.state = crate::live::Answer::of(result);
                    }
                }
                jobs::LiveEvent::ExactProgress { done, of } => {
                    let asked = self.native.prompts.as_mut();
                    if let Some((_, progress)) = asked.and_then(|p| p.exact.as_mut()) {
                        *progress = (done, of);
                    }
                }
                jobs::LiveEvent::PromptsExact { lines, result } => {
                    if let Some(asked) = &mut self.native.prompts {
                        asked.exact_arrived(&lines, result);
                    }
                }
                jobs::LiveEvent::SpreadProgress { done, of } => {
                    if let Some(asked) = &mut self.native.spread {
                        asked.progress = (done, of);
                    }
                }
                jobs::LiveEvent::PromptsSpread { lines, ask, result } => {
                    let asked = self.native.spread.as_mut();
                    if let Some(asked) = asked.filter(|p| p.is_for(&lines, &ask)) {
                        asked.state = crate::live::Answer::of(result);
                    }
                }
            }
        }
    }

    /// Where the live worker gets its model and SAE: the open run's, else those the open
    /// dashboard records.
    fn live_source(&self) -> Option<jobs::LiveSource> {
        match (&self.native.run_dir, &self.dashboard) {
            (Some(run), _) => Some(jobs::LiveSource::Run(run.clone())),
            (None, Some(d)) => {
                let file = self.native.dashboard_file.as_deref();
                let file = file.unwrap_or(Path::new(crate::dashboard::DASHBOARD_FILE));
                Some(jobs::LiveSource::of_dashboard(&d.file.meta, file))
            }
            (None, None) => None,
        }
    }

    /// Your text follows the run or dashboard open: once another opens (a compared run's,
    /// from its closest features, or any other), all the worker of the one before answered
    /// goes (its features are not the open SAE's), and a text analysed there is analysed
    /// again by a worker for the open one (which takes the model over when it is the same).
    fn follow_open_run(&mut self) {
        let Some(source) = self.live_source() else {
            return;
        };
        if self.native.live.as_ref().is_none_or(|(r, _)| *r == source) {
            return;
        }
        let rerun = self.native.analysis.is_some() || self.native.text_pending;
        self.native.analysis = None;
        self.native.effect = None;
        self.native.ranking = None;
        self.native.steer = None;
        self.native.examples = None;
        self.native.split = None;
        self.native.upstream = None;
        self.native.prompts = None;
        self.native.spread = None;
        self.native.text_pending = false;
        self.native.live_status = String::new();
        if rerun {
            let text = self.ui.text.prompt.clone();
            self.native.text_pending = true;
            let _ = (self.live_worker(source).requests).send(jobs::LiveRequest::Analyse(text));
        } else {
            // Nothing analysed: the open run's worker starts when something is asked, and
            // takes the model over then; this one's answers are not drawn meanwhile.
            self.native.idle_live = self.native.live.take().map(|(_, worker)| worker);
        }
    }

    /// The live worker for `source`, started (loading its model and SAE, or taking the model
    /// over from the worker before when it is the same) unless it runs.
    fn live_worker(&mut self, source: jobs::LiveSource) -> &jobs::LiveWorker {
        if self.native.live.as_ref().is_none_or(|(r, _)| *r != source) {
            self.native.live_status = "loading the model and SAE…".into();
            self.native.analysis = None;
            let before = (self.native.live.take().map(|(_, worker)| worker))
                .or_else(|| self.native.idle_live.take());
            let worker = jobs::start_live_after(source.clone(), self.ui.form.device, before);
            self.native.live = Some((source, worker));
        }
        &self.native.live.as_ref().expect("just started").1
    }

    /// Asks the live worker about a feature's top examples, `(window, target)` each: what
    /// removing it does there, or (`split`) what wrote what it reads there.
    fn ask_about_examples(
        &mut self,
        (head, feature): (usize, usize),
        examples: Vec<(Vec<u32>, usize)>,
        split: bool,
    ) {
        let Some(source) = self.live_source() else {
            return;
        };
        let request = match split {
            false => jobs::LiveRequest::Examples {
                head,
                feature,
                examples,
            },
            true => jobs::LiveRequest::Split {
                head,
                feature,
                examples,
            },
        };
        let _ = self.live_worker(source).requests.send(request);
        match split {
            false => {
                self.native.examples = Some(crate::live::AskedOfExamples::computing(head, feature))
            }
            true => {
                self.native.split = Some(crate::live::AskedOfExamples::computing(head, feature))
            }
        }
    }

    /// The "Your text" view: the open run's model and SAE, else those the open dashboard
    /// records.
    fn live_ui(&mut self, ui: &mut egui::Ui) {
        let source = match self.live_source() {
            Some(source) => source,
            None => {
                ui.heading("Your text");
                ui.label(
                    "Open a run directory or a dashboard file (or train a run): its model and \
                     SAE analyse the text.",
                );
                return;
            }
        };
        let largest = self.largest_activation();
        let action = text_view::text_ui(
            ui,
            &mut self.ui.text,
            self.native
                .analysis
                .as_deref()
                .map(|a| a as &dyn crate::live::Analysed),
            &self.native.live_status,
            text_view::Answers {
                effect: self.native.effect.as_ref(),
                ranking: self.native.ranking.as_ref(),
                steer: self.native.steer.as_ref(),
                upstream: self.native.upstream.as_ref(),
                largest,
                labels: self.dashboard.as_ref().map(|d| &d.labels),
                prompts: self.native.prompts.as_ref(),
                spread: self.native.spread.as_ref(),
            },
        );
        match action {
            Some(text_view::TextAction::Run) => {
                if self.native.live.as_ref().is_some_and(|(r, _)| *r == source) {
                    self.native.live_status = "running…".into();
                }
                let text = self.ui.text.prompt.clone();
                self.native.text_pending = true;
                let _ = (self.live_worker(source).requests).send(jobs::LiveRequest::Analyse(text));
            }
            Some(text_view::TextAction::Rank(answer)) => {
                if let (Some((_, worker)), Some(a)) = (&self.native.live, &self.native.analysis) {
                    let ids = a.ids.clone();
                    let _ = worker.requests.send(jobs::LiveRequest::Rank {
                        ids: ids.clone(),
                        answer,
                    });
                    self.native.ranking = Some(crate::live::AskedRanking {
                        ids,
                        state: crate::live::Answer::Computing,
                    });
                }
            }
            Some(text_view::TextAction::Steer(steering)) => {
                if let (Some((_, worker)), Some(a)) = (&self.native.live, &self.native.analysis) {
                    let ids = a.ids.clone();
                    let (head, feature) = (steering.head, steering.feature);
                    let _ = worker.requests.send(jobs::LiveRequest::Steer {
                        ids: ids.clone(),
                        steering,
                    });
                    self.native.steer = Some(crate::live::Asked::computing(ids, head, feature));
                }
            }
            Some(text_view::TextAction::Upstream(ask)) => {
                if let (Some((_, worker)), Some(a)) = (&self.native.live, &self.native.analysis) {
                    let ids = a.ids.clone();
                    let _ = worker.requests.send(jobs::LiveRequest::Upstream {
                        ids: ids.clone(),
                        ask: ask.clone(),
                    });
                    let asked = crate::live::AskedUpstream::computing(ids, ask);
                    self.native.upstream = Some(asked);
                }
            }
            Some(text_view::TextAction::OpenPromptFile) => {
                let dialog = rfd::FileDialog::new().add_filter("JSON lines", &["jsonl", "json"]);
                if let Some(file) = dialog.pick_file() {
                    self.open_prompt_file(&file);
                }
            }
            Some(text_view::TextAction::RankPrompts(lines)) => {
                if let Some((_, worker)) = &self.native.live {
                    let _ = worker.requests.send(jobs::LiveRequest::RankPrompts {
                        lines: lines.clone(),
                    });
                    self.native.prompts = Some(crate::live::AskedPrompts::computing(lines));
                }
            }
            Some(text_view::TextAction::ExactPrompts(features)) => {
                let asked = self.native.prompts.as_mut();
                if let (Some((_, worker)), Some(asked)) = (&self.native.live, asked)
                    && let Some(ranking) = asked.ranking()
                {
                    let _ = worker.requests.send(jobs::LiveRequest::ExactPrompts {
                        lines: asked.lines.clone(),
                        ranking: Box::new(ranking.clone()),
                        features: features.clone(),
                    });
                    asked.ask_exact(features.len());
                }
            }
            Some(text_view::TextAction::SpreadPrompts(lines, ask)) => {
                if let Some((_, worker)) = &self.native.live {
                    let _ = worker.requests.send(jobs::LiveRequest::SpreadPrompts {
                        lines: lines.clone(),
                        ask,
                    });
                    self.native.spread = Some(crate::live::AskedSpread::computing(lines, ask));
                }
            }
            Some(text_view::TextAction::Effect { head, feature }) => {
                if let (Some((_, worker)), Some(a)) = (&self.native.live, &self.native.analysis) {
                    let ids = a.ids.clone();
                    let ranked = self.native.ranking.as_ref();
                    let _ = worker.requests.send(jobs::LiveRequest::Effect {
                        ids: ids.clone(),
                        head,
                        feature,
                        objective: ranked.and_then(|r| r.answer_for(&ids)),
                    });
                    self.native.effect = Some(crate::live::Asked::computing(ids, head, feature));
                }
            }
            Some(text_view::TextAction::OpenFeature { head, feature }) => {
                self.open_feature(head, feature)
            }
            None => {}
        }
    }

    /// The jobs' progress lines.
    fn jobs_ui(&self, ui: &mut egui::Ui) {
        if self.native.job.is_some() {
            train_view::progress_ui(ui, &self.native.status);
        }
        if self.native.builder.is_some() {
            train_view::progress_ui(ui, &self.native.builder_status);
        }
    }

    /// Compares with a run directory (its `metrics.jsonl`) or a dashboard file (the history
    /// it records), or says why it cannot.
    pub fn compare_path(&mut self, path: &Path) {
        // A dashboard file is read once, for its history and its SAE; a run directory's
        // history is its metrics.jsonl, and its SAE its dashboard's when it has one. The
        // labels beside that dashboard go with its SAE.
        let read = || -> anyhow::Result<_> {
            if path.is_dir() {
                let history = crate::run_log::read_history(path)?;
                let at = crate::dashboard::run_dashboard_path(path);
                let dashboard = std::fs::read(&at).ok();
                let file = dashboard.and_then(|bytes| {
                    crate::dashboard::format::OwnedDashboardFile::new(bytes).ok()
                });
                Ok((history, file.map(|f| (f, at))))
            } else {
                let file = crate::dashboard::format::OwnedDashboardFile::read(path)?;
                Ok((file.meta.history.clone(), Some((file, path.to_path_buf()))))
            }
        };
        match read() {
            Ok((history, file)) => {
                let sae = file.and_then(|(f, at)| {
                    let sae = curves::ComparedSae::of(&f).ok().flatten()?;
                    let file = crate::dashboard::labels::labels_path(&at);
                    match crate::dashboard::labels::Labels::read(&file, &f.meta) {
                        Ok(labels) => Some(curves::ComparedSae { labels, ..sae }),
                        Err(e) => {
                            let why = format!("{}'s labels not shown: {e:#}", short_name(path));
                            self.message(Level::Error, why);
                            Some(sae)
                        }
                    }
                });
                self.compare_run(Compared {
                    name: short_name(path),
                    history,
                    sae,
                    source: Some(curves::ComparedSource::Path(path.to_path_buf())),
                });
            }
            Err(e) => self.message(Level::Error, format!("{e:#}")),
        }
    }

    /// Above the curves: other runs to draw beside the open one.
    fn compare_buttons(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            if ui
                .button("Compare with run…")
                .on_hover_text("draw another run's curves beside these (its metrics.jsonl)")
                .clicked()
                && let Some(dir) = rfd::FileDialog::new().pick_folder()
            {
                self.push(Command::ComparePath(dir));
            }
            if ui
                .button("Compare with dashboard…")
                .on_hover_text("draw the training curves a dashboard file records beside these")
                .clicked()
                && let Some(file) = rfd::FileDialog::new()
                    .add_filter("dashboard", &["safetensors"])
                    .pick_file()
            {
                self.push(Command::ComparePath(file));
            }
        });
    }

    fn open_buttons(&mut self, ui: &mut egui::Ui) {
        if ui.button("Open run…").clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            self.push(Command::OpenPath(dir));
        }
        if ui.button("Open dashboard…").clicked()
            && let Some(file) = rfd::FileDialog::new()
                .add_filter("dashboard", &["safetensors"])
                .pick_file()
        {
            self.push(Command::OpenPath(file));
        }
        ui.menu_button("Recent", |ui| {
            if self.ui.recent.is_empty() {
                ui.label("nothing yet");
            }
            for r in self.ui.recent.clone() {
                if ui.button(&r).clicked() {
                    self.push(Command::OpenPath(PathBuf::from(r)));
                    ui.close();
                }
            }
        });
    }

    /// Whether the training job (or a harvest, in its place) runs.
    pub fn job_running(&self) -> bool {
        self.native.job.as_ref().is_some_and(Job::is_running)
    }

    /// Whether a dashboard build runs.
    pub fn builder_running(&self) -> bool {
        self.native.builder.as_ref().is_some_and(Job::is_running)
    }

    fn status_mut(&mut self, kind: JobKind) -> &mut JobStatus {
        match kind {
            JobKind::Training | JobKind::Harvest => &mut self.native.status,
            JobKind::Dashboards => &mut self.native.builder_status,
        }
    }

    /// Harvests an activation cache in the training job's place (both run the LM).
    fn start_harvest(&mut self, request: HarvestRequest) {
        if self.job_running() {
            self.message(Level::Error, "a job is already running");
            return;
        }
        self.native.status = JobStatus {
            phase: "starting the harvest".into(),
            running: true,
            harvest: true,
            ..JobStatus::default()
        };
        self.native.job = Some(jobs::start_harvest(request));
    }

    fn start_training(&mut self, request: TrainRequest) {
        if self.job_running() {
            self.message(Level::Error, "a job is already running");
            return;
        }
        // A resumed run's curves continue its history (the events replace what follows
        // the checkpoint).
        self.curves = request
            .args
            .resume
            .as_deref()
            .and_then(run_of_checkpoint)
            .and_then(|run| {
                let (history, _) =
                    crate::run_log::History::read(&run.join("metrics.jsonl")).ok()?;
                Some(Curves::from_history(short_name(&run), history))
            })
            .unwrap_or_default();
        self.dashboard = None;
        self.native.status = JobStatus {
            phase: "starting".into(),
            running: true,
            ..JobStatus::default()
        };
        self.native.job = Some(jobs::start_training(request));
        self.ui.view = View::Curves;
    }

    /// Builds the open run's dashboards: of its latest checkpoint while it trains, else of
    /// its final SAE (or latest checkpoint when it has none); with what wrote what each
    /// feature reads when `upstream` (`dashboard --upstream`).
    fn build_dashboards(&mut self, upstream: bool) {
        let Some(run) = self.native.run_dir.clone() else {
            self.message(Level::Error, "open a run directory first");
            return;
        };
        if self.builder_running() {
            self.message(Level::Error, "the dashboards are already being built");
            return;
        }
        let checkpoint = if self.job_running() {
            match crate::train::checkpoint::resolve_resume(&run) {
                Ok(c) => Some(c),
                Err(_) => {
                    self.message(Level::Error, "no checkpoint yet: build once one is written");
                    return;
                }
            }
        } else {
            None
        };
        self.native.builder_status = JobStatus {
            phase: "building dashboards".into(),
            running: true,
            ..JobStatus::default()
        };
        self.native.builder = Some(jobs::start_dashboards(
            run,
            checkpoint,
            self.ui.form.device,
            upstream,
        ));
    }

    /// Applies what the jobs reported since the last frame.
    fn drain_job(&mut self) {
        let jobs = [&self.native.job, &self.native.builder];
        let drained: Vec<(JobKind, Vec<JobEvent>)> = (jobs.into_iter().flatten())
            .map(|job| (job.kind, job.events.try_iter().collect()))
            .collect();
        for (kind, events) in drained {
            for e in events {
                self.on_job_event(kind, e);
            }
        }
    }

    fn on_train_event(&mut self, e: TrainEvent) {
        let s = &mut self.native.status;
        match e {
            TrainEvent::Started {
                config,
                device,
                start_step,
                ..
            } => {
                s.phase = if start_step > 0 {
                    format!("resumed at step {start_step}")
                } else {
                    "training".into()
                };
                s.device = device;
                s.total_steps = config.total_training_steps;
                s.batch_size = config.batch_size;
                s.step = start_step;
            }
            TrainEvent::Status(text) => s.phase = text,
            TrainEvent::Notice(text) => self.message(Level::Info, text),
            TrainEvent::Step(m) => {
                s.phase = "training".into();
                s.step = m.step;
                s.steps_per_s = m.steps_per_s;
                s.counted = None;
                self.curves.push_step(*m);
            }
            TrainEvent::Eval(e) => {
                s.phase = format!("evaluated at step {}", e.step);
                self.curves.push_eval(*e);
            }
            TrainEvent::Density { step, histogram } => {
                self.curves.density = Some((step, histogram));
            }
            TrainEvent::Checkpoint { step, path } => {
                s.phase = format!("checkpoint at step {step}");
                let text = format!("checkpoint: {}", path.display());
                self.message(Level::Info, text);
            }
            TrainEvent::Finished(summary) => {
                s.step = summary.steps;
                s.phase = if summary.stopped_early {
                    format!("stopped at step {} (checkpoint written)", summary.steps)
                } else {
                    format!("finished {} steps", summary.steps)
                };
                let text = format!("SAE saved to {}", summary.sae_dir.display());
                self.message(Level::Info, text);
                let text = format!("time: {}", summary.time.describe(summary.seconds));
                self.message(Level::Info, text);
            }
            // The job reports the same error as it ends (JobEvent::Failed).
            TrainEvent::Failed(_) => s.phase = "failed".into(),
        }
    }

    fn on_job_event(&mut self, kind: JobKind, e: JobEvent) {
        let s = self.status_mut(kind);
        match e {
            JobEvent::Train(e) => self.on_train_event(e),
            JobEvent::Progress { phase, done, total } => s.count(phase, done, total),
            JobEvent::Phase(text) => {
                s.phase = text;
                s.counted = None;
            }
            JobEvent::RunDir(dir) => {
                self.native.run_dir = Some(dir.clone());
                self.remember(dir.display().to_string());
            }
            JobEvent::DashboardWritten(path) => {
                s.counted = None;
                s.phase = "dashboards built".into();
                match std::fs::read(&path) {
                    Ok(bytes) => self.open_dashboard_file(&path, bytes),
                    Err(e) => self.message(Level::Error, format!("{}: {e}", path.display())),
                }
            }
            JobEvent::Harvested(text) => {
                s.phase = "activation cache written".into();
                s.counted = None;
                self.message(Level::Info, text);
            }
            // A harvest stopped as asked ends with its error (what it left): not a failure.
            JobEvent::Failed(text) if kind == JobKind::Harvest && s.stopping => {
                s.phase = "harvest stopped".into();
                s.counted = None;
                self.message(Level::Info, text);
            }
            JobEvent::Failed(text) => {
                s.phase = "failed".into();
                s.counted = None;
                self.message(Level::Error, text);
            }
            JobEvent::Finished => {
                s.running = false;
                s.stopping = false;
                if kind != JobKind::Dashboards && self.native.close_when_stopped {
                    self.native.closing = true;
                }
            }
        }
    }

    fn train_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Train a block-diagonal SAE");
        ui.label(
            "The defaults train the offline demo (SmolLM2-135M on Shakespeare). Curves update \
             live in the Curves view; the dashboards open in Features when training ends.",
        );
        ui.add_space(6.0);
        let running = self.job_running();
        let action = egui::ScrollArea::vertical()
            .show(ui, |ui| {
                let action =
                    train_view::form_ui(ui, &mut self.ui.form, &self.native.form_errors, running);
                let hover = match self.native.job.as_ref().map(|j| j.kind) {
                    Some(JobKind::Training) => "stop after this step, with a checkpoint",
                    Some(JobKind::Harvest) => {
                        "stop after this forward (Harvest again goes on from the last shard)"
                    }
                    _ => "",
                };
                if running && ui.button("Stop").on_hover_text(hover).clicked() {
                    self.push(Command::StopTraining);
                }
                action
            })
            .inner;
        match action {
            Some(FormAction::Start) => self.submit_form(None),
            Some(FormAction::Harvest) => self.submit_harvest(),
            Some(FormAction::Resume) => {
                if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                    self.submit_form(Some(dir));
                }
            }
            None => {}
        }
    }

    /// Starts a run from the form, or resumes `resume` (a run or checkpoint directory) with
    /// the form's step count and device; errors stay next to the form.
    pub fn submit_form(&mut self, resume: Option<PathBuf>) {
        let form = &self.ui.form;
        let checked = match resume {
            None => form.check(),
            Some(dir) => form.to_args().map(|a| crate::cli_train::TrainArgs {
                resume: Some(dir),
                total_training_steps: a.total_training_steps,
                ..Default::default()
            }),
        };
        match checked {
            Ok(args) => {
                self.native.form_errors.clear();
                let request = TrainRequest {
                    args,
                    device: form.device,
                    dashboards: (form.build_dashboards).then(Default::default),
                };
                self.push(Command::StartTraining(Box::new(request)));
            }
            Err(errors) => self.native.form_errors = errors,
        }
    }

    /// Harvests the activation cache the form names, for its model, corpus, layer and
    /// context, as many tokens as its run takes (steps x batch size); errors stay next to
    /// the form.
    pub fn submit_harvest(&mut self) {
        let form = &self.ui.form;
        match form.harvest_request() {
            Ok(request) => {
                self.native.form_errors.clear();
                self.push(Command::StartHarvest(Box::new(request)));
            }
            Err(errors) => self.native.form_errors = errors,
        }
    }

    /// Closing while a job runs asks first: stop with a checkpoint, or keep training
    /// headless in the terminal.
    fn handle_close(&mut self, ctx: &egui::Context) {
        if self.native.closing {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            return;
        }
        if ctx.input(|i| i.viewport().close_requested())
            && (self.job_running() || self.builder_running())
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.native.close_dialog = true;
        }
    }

    fn close_dialog(&mut self, ui: &mut egui::Ui) {
        if !self.native.close_dialog {
            return;
        }
        let stop = match self.native.job.as_ref().map(|j| j.kind) {
            Some(JobKind::Training) => Some("Stop with a checkpoint, then quit"),
            Some(JobKind::Harvest) => Some("Stop the harvest, then quit"),
            _ => None,
        };
        egui::Modal::new(egui::Id::unique("close_dialog")).show(ui.ctx(), |ui| {
            ui.heading("A job is still running");
            ui.label("Quit after stopping it, or keep it running in the terminal?");
            ui.horizontal(|ui| {
                if stop.is_some_and(|label| ui.button(label).clicked()) {
                    self.native.close_dialog = false;
                    self.native.close_when_stopped = true;
                    self.push(Command::StopTraining);
                }
                if ui.button("Keep running headless").clicked() {
                    self.native.close_dialog = false;
                    self.native.closing = true;
                }
                if ui.button("Cancel").clicked() {
                    self.native.close_dialog = false;
                }
            });
        });
    }
}

/// The run directory of a run or checkpoint directory.
#[cfg(not(target_arch = "wasm32"))]
fn run_of_checkpoint(dir: &Path) -> Option<PathBuf> {
    if dir.join("metrics.jsonl").exists() {
        return Some(dir.to_path_buf());
    }
    let run = dir.parent()?.parent()?;
    run.join("metrics.jsonl")
        .exists()
        .then(|| run.to_path_buf())
}

/// Opens the desktop app (eframe on its own wgpu device; burn picks its own) on `open` (a
/// run directory or dashboard file) and `view`, or starting `train`. A job still running when the
/// window closes ("keep running headless") continues in the terminal until it ends.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_native(
    open: Option<PathBuf>,
    compare: Vec<PathBuf>,
    view: Option<View>,
    feature: Option<(usize, usize)>,
    train: Option<TrainRequest>,
) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    // Over ssh, or on a server: say what works without a window instead of winit's error.
    if cfg!(all(unix, not(target_os = "macos")))
        && ["DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"]
            .iter()
            .all(|v| std::env::var_os(v).is_none_or(|v| v.is_empty()))
    {
        anyhow::bail!(
            "no display to open the window on (DISPLAY and WAYLAND_DISPLAY are not set, as over \
             ssh): {}",
            if train.is_some() {
                "`attn-saes train --headless` with the same flags trains in the terminal"
            } else {
                "`attn-saes serve RUN` shows a run's dashboards in a browser (through an ssh \
                 tunnel: ssh -L 8765:localhost:8765), and `attn-saes features`, `text` and \
                 `compare` show them in the terminal"
            }
        );
    }
    let detached: Arc<Mutex<Option<Job>>> = Arc::default();
    let slot = detached.clone();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("attn-saes")
            .with_inner_size([1400.0, 900.0])
            .with_drag_and_drop(true),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "attn-saes",
        options,
        Box::new(move |cc| {
            let mut app = AttnSaesApp::new(cc);
            app.native.detached = Some(slot);
            if let Some(path) = open {
                app.push(Command::OpenPath(path));
            }
            for path in compare {
                app.push(Command::ComparePath(path));
            }
            if let Some(request) = train {
                app.push(Command::StartTraining(Box::new(request)));
            }
            if let Some(view) = view {
                app.push(Command::SetView(view));
            }
            if let Some((head, feature)) = feature {
                app.push(Command::OpenFeature { head, feature });
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("the window could not open: {e}"))?;
    match detached.lock().ok().and_then(|mut j| j.take()) {
        Some(job) => continue_in_terminal(job),
        None => Ok(()),
    }
}

/// A job handed over when the window closed ("keep running headless"), run to its end in
/// the terminal: progress as `train --headless` shows it, Ctrl-C stopping after the step with
/// a checkpoint. As `train --headless` ends: stopped by Ctrl-C, the process exits with 130
/// (after saying how to continue); a failed job is this function's error.
#[cfg(not(target_arch = "wasm32"))]
pub fn continue_in_terminal(job: Job) -> anyhow::Result<()> {
    eprintln!(
        "{}",
        match job.kind {
            JobKind::Harvest =>
                "the window closed; the harvest continues here (Ctrl-C stops it; `attn-saes \
                 harvest` or the app's Harvest with the same settings goes on from its last \
                 shard)",
            _ =>
                "the window closed; the job continues here (Ctrl-C stops it after the step, \
                  with a checkpoint)",
        }
    );
    crate::cli_train::stop_on_ctrl_c(&crate::train::RunControl {
        stop: job.stop.clone(),
        in_steps: job.in_steps.clone(),
        ..Default::default()
    });
    let (train_tx, train_rx) = std::sync::mpsc::channel();
    let renderer = std::thread::spawn(move || crate::cli_train::render_headless(train_rx));
    let (mut failed, mut bar) = (None, None);
    for e in job.events.iter() {
        match e {
            JobEvent::Train(e) => {
                let _ = train_tx.send(e);
            }
            // Dashboards after training, or a dashboard build handed over.
            JobEvent::Progress { phase, done, total } => bar
                .get_or_insert_with(crate::cli_train::ProgressLine::new)
                .update(&phase, done, total),
            JobEvent::Phase(phase) => eprintln!("{phase}"),
            JobEvent::Harvested(text) => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                println!("{text}");
            }
            JobEvent::DashboardWritten(path) => {
                if let Some(b) = bar.take() {
                    b.finish();
                }
                println!("dashboards: {}", path.display());
            }
            JobEvent::Failed(text) => failed = Some(text),
            JobEvent::Finished => break,
            JobEvent::RunDir(_) => {}
        }
    }
    if let Some(b) = bar.take() {
        b.finish();
    }
    drop(train_tx);
    let _ = renderer.join();
    if let Some(text) = failed {
        anyhow::bail!("{text}");
    }
    if job.stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::process::exit(crate::cli_train::EXIT_INTERRUPTED);
    }
    job.join();
    Ok(())
}
