//! The web viewer's entry (wasm32 only): the app's Curves, Features and Your text views on
//! a canvas, and the functions `web/index.html` calls to hand it dashboard files (file
//! input, drag and drop, `?url=`) and to read what is selected.
//!
//! Your text runs in the page's inference bundle (`src/web_live.rs`, loaded by
//! `web/live.js` only when someone loads a model): this module reaches it through
//! `window.attnSaesLive` (`analyze(text)`, `attribution(h, f, p)` and `effect(h, f)` →
//! promises of JSON, `status()` → a line), so the viewer itself holds no burn. The bundle runs in a Web
//! Worker (`web/live-worker.js`), so the page stays responsive while it works.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use eframe::egui;
use wasm_bindgen::prelude::*;

use crate::app::features::LoadedDashboard;
use crate::app::text_view::RANKED_SHOWN;
use crate::app::{AttnSaesApp, View};
use crate::dashboard::format::FeatureUpstream;
use crate::live::{
    Analysed, Answer, AnswerAsk, AskedEffect, AskedOfExamples, AskedRanking, AskedSteer,
    AskedUpstream, Attribution, AttributionState, ExamplesEffect, FeatureEffect, FeatureRanking,
    LiveTokens, Objective, PromptLine, PromptsRanking, PromptsSpread, SpreadAsk, Steered, Steering,
    Through, Upstream, UpstreamAsk, UpstreamKey,
};

/// What the page and the app share: dashboards parsed by [`open_dashboard`] and waiting
/// for the next frame, the app's context (to wake it), the selection in words, the last
/// live analysis to arrive, and what Your text shows (for [`live_shown`]).
#[derive(Default)]
struct Shared {
    inbox: Vec<LoadedDashboard>,
    /// Set by [`open_labels`]: a labels file's JSON, for the open dashboard.
    labels_inbox: Option<String>,
    /// Set by [`label_feature`]: a label to give a feature.
    label_request: Option<(usize, usize, String)>,
    /// Set by [`labels_saved`].
    labels_saved: bool,
    /// The open dashboard's labels as a labels file ([`labels_json`]), whether they changed
    /// since they were saved, and which dashboard and version of them that is.
    labels_json: String,
    labels_unsaved: bool,
    labels_key: Option<(String, u64, u64)>,
    /// Dashboards parsed by [`compare_dashboard`], to compare (their training histories
    /// and SAEs) and to open from their closest features.
    compare_inbox: Vec<LoadedDashboard>,
    /// What Curves compares, for [`curves_shown`]: the open run's name and the others'.
    curves_shown: String,
    ctx: Option<egui::Context>,
    selection: String,
    live_arrived: Option<Result<LiveTokens, String>>,
    live_running: bool,
    /// Set by [`live_set`]: a prompt (and whether to run it), a pick.
    live_prompt: Option<(String, bool)>,
    live_pick: Option<(usize, usize, usize)>,
    /// Set by [`live_effect`]: a feature whose effect to ask for.
    live_effect: Option<(usize, usize)>,
    /// The bundle's answer to an effect request, with the request.
    effect_arrived: Option<(EffectKey, Result<FeatureEffect, String>)>,
    /// Set by [`live_rank`]: rank the features of the analysed text (by an answer, if one).
    live_rank: Option<Option<AnswerAsk>>,
    /// Set by [`live_steer`]: what to steer with.
    live_steer: Option<Steering>,
    /// The bundle's answer to a steering request, with the request's tokens and feature.
    steer_arrived: Option<(EffectKey, Result<Steered, String>)>,
    /// A feature's effect on its top examples ([`live_examples_effect`], [`examples_shown`]).
    examples: OnExamples<ExamplesEffect>,
    /// What wrote what a feature reads over its top examples ([`live_examples_split`],
    /// [`examples_split_shown`]).
    split: OnExamples<FeatureUpstream>,
    /// Set by [`live_upstream`]: a split to ask for.
    live_upstream: Option<UpstreamAsk>,
    /// The bundle's answer to an upstream request, with the request.
    upstream_arrived: Option<(UpstreamKey, Result<Upstream, String>)>,
    /// The bundle's answer to a ranking request, with the tokens it was for.
    ranking_arrived: Option<(Vec<u32>, Result<FeatureRanking, String>)>,
    /// Set by [`live_rank_prompts`]: a prompt set's lines, as given, and as read.
    live_rank_prompts: Option<(String, Vec<PromptLine>)>,
    /// The bundle's answer to a prompt-set ranking request, with the lines it was for.
    prompts_arrived: Option<(Vec<PromptLine>, Result<PromptsRanking, String>)>,
    /// Set by [`live_spread_prompts`]: a prompt set's lines, as given and as read, and the
    /// spread asked.
    live_spread: Option<(String, Vec<PromptLine>, SpreadAsk)>,
    /// The bundle's answer to a spread request, with what it was for.
    spread_arrived: Option<(SpreadKey, Result<PromptsSpread, String>)>,
    /// Set by [`live_exact_prompts`]: ask for the listed features' exact changes.
    live_exact: bool,
    /// The bundle's answer to an exact request, with the lines it was for.
    exact_arrived: Option<(Vec<PromptLine>, ExactResult)>,
    /// Set by [`open_prompt_set`]: a prompt set's file, its name and text.
    open_prompt_set: Option<(String, String)>,
    /// Set by [`live_progress`]: how far the bundle's prompt-set requests have got, by op.
    progress: Vec<(String, (usize, usize))>,
    live_view: Option<LiveView>,
    /// JSON of the last dashboard's `built_from` ("" when it records none).
    built_from: String,
    /// Set by [`select_feature`]: a feature to show.
    select: Option<(usize, usize)>,
    /// Set by [`open_compared`]: a compared run to open at a feature.
    open_compared: Option<(String, usize, usize)>,
    /// The model and SAE loaded were checked against another dashboard than the open one,
    /// for [`live_matches_dashboard`].
    live_other: bool,
    /// The app's message lines, for [`messages`].
    messages: String,
}

/// The exact changes over a prompt set: `(head, feature, mean exact change)`.
type ExactResult = Result<crate::live::ExactChanges, String>;

/// A spread request: the prompt set's lines and what is asked.
type SpreadKey = (Vec<PromptLine>, SpreadAsk);

/// An effect request: the tokens, the head and the feature.
type EffectKey = (Vec<u32>, usize, usize);

/// What Your text shows: the analysis, the prompt, the status, the picked
/// `(position, head, feature)` and the effect asked for.
struct LiveView {
    analysis: Rc<dyn Analysed>,
    prompt: String,
    status: String,
    pick: Option<(usize, usize, usize)>,
    effect: Option<AskedEffect>,
    ranking: Option<AskedRanking>,
    /// What the ranking's controls ask (`None`: the loss).
    rank_by: Option<AnswerAsk>,
    steer: Option<AskedSteer>,
    upstream: Option<AskedUpstream>,
    prompts: Option<crate::live::AskedPrompts>,
    spread: Option<crate::live::AskedSpread>,
    /// The prompt set's box.
    prompt_set: String,
}

/// `window.attnSaesLive`, the page's bridge to its inference bundle, if the page has one.
fn bridge() -> Option<JsValue> {
    let window = web_sys::window()?;
    js_sys::Reflect::get(&window, &JsValue::from_str("attnSaesLive"))
        .ok()
        .filter(|v| v.is_object())
}

/// Calls `window.attnSaesLive[method](...args)`.
fn call_bridge(method: &str, args: &[JsValue]) -> Result<JsValue, String> {
    let bridge = bridge().ok_or("this page has no inference bundle (web/live.js)")?;
    let f: js_sys::Function = js_sys::Reflect::get(&bridge, &JsValue::from_str(method))
        .map_err(|e| format!("{e:?}"))?
        .dyn_into()
        .map_err(|_| format!("attnSaesLive.{method} is not a function"))?;
    f.apply(&bridge, &args.iter().collect::<js_sys::Array>())
        .map_err(|e| e.as_string().unwrap_or_else(|| format!("{e:?}")))
}

/// An analysis done by the inference bundle: its tokens, and attributions asked for as
/// the view needs them. The bundle runs in a Web Worker, so an attribution arrives later:
/// it is `Computing` until then, and kept, since the view draws every frame.
struct RemoteAnalysis {
    tokens: LiveTokens,
    attributions: Rc<RefCell<Attributions>>,
}

/// Attributions by `(head, feature, position)`.
type Attributions = HashMap<(usize, usize, usize), AttributionState>;

impl Analysed for RemoteAnalysis {
    fn tokens(&self) -> &LiveTokens {
        &self.tokens
    }

    fn attribution_state(&self, head: usize, feature: usize, position: usize) -> AttributionState {
        let key = (head, feature, position);
        if let Some(a) = self.attributions.borrow().get(&key) {
            return a.clone();
        }
        self.attributions
            .borrow_mut()
            .insert(key, AttributionState::Computing);
        let args = [head, feature, position].map(|x| JsValue::from_f64(x as f64));
        let asked = call_bridge("attribution", &args);
        let attributions = self.attributions.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let state = match awaited_string(asked).await {
                Ok(json) => match serde_json::from_str::<Attribution>(&json) {
                    Ok(a) => AttributionState::Ready(a),
                    Err(e) => AttributionState::Failed(format!("the bundle's answer: {e}")),
                },
                Err(why) => AttributionState::Failed(why),
            };
            attributions.borrow_mut().insert(key, state);
            wake();
        });
        AttributionState::Computing
    }
}

/// The string a bridge call's promise resolves to, or why there is none.
async fn awaited_string(called: Result<JsValue, String>) -> Result<String, String> {
    let promise = js_sys::Promise::from(called?);
    match wasm_bindgen_futures::JsFuture::from(promise).await {
        Ok(v) => v.as_string().ok_or_else(|| format!("not a string: {v:?}")),
        Err(e) => Err(e.as_string().unwrap_or_else(|| format!("{e:?}"))),
    }
}

/// Asks the inference bundle what removing `feature` of `head` changes in its last text
/// (`ids`); the answer arrives in `shared.effect_arrived`.
/// With an answer `objective`, its value with and without the feature too.
fn request_effect((ids, head, feature, objective): (Vec<u32>, usize, usize, Option<Objective>)) {
    wasm_bindgen_futures::spawn_local(async move {
        let objective = match objective {
            Some(o) => JsValue::from_str(&serde_json::to_string(&o).unwrap_or_default()),
            None => JsValue::UNDEFINED,
        };
        let args = [
            JsValue::from_f64(head as f64),
            JsValue::from_f64(feature as f64),
            objective,
        ];
        let result = awaited_string(call_bridge("effect", &args))
            .await
            .and_then(|json| {
                serde_json::from_str::<FeatureEffect>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.effect_arrived = Some(((ids, head, feature), result)));
    });
}

/// Asks the inference bundle for the split `ask` asks for of its last text (`ids`); the
/// answer arrives in `shared.upstream_arrived`.
fn request_upstream((ids, ask): UpstreamKey) {
    wasm_bindgen_futures::spawn_local(async move {
        let json = serde_json::to_string(&ask).unwrap_or_default();
        let result = awaited_string(call_bridge("upstream", &[JsValue::from_str(&json)]))
            .await
            .and_then(|json| {
                serde_json::from_str::<Upstream>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.upstream_arrived = Some(((ids, ask), result)));
    });
}

/// Asks the inference bundle to continue its last text (`ids`) clean and steered; the
/// answer arrives in `shared.steer_arrived`.
fn request_steer((ids, steering): (Vec<u32>, Steering)) {
    wasm_bindgen_futures::spawn_local(async move {
        let (head, feature) = (steering.head, steering.feature);
        let json = serde_json::to_string(&steering).unwrap_or_default();
        let result = awaited_string(call_bridge("steer", &[JsValue::from_str(&json)]))
            .await
            .and_then(|json| {
                serde_json::from_str::<Steered>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.steer_arrived = Some(((ids, head, feature), result)));
    });
}

/// Asks the inference bundle to rank the features of its last text (`ids`), by the loss or
/// an answer; the answer arrives in `shared.ranking_arrived`.
fn request_ranking((ids, answer): (Vec<u32>, Option<AnswerAsk>)) {
    wasm_bindgen_futures::spawn_local(async move {
        let answer = match answer {
            Some(a) => JsValue::from_str(&serde_json::to_string(&a).unwrap_or_default()),
            None => JsValue::UNDEFINED,
        };
        let result = awaited_string(call_bridge("rank", &[answer]))
            .await
            .and_then(|json| {
                serde_json::from_str::<FeatureRanking>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.ranking_arrived = Some((ids, result)));
    });
}

/// Asks the inference bundle to rank the features over a prompt set's `lines`; the answer
/// arrives in `shared.prompts_arrived`.
fn request_prompts(lines: Vec<PromptLine>) {
    wasm_bindgen_futures::spawn_local(async move {
        let json = JsValue::from_str(&serde_json::to_string(&lines).unwrap_or_default());
        let result = awaited_string(call_bridge("rankPrompts", &[json]))
            .await
            .and_then(|json| {
                serde_json::from_str::<PromptsRanking>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.prompts_arrived = Some((lines, result)));
    });
}

/// Asks the inference bundle to take a feature's DFA apart upstream over a prompt set's
/// `lines` as `ask` asks; the answer arrives in `shared.spread_arrived`.
fn request_spread((lines, ask): SpreadKey) {
    wasm_bindgen_futures::spawn_local(async move {
        let json = |x: String| JsValue::from_str(&x);
        let args = [
            json(serde_json::to_string(&lines).unwrap_or_default()),
            json(serde_json::to_string(&ask).unwrap_or_default()),
        ];
        let result = awaited_string(call_bridge("spreadPrompts", &args))
            .await
            .and_then(|json| {
                serde_json::from_str::<PromptsSpread>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.spread_arrived = Some(((lines, ask), result)));
    });
}

/// Asks the inference bundle for the exact changes of `features` over the prompt set
/// `lines` it ranked last; the answer arrives in `shared.exact_arrived`.
fn request_exact((lines, features): crate::app::ExactRequest) {
    wasm_bindgen_futures::spawn_local(async move {
        let json = |x: String| JsValue::from_str(&x);
        let args = [
            json(serde_json::to_string(&lines).unwrap_or_default()),
            json(serde_json::to_string(&features).unwrap_or_default()),
        ];
        let result = awaited_string(call_bridge("exactPrompts", &args))
            .await
            .and_then(|json| {
                serde_json::from_str::<crate::live::ExactChanges>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| s.exact_arrived = Some((lines, result)));
    });
}

/// One kind of question about a feature's top examples that the page asks the inference
/// bundle (their effect, their split): the feature a JavaScript call asked about, the
/// bundle's answer with its feature, and what Features shows of it.
struct OnExamples<T> {
    asked: Option<(usize, usize)>,
    arrived: Option<((usize, usize), Result<T, String>)>,
    view: Option<AskedOfExamples<T>>,
}

impl<T> Default for OnExamples<T> {
    fn default() -> Self {
        Self {
            asked: None,
            arrived: None,
            view: None,
        }
    }
}

/// Asks the inference bundle's `op` (`examplesEffect`, `examplesSplit`) about `feature` of
/// `head` on `examples`; the answer arrives in the `OnExamples` that `of` picks.
fn request_on_examples<T: serde::de::DeserializeOwned + 'static>(
    op: &'static str,
    (head, feature, examples): crate::app::ExamplesRequest,
    of: fn(&mut Shared) -> &mut OnExamples<T>,
) {
    wasm_bindgen_futures::spawn_local(async move {
        let json = serde_json::to_string(&examples).unwrap_or_default();
        let args = [
            JsValue::from_f64(head as f64),
            JsValue::from_f64(feature as f64),
            JsValue::from_str(&json),
        ];
        let result = awaited_string(call_bridge(op, &args))
            .await
            .and_then(|json| {
                serde_json::from_str::<T>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(move |s| of(s).arrived = Some(((head, feature), result)));
    });
}

/// One question about a feature's top examples ([`OnExamples`], picked by `of`), a frame of
/// it: what a JavaScript call asked (the feature's top examples from the open dashboard)
/// and what the Features view asked (`shown` and `request`, the app's) go to the bundle's
/// `op`, its answer to what is shown.
fn examples_question<T: Clone + serde::de::DeserializeOwned + 'static>(
    shared: &RefCell<Shared>,
    dashboard: Option<&LoadedDashboard>,
    (shown, request): (
        &mut Option<AskedOfExamples<T>>,
        &mut Option<crate::app::ExamplesRequest>,
    ),
    op: &'static str,
    of: fn(&mut Shared) -> &mut OnExamples<T>,
) {
    let (asked, arrived) = {
        let mut s = shared.borrow_mut();
        let q = of(&mut s);
        (q.asked.take(), q.arrived.take())
    };
    if let (Some((head, feature)), Some(d)) = (asked, dashboard) {
        let examples = d.file.head(head).ok().and_then(|data| {
            let fd = data.features.get(feature)?;
            Some(crate::app::features::top_example_windows(
                &d.file.windows,
                fd,
            ))
        });
        match examples {
            Some(examples) => {
                crate::app::ask_about_examples((shown, request), (head, feature, examples))
            }
            None => {
                *shown = Some(AskedOfExamples {
                    head,
                    feature,
                    state: Answer::Failed(format!("no head {head} feature {feature}")),
                })
            }
        }
    }
    if let Some(request) = request.take() {
        request_on_examples(op, request, of);
    }
    if let (Some(asked), Some((of_feature, result))) = (shown.as_mut(), arrived) {
        asked.answer(of_feature, result);
    }
    of(&mut shared.borrow_mut()).view = shown.clone();
}

/// Sends `text` to the inference bundle; the result arrives in `shared.live_arrived`.
fn request_analysis(text: String) {
    shared().borrow_mut().live_running = true;
    wasm_bindgen_futures::spawn_local(async move {
        let result = awaited_string(call_bridge("analyze", &[JsValue::from_str(&text)]))
            .await
            .and_then(|json| {
                serde_json::from_str::<LiveTokens>(&json)
                    .map_err(|e| format!("the inference bundle's answer: {e}"))
            });
        post(|s| {
            s.live_arrived = Some(result);
            s.live_running = false;
        });
    });
}

thread_local! {
    static SHARED: Rc<RefCell<Shared>> = Rc::default();
}

/// Changes what the page and the app share, and wakes the app to act on it.
fn post(change: impl FnOnce(&mut Shared)) {
    change(&mut shared().borrow_mut());
    wake();
}

/// Wakes the app to draw what arrived.
fn wake() {
    if let Some(ctx) = &shared().borrow().ctx {
        ctx.request_repaint();
    }
}

fn shared() -> Rc<RefCell<Shared>> {
    SHARED.with(Rc::clone)
}

/// The app plus the page's inbox.
struct WebApp {
    app: AttnSaesApp,
    shared: Rc<RefCell<Shared>>,
}

impl WebApp {
    /// [`open_labels`]' JSON, read for the open dashboard.
    fn open_labels(&mut self, json: &str) {
        use crate::app::Level;
        let Some(d) = &mut self.app.dashboard else {
            return self
                .app
                .message(Level::Error, "labels: no dashboard is open to label");
        };
        match crate::dashboard::labels::Labels::parse(json.as_bytes(), &d.file.meta) {
            Ok(labels) => {
                let n = labels.len();
                d.replace_labels(labels);
                self.app.message(Level::Info, format!("{n} feature labels"));
            }
            Err(e) => self
                .app
                .message(Level::Error, format!("labels not shown: {e:#}")),
        }
    }
}

impl eframe::App for WebApp {
    fn logic(&mut self, ctx: &egui::Context, frame: &mut eframe::Frame) {
        let arrived: Vec<LoadedDashboard> = self.shared.borrow_mut().inbox.drain(..).collect();
        for d in arrived {
            self.app.curves = Default::default();
            self.app.open_loaded(d);
        }
        let labels = self.shared.borrow_mut().labels_inbox.take();
        if let Some(json) = labels {
            self.open_labels(&json);
        }
        let (request, saved) = {
            let mut s = self.shared.borrow_mut();
            (s.label_request.take(), std::mem::take(&mut s.labels_saved))
        };
        if let Some((head, feature, label)) = request {
            self.app.label_feature(head, feature, &label);
        }
        if let (true, Some(d)) = (saved, &mut self.app.dashboard) {
            d.labels_unsaved = false;
        }
        let compared: Vec<_> = self.shared.borrow_mut().compare_inbox.drain(..).collect();
        for d in compared {
            self.app.compare_kept(d);
        }
        let open_compared = self.shared.borrow_mut().open_compared.take();
        if let Some((name, head, feature)) = open_compared {
            self.app.open_compared(&name, head, feature);
        }
        if let Some((head, feature)) = self.shared.borrow_mut().select.take() {
            self.app
                .push(crate::app::Command::OpenFeature { head, feature });
        }
        self.live_logic(ctx);
        self.app.logic(ctx, frame);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        if self.app.dashboard.is_none() && self.app.ui.view == View::Train {
            self.app.ui.view = View::Features;
        }
        self.app.ui(ui, frame);
        let mut shared = self.shared.borrow_mut();
        shared.selection = self.app.selection();
        shared.messages = self
            .app
            .messages
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        shared.curves_shown = curves_json(&self.app.curves, &self.app.compared);
        let d = self.app.dashboard.as_ref();
        let key = d.map(|d| (d.name.clone(), self.app.opened, d.labels_version));
        if shared.labels_key != key {
            shared.labels_json = d.map(|d| d.labels.to_json()).unwrap_or_default();
            // Another dashboard open (a compared run's, from its closest features): the
            // model and SAE it records are the ones the page's Your text must check.
            if shared.labels_key.as_ref().map(|k| k.1) != key.as_ref().map(|k| k.1) {
                let built_from = d.and_then(|d| d.file.meta.built_from.as_ref());
                shared.built_from =
                    (built_from.and_then(|b| serde_json::to_string(b).ok())).unwrap_or_default();
            }
            shared.labels_key = key;
        }
        // Unsaved labels in a compared run's dashboard, kept since another opened, count too:
        // leaving the page would lose them.
        let kept = self.app.kept.iter().any(|k| k.labels_unsaved);
        shared.labels_unsaved = kept || d.is_some_and(|d| d.labels_unsaved);
        // Kept for `live_shown`, which serialises it only when a script asks.
        let (web, text) = (&self.app.web, &self.app.ui.text);
        shared.live_view = web.analysis.clone().map(|a| LiveView {
            analysis: a,
            prompt: text.prompt.clone(),
            status: web.status.clone(),
            pick: text.token.zip(text.pick).map(|(p, (h, f))| (p, h, f)),
            effect: web.effect.clone(),
            ranking: web.ranking.clone(),
            rank_by: text.answer_ask(),
            steer: web.steer.clone(),
            upstream: web.upstream.clone(),
            prompts: web.prompts.clone(),
            spread: web.spread.clone(),
            prompt_set: text.prompt_set.clone(),
        });
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.app.save(storage);
    }
}

impl WebApp {
    /// A feature's effect on its top examples: asked for by the Features view or
    /// [`live_examples_effect`], sent to the bundle, its answer taken.
    fn examples_logic(&mut self) {
        let web = &mut self.app.web;
        web.live_ready = call_bridge("ready", &[])
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let loaded_for = (call_bridge("loadedFor", &[]).ok())
            .and_then(|v| v.as_string())
            .unwrap_or_default();
        let built_from = self.shared.borrow().built_from.clone();
        web.live_other = web.live_ready && !loaded_for.is_empty() && loaded_for != built_from;
        // Another dashboard open whose model and SAE the page was given (a compared run's):
        // they are loaded, and the text analysed again with them; what was shown of the
        // other SAE goes.
        if web.live_other && web.followed != built_from {
            web.followed = built_from.clone();
            let follows = call_bridge("follow", &[JsValue::from_str(&built_from)]);
            if follows.ok().and_then(|v| v.as_bool()) == Some(true) {
                let (prompt, rerun) = (web.requested.take(), web.analysis.is_some());
                *web = crate::app::WebText {
                    requested: prompt,
                    rerun,
                    followed: built_from,
                    ..Default::default()
                };
            }
        }
        self.shared.borrow_mut().live_other = web.live_other;
        let (shared, d) = (&self.shared, self.app.dashboard.as_ref());
        let effect = (&mut web.examples, &mut web.examples_request);
        examples_question(shared, d, effect, "examplesEffect", |s| &mut s.examples);
        let split = (&mut web.split, &mut web.split_request);
        examples_question(shared, d, split, "examplesSplit", |s| &mut s.split);
    }

    /// Your text: sends requested texts to the page's inference bundle, takes its results,
    /// and keeps the status line current.
    fn live_logic(&mut self, ctx: &egui::Context) {
        let (set_prompt, pick, arrived, running, ask_effect, effect_arrived) = {
            let mut s = self.shared.borrow_mut();
            (
                s.live_prompt.take(),
                s.live_pick.take(),
                s.live_arrived.take(),
                s.live_running,
                s.live_effect.take(),
                s.effect_arrived.take(),
            )
        };
        let (ask_ranking, ranking_arrived, ask_steer, steer_arrived) = {
            let mut s = self.shared.borrow_mut();
            (
                s.live_rank.take(),
                s.ranking_arrived.take(),
                s.live_steer.take(),
                s.steer_arrived.take(),
            )
        };
        let (ask_upstream, upstream_arrived, ask_prompts, prompts_arrived) = {
            let mut s = self.shared.borrow_mut();
            (
                s.live_upstream.take(),
                s.upstream_arrived.take(),
                s.live_rank_prompts.take(),
                s.prompts_arrived.take(),
            )
        };
        let (ask_spread, spread_arrived, prompt_file, (ask_exact, exact_arrived)) = {
            let mut s = self.shared.borrow_mut();
            (
                s.live_spread.take(),
                s.spread_arrived.take(),
                s.open_prompt_set.take(),
                (std::mem::take(&mut s.live_exact), s.exact_arrived.take()),
            )
        };
        if let Some((name, text)) = prompt_file {
            let _ = self.app.open_prompt_set(&name, text);
        }
        let progress = std::mem::take(&mut self.shared.borrow_mut().progress);
        let web = &mut self.app.web;
        for (op, done) in progress {
            let at = match op.as_str() {
                "rank_prompts" => web.prompts.as_mut().map(|p| &mut p.progress),
                "exact_prompts" => {
                    (web.prompts.as_mut()).and_then(|p| p.exact.as_mut().map(|e| &mut e.1))
                }
                "spread_prompts" => web.spread.as_mut().map(|p| &mut p.progress),
                _ => None,
            };
            if let Some(at) = at {
                *at = done;
            }
        }
        self.examples_logic();
        let web = &mut self.app.web;
        if web.rerun && web.live_ready && !web.live_other {
            web.rerun = false;
            web.requested = Some(self.app.ui.text.prompt.clone());
        }
        if let Some((prompt, run)) = set_prompt {
            self.app.ui.text.prompt = prompt;
            self.app.ui.view = View::Text;
            if run {
                web.requested = Some(self.app.ui.text.prompt.clone());
            }
        }
        if let Some(text) = web.requested.take() {
            request_analysis(text);
        }
        match arrived {
            Some(Ok(tokens)) => {
                web.status = format!("{} tokens", tokens.len());
                self.app.ui.text.arrived(&tokens);
                web.analysis = Some(Rc::new(RemoteAnalysis {
                    tokens,
                    attributions: Rc::default(),
                }));
            }
            Some(Err(why)) => {
                web.status = format!("failed: {why}");
            }
            None if running => web.status = "running…".into(),
            None if web.analysis.is_none() => {
                web.status = call_bridge("status", &[])
                    .ok()
                    .and_then(|v| v.as_string())
                    .unwrap_or_else(|| "no inference bundle on this page".into());
                // The page loads the model outside the canvas: look again soon.
                ctx.request_repaint_after(std::time::Duration::from_millis(500));
            }
            None => {}
        }
        if let Some((position, head, feature)) = pick {
            let text = &mut self.app.ui.text;
            (text.token, text.pick) = (Some(position), Some((head, feature)));
            self.app.ui.view = View::Text;
        }
        let web = &mut self.app.web;
        if let Some((head, feature)) = ask_effect {
            web.ask_effect(head, feature);
        }
        if let Some(request) = web.effect_request.take() {
            request_effect(request);
        }
        if let (Some(asked), Some(((ids, head, feature), result))) =
            (&mut web.effect, effect_arrived)
        {
            asked.answer((&ids, head, feature), result);
        }
        if let Some(steering) = ask_steer {
            self.app.ui.text.show_steering(&steering);
            web.ask_steer(steering);
        }
        if let Some(request) = web.steer_request.take() {
            request_steer(request);
        }
        if let (Some(asked), Some(((ids, head, feature), result))) = (&mut web.steer, steer_arrived)
        {
            asked.answer((&ids, head, feature), result);
        }
        if let Some(ask) = ask_upstream {
            // Shown as asked: that token and feature selected, that source chosen.
            let (text, (p, source), (h, f)) = (&mut self.app.ui.text, ask.at, ask.feature);
            (text.token, text.pick) = (Some(p), Some((h, f)));
            text.upstream_source = Some(((p, h, f), source));
            web.ask_upstream(ask);
        }
        if let Some(request) = web.upstream_request.take() {
            request_upstream(request);
        }
        if let (Some(asked), Some(((ids, ask), result))) = (&mut web.upstream, upstream_arrived) {
            asked.answer((&ids, &ask), result);
        }
        if let Some((text, lines)) = ask_prompts {
            // Shown as asked: those lines in the prompt set's box.
            let s = &mut self.app.ui.text;
            s.prompt_set_asked = Some(Ok(text.clone()));
            s.prompt_set = text;
            web.ask_prompts(lines);
        }
        if let Some(lines) = web.prompts_request.take() {
            request_prompts(lines);
        }
        if let (Some(asked), Some((lines, result))) = (&mut web.prompts, prompts_arrived)
            && asked.lines == lines
        {
            asked.state = Answer::of(result);
        }
        if let Some((text, lines, ask)) = ask_spread {
            // Shown as asked: those lines in the box, that feature and source, following or not.
            let s = &mut self.app.ui.text;
            s.prompt_set = text;
            (s.spread_feature, s.spread_from, s.spread_follow) =
                (Some(ask.feature), ask.from, ask.follow);
            web.ask_spread(lines, ask);
        }
        if let Some(request) = web.spread_request.take() {
            request_spread(request);
        }
        if let (Some(asked), Some(((lines, ask), result))) = (&mut web.spread, spread_arrived)
            && asked.is_for(&lines, &ask)
        {
            asked.state = Answer::of(result);
        }
        if ask_exact {
            let listed = (web.prompts.as_ref()).map(|p| p.listed(RANKED_SHOWN));
            web.ask_exact(listed.unwrap_or_default());
        }
        if let Some(request) = web.exact_request.take() {
            request_exact(request);
        }
        if let (Some(asked), Some((lines, result))) = (&mut web.prompts, exact_arrived) {
            asked.exact_arrived(&lines, result);
        }
        if let Some(answer) = ask_ranking {
            self.app.ui.text.show_ranked_by(answer.as_ref());
            web.ask_ranking(answer);
        }
        if let Some(request) = web.ranking_request.take() {
            request_ranking(request);
        }
        if let (Some(asked), Some((ids, result))) = (&mut web.ranking, ranking_arrived)
            && asked.ids == ids
        {
            asked.state = Answer::of(result);
        }
    }
}

/// Starts the viewer on the canvas with id `canvas_id`.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let canvas = document
        .get_element_by_id(&canvas_id)
        .ok_or_else(|| JsValue::from_str(&format!("no element #{canvas_id}")))?
        .dyn_into::<web_sys::HtmlCanvasElement>()?;
    let shared = shared();
    eframe::WebRunner::new()
        .start(
            canvas,
            eframe::WebOptions::default(),
            Box::new(move |cc| {
                shared.borrow_mut().ctx = Some(cc.egui_ctx.clone());
                let app = AttnSaesApp::new(cc);
                Ok(Box::new(WebApp { app, shared }))
            }),
        )
        .await
}

/// Parses a dashboard file and shows it on the next frame. Returns a one-line summary, or
/// the reason the file cannot be read (malformed, truncated, another format or version).
#[wasm_bindgen]
pub fn open_dashboard(name: String, bytes: Vec<u8>) -> Result<String, JsValue> {
    let d = LoadedDashboard::new(name.clone(), bytes)
        .map_err(|e| JsValue::from_str(&format!("{name}: {e}")))?;
    let meta = &d.file.meta;
    let summary = format!(
        "{name}: {}, {} (layer {}), {} tokens scanned",
        meta.shape_text(),
        meta.model.name,
        meta.hook_layer,
        meta.n_tokens
    );
    let built_from = meta
        .built_from
        .as_ref()
        .and_then(|b| serde_json::to_string(b).ok())
        .unwrap_or_default();
    let mut d = d;
    d.labels_edit = crate::app::features::LabelsEdit::Download;
    post(|s| {
        s.built_from = built_from;
        s.inbox.push(d);
    });
    Ok(summary)
}

/// Labels for the open dashboard, as a labels file's JSON (`attn-saes label` writes them
/// beside the dashboard file, `dashboard.labels.json`; `serve` serves them and the page
/// fetches them with the dashboard): shown in the feature list, the dashboard and Your
/// text, and searched; not edited in the page. Labels for another SAE, or that cannot be
/// read, are refused with a message line.
#[wasm_bindgen]
pub fn open_labels(json: String) {
    post(|s| s.labels_inbox = Some(json));
}

/// Labels `feature` of `head` in the open dashboard, as its label field does (an empty
/// label removes it); kept in the page until [`labels_json`] is saved.
#[wasm_bindgen]
pub fn label_feature(head: usize, feature: usize, label: String) {
    post(|s| s.label_request = Some((head, feature, label)));
}

/// The open dashboard's labels as a labels file (`dashboard.labels.json`, what the page's
/// Save labels downloads), or "" with no dashboard open.
#[wasm_bindgen]
pub fn labels_json() -> String {
    shared().borrow().labels_json.clone()
}

/// The open dashboard's name (its file's, as it was opened: a compared run's once opened
/// from its closest features), or "" with none open: Save labels names its download after it.
#[wasm_bindgen]
pub fn open_dashboard_name() -> String {
    let s = shared();
    let s = s.borrow();
    s.labels_key
        .as_ref()
        .map(|k| k.0.clone())
        .unwrap_or_default()
}

/// Whether labels were edited since the page last saved them ([`labels_saved`]), in the
/// open dashboard or in one kept to compare (open it to save them).
#[wasm_bindgen]
pub fn labels_unsaved() -> bool {
    shared().borrow().labels_unsaved
}

/// Says the labels [`labels_json`] gave were saved.
#[wasm_bindgen]
pub fn labels_saved() {
    post(|s| {
        s.labels_saved = true;
        s.labels_unsaved = false;
    });
}

/// Parses a dashboard file and draws the training curves it records beside the open
/// run's (Curves), with `labels` (a labels file's JSON, if the page found one beside it)
/// shown beside its closest features and kept with it. Returns a one-line summary, or why
/// the file cannot be read.
#[wasm_bindgen]
pub fn compare_dashboard(
    name: String,
    bytes: Vec<u8>,
    labels: Option<String>,
) -> Result<String, JsValue> {
    let mut d = LoadedDashboard::new(name.clone(), bytes)
        .map_err(|e| JsValue::from_str(&format!("{name}: {e}")))?;
    let history = d.file.meta.history.clone();
    let mut summary = format!(
        "comparing with {name}: {} steps logged, {} evals",
        history.steps.len(),
        history.evals.len()
    );
    // Its SAE's decoder rows, for the closest features in it (none in an older file).
    let sae = crate::app::curves::ComparedSae::of(&d.file)
        .map_err(|e| JsValue::from_str(&format!("{name}: {e}")))?;
    // What the app would refuse (`AttnSaesApp::compare_run`), refused here.
    crate::app::curves::comparable(&name, &history, sae.as_ref())
        .map_err(|why| JsValue::from_str(&why))?;
    let parsed =
        labels.map(|json| crate::dashboard::labels::Labels::parse(json.as_bytes(), &d.file.meta));
    match parsed {
        Some(Ok(labels)) => {
            summary += &format!(", {} feature labels", labels.len());
            d.labels = labels;
        }
        Some(Err(e)) => summary += &format!(" (its labels not shown: {e:#})"),
        None => {}
    }
    d.labels_edit = crate::app::features::LabelsEdit::Download;
    post(|s| s.compare_inbox.push(d));
    Ok(summary)
}

/// `{name, last}` of the open run and of each compared one (`last`: the last logged step's
/// `{step, l0, explained_variance}`, or null), as JSON.
fn curves_json(
    curves: &crate::app::curves::Curves,
    compared: &[crate::app::curves::Compared],
) -> String {
    let row = |name: &str, h: &crate::run_log::History| {
        let last = h.steps.last().map(|m| {
            serde_json::json!({"step": m.step, "l0": m.l0, "explained_variance": m.explained_variance})
        });
        serde_json::json!({"name": name, "last": last})
    };
    let others: Vec<_> = compared.iter().map(|c| row(&c.name, &c.history)).collect();
    serde_json::json!({"open": row(&curves.name, &curves.history), "compared": others}).to_string()
}

/// What Curves shows, as JSON: `{open: {name, last}, compared: [{name, last}]}` (scripts and
/// tests).
#[wasm_bindgen]
pub fn curves_shown() -> String {
    shared().borrow().curves_shown.clone()
}

/// Shows one feature's dashboard (the page's `?feature=HEAD,FEATURE`), in the open
/// dashboard; a head or feature it lacks is an error line.
#[wasm_bindgen]
pub fn select_feature(head: usize, feature: usize) {
    post(|s| s.select = Some((head, feature)));
}

/// Opens the compared run `name` (a dashboard given to [`compare_dashboard`]) at head
/// `head` feature `feature`, comparing the open one instead, as a click on one of its
/// closest features does (for scripts and tests).
#[wasm_bindgen]
pub fn open_compared(name: String, head: usize, feature: usize) {
    post(|s| s.open_compared = Some((name, head, feature)));
}

/// False when the page's model and SAE were loaded for another dashboard than the open one
/// (Your text then says so, and the Features view does not offer their effect on its top
/// examples); true otherwise, also with no model loaded.
#[wasm_bindgen]
pub fn live_matches_dashboard() -> bool {
    !shared().borrow().live_other
}

/// The message lines the viewer shows (errors and notices), one per line.
#[wasm_bindgen]
pub fn messages() -> String {
    shared().borrow().messages.clone()
}

/// What is selected, in words: `view Features · head 2 · feature 3 · density 1.234e-2`.
#[wasm_bindgen]
pub fn selection() -> String {
    shared().borrow().selection.clone()
}

/// What Your text shows, as JSON (`{prompt, status, tokens, pick, rank_by, prompt_set}`,
/// and `effect`, `ranking`, `steer`, `upstream`, `prompts`, `spread` and `prompts_exact`
/// with their `_status`, the last three with their `_progress`, `[done, of]`), or "" before
/// any analysis.
#[wasm_bindgen]
pub fn live_shown() -> String {
    let shared = shared();
    let shared = shared.borrow();
    let Some(v) = &shared.live_view else {
        return String::new();
    };
    let mut shown = crate::live::shown_json(v.analysis.as_ref(), &v.prompt, v.pick);
    shown["status"] = v.status.clone().into();
    shown["rank_by"] = serde_json::to_value(&v.rank_by).unwrap_or_default();
    shown["prompt_set"] = v.prompt_set.clone().into();
    // How far the prompt set's requests got (of the last asked).
    let exact = (v.prompts.as_ref()).and_then(|p| p.exact.as_ref().map(|e| e.1));
    for (name, progress) in [
        ("prompts_progress", v.prompts.as_ref().map(|p| p.progress)),
        ("spread_progress", v.spread.as_ref().map(|p| p.progress)),
        ("prompts_exact_progress", exact),
    ] {
        shown[name] = serde_json::to_value(progress).unwrap_or_default();
    }
    for (name, state) in [
        ("effect", answer_json(v.effect.as_ref().map(|x| &x.state))),
        ("ranking", answer_json(v.ranking.as_ref().map(|x| &x.state))),
        ("steer", answer_json(v.steer.as_ref().map(|x| &x.state))),
        (
            "upstream",
            answer_json(v.upstream.as_ref().map(|x| &x.state)),
        ),
        ("prompts", answer_json(v.prompts.as_ref().map(|x| &x.state))),
        ("spread", answer_json(v.spread.as_ref().map(|x| &x.state))),
        (
            "prompts_exact",
            answer_json((v.prompts.as_ref()).and_then(|x| x.exact.as_ref().map(|e| &e.0))),
        ),
    ] {
        shown[format!("{name}_status")] = state.0.into();
        shown[name] = state.1;
    }
    shown.to_string()
}

/// `(status, answer)` of something asked of the bundle: `status` none, computing, ready or
/// `failed: ...`; the answer's JSON, null unless ready.
fn answer_json<T: serde::Serialize>(state: Option<&Answer<T>>) -> (String, serde_json::Value) {
    match state {
        None => ("none".into(), serde_json::Value::Null),
        Some(Answer::Computing) => ("computing".into(), serde_json::Value::Null),
        Some(Answer::Failed(why)) => (format!("failed: {why}"), serde_json::Value::Null),
        Some(Answer::Ready(x)) => ("ready".into(), serde_json::to_value(x).unwrap_or_default()),
    }
}

/// Asks what removing `feature` of `head` does on its top examples in the open dashboard
/// (Features' "Remove it on its top examples"; needs a model loaded for Your text);
/// [`examples_shown`] has it once it arrives.
#[wasm_bindgen]
pub fn live_examples_effect(head: usize, feature: usize) {
    post(|s| s.examples.asked = Some((head, feature)));
}

/// `{status, head, feature, effect}` of the effect on top examples last asked for
/// (`status`: none, computing, ready or `failed: ...`; `effect` null unless ready).
#[wasm_bindgen]
pub fn examples_shown() -> String {
    examples_answer_json(&shared().borrow().examples.view, "effect")
}

/// Asks what wrote what `feature` of `head` reads over its top examples in the open
/// dashboard (Features' "Take its top examples apart", for a file without the split; needs
/// a model loaded for Your text); [`examples_split_shown`] has it once it arrives.
#[wasm_bindgen]
pub fn live_examples_split(head: usize, feature: usize) {
    post(|s| s.split.asked = Some((head, feature)));
}

/// `{status, head, feature, split}` of the split over top examples last asked for, as
/// [`examples_shown`] (`split`: the dashboard file's JSON of it, `features --feature`'s
/// `upstream`).
#[wasm_bindgen]
pub fn examples_split_shown() -> String {
    examples_answer_json(&shared().borrow().split.view, "split")
}

/// `{status, head, feature, NAME}` of a question about a feature's top examples.
fn examples_answer_json<T: serde::Serialize>(
    view: &Option<AskedOfExamples<T>>,
    name: &str,
) -> String {
    let Some(asked) = view else {
        return serde_json::json!({"status": "none"}).to_string();
    };
    let (status, answer) = answer_json(Some(&asked.state));
    let mut shown = serde_json::json!({
        "status": status, "head": asked.head, "feature": asked.feature,
    });
    shown[name] = answer;
    shown.to_string()
}

/// Ranks the features of the analysed text (Your text's "Rank the features"): by the loss,
/// or given `answer` (JSON of [`AnswerAsk`]: `{"answer": " Mary", "against": " John",
/// "at": 12}`, the last two optional) by it; [`live_shown`] has the ranking once it
/// arrives.
#[wasm_bindgen]
pub fn live_rank(answer: Option<String>) -> Result<(), JsValue> {
    let answer = match answer {
        Some(json) => Some(
            serde_json::from_str::<AnswerAsk>(&json)
                .map_err(|e| JsValue::from_str(&format!("the answer asked for: {e}")))?,
        ),
        None => None,
    };
    post(|s| s.live_rank = Some(answer));
    Ok(())
}

/// Ranks the features over a prompt set (Your text's "Rank over the set"): `lines` as
/// `attn-saes rank --prompts` reads them (JSON lines of `{"text": ..., "answer": " Mary",
/// "against": " John", "at": 12}`, the last two optional, or one JSON array), put in the
/// prompt set's box; [`live_shown`] has the ranking once it arrives (`prompts`). Throws on
/// lines that are not such prompts, naming the line. Needs a text analysed first (the
/// view shows the prompt set under its analysis).
#[wasm_bindgen]
pub fn live_rank_prompts(lines: String) -> Result<(), JsValue> {
    let read =
        PromptLine::parse_set(&lines, "the prompt set").map_err(|e| JsValue::from_str(&e))?;
    let read = read.into_iter().map(|x| x.1).collect();
    post(|s| s.live_rank_prompts = Some((lines, read)));
    Ok(())
}

/// Removes each feature the ranking over the prompt set lists (the strongest each way, as
/// Your text's "Remove each for the exact change" does) from every prompt it fires in, for
/// what its answer loses, averaged (`rank --prompts --exact`); [`live_shown`] has them once
/// they arrive (`prompts_exact`: `[[head, feature, change], ...]`). Needs the ranking.
#[wasm_bindgen]
pub fn live_exact_prompts() {
    post(|s| s.live_exact = true);
}

/// The inference bundle has done `done` of `of` steps of the prompt-set request `op`
/// (`rank_prompts`, `exact_prompts` or `spread_prompts`): web/live.js relays it, and Your
/// text shows it while the request is computing.
#[wasm_bindgen]
pub fn live_progress(op: String, done: usize, of: usize) {
    post(|s| s.progress.push((op, (done, of))));
}

/// Puts a prompt set's file (`name`, its `text`: `rank --prompts`' lines) in Your text's
/// prompt set and shows Your text (the page's picker and a dropped `.jsonl` call it):
/// returns how many prompts it holds, in words; throws naming the line that is no prompt
/// (its text is put there either way, to mend).
#[wasm_bindgen]
pub fn open_prompt_set(name: String, text: String) -> Result<String, JsValue> {
    let said = crate::app::prompt_set_said(&name, &text);
    post(|s| s.open_prompt_set = Some((name, text)));
    said.map_err(|e| JsValue::from_str(&e))
}

/// Takes `feature` of `head`'s DFA apart upstream on each prompt of a prompt set (Your
/// text's "Take it apart over the set"): `lines` as [`live_rank_prompts`] reads them, put in
/// the prompt set's box, each read where its answer is predicted; from each prompt's
/// strongest source, its largest positive one or its answer's token (`from`: "strongest",
/// "largest" or "answer"), followed up through the strongest heads if `follow`.
/// [`live_shown`] has it once it arrives (`spread`). Throws on lines that are not prompts
/// (naming the line) or another `from`.
#[wasm_bindgen]
pub fn live_spread_prompts(
    lines: String,
    head: usize,
    feature: usize,
    from: String,
    follow: bool,
) -> Result<(), JsValue> {
    let read =
        PromptLine::parse_set(&lines, "the prompt set").map_err(|e| JsValue::from_str(&e))?;
    let read = read.into_iter().map(|x| x.1).collect();
    let from = serde_json::from_value(serde_json::Value::String(from.clone())).map_err(|_| {
        JsValue::from_str(&format!(
            "from {from:?}: one of \"strongest\", \"largest\" or \"answer\""
        ))
    })?;
    let ask = SpreadAsk {
        feature: (head, feature),
        from,
        follow,
    };
    post(|s| s.live_spread = Some((lines, read, ask)));
    Ok(())
}

/// Continues the analysed text by `tokens` clean and steered by `feature` of `head` at
/// `strength` (Your text's "Continue the text"; with `clamp`, the feature held at that
/// activation instead of added), greedily at `temperature` 0, else sampled with `seed`;
/// [`live_shown`] has it once it arrives.
#[wasm_bindgen]
pub fn live_steer(
    head: usize,
    feature: usize,
    strength: f32,
    tokens: usize,
    temperature: f32,
    seed: u32,
    clamp: Option<bool>,
) {
    let steering = Steering {
        head,
        feature,
        strength,
        tokens,
        temperature,
        seed: seed.into(),
        clamp: clamp.unwrap_or(false),
        ..Steering::greedy(head, feature, strength, tokens)
    };
    post(|s| s.live_steer = Some(steering));
}

/// [`live_steer`] with every option of [`Steering`], as JSON: the fields `steer --json`
/// prints (`head`, `feature`, `strength`, `tokens`; optional `temperature`, `seed`,
/// `clamp`, `where_fires`, `also` as `[[head, feature, strength], ...]`, `new_only`,
/// `from_position`, `top_p`, `top_k`).
/// Throws on JSON that is not that shape; the steering's own checks (a strength, a
/// temperature) answer in [`live_shown`] as a failure.
#[wasm_bindgen]
pub fn live_steer_json(steering: &str) -> Result<(), JsError> {
    let steering: Steering = serde_json::from_str(steering)
        .map_err(|e| JsError::new(&format!("not a steering: {e}")))?;
    post(|s| s.live_steer = Some(steering));
    Ok(())
}

/// Asks for the effect of `feature` of `head` on the analysed text (Your text's "Remove it
/// and run again"); [`live_shown`] has it once it arrives.
#[wasm_bindgen]
pub fn live_effect(head: usize, feature: usize) {
    post(|s| s.live_effect = Some((head, feature)));
}

/// Asks for the DFA of `feature` of `head` at `position` from `source` in the analysed text,
/// split by what wrote the residual stream at the source (Your text's "Take it apart"), or,
/// given `through` (JSON of `[{"layer": 1, "head": 0, "from": 2}, ...]`), further up through
/// those heads (a "reading from" position clicked), and with `follow` true, then on up
/// through the strongest writer while it is a head ("Follow the strongest"); [`live_shown`]
/// has it once it arrives (`upstream`, JSON of [`Upstream`]). Throws on `through` that is
/// not that shape.
#[wasm_bindgen]
pub fn live_upstream(
    head: usize,
    feature: usize,
    position: usize,
    source: usize,
    through: Option<String>,
    follow: Option<bool>,
) -> Result<(), JsError> {
    let through: Vec<Through> = match through {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| JsError::new(&format!("not a list of steps: {e}")))?,
        None => Vec::new(),
    };
    let ask = UpstreamAsk {
        feature: (head, feature),
        at: (position, source),
        through,
        follow: follow.unwrap_or(false),
    };
    post(|s| s.live_upstream = Some(ask));
    Ok(())
}

/// Puts `prompt` in Your text (and switches to it); with `run`, analyses it too.
#[wasm_bindgen]
pub fn live_set_prompt(prompt: String, run: bool) {
    post(|s| s.live_prompt = Some((prompt, run)));
}

/// Selects a token and one of its features in Your text, as clicking them does.
#[wasm_bindgen]
pub fn live_pick(position: usize, head: usize, feature: usize) {
    post(|s| s.live_pick = Some((position, head, feature)));
}

/// JSON of the model and SAE files the open dashboard records (name, sha256, size), or ""
/// when it records none: the page checks the files it loads for Your text against them.
#[wasm_bindgen]
pub fn built_from() -> String {
    shared().borrow().built_from.clone()
}
