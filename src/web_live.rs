//! The page's inference bundle (wasm32 with the `web-live` feature; `web/dist/live/`): the
//! LM and SAE in burn on WebGPU, or on burn's CPU backend where the browser has none. The
//! viewer (`src/web.rs`) does not contain it: `web/index.html` imports this bundle only
//! when someone loads a model, and the viewer's "Your text" view calls it through the page
//! (`window.attnSaesLive`).
//!
//! The page hands over the files it downloaded (or the user picked); they are mounted in
//! memory ([`crate::vfs`]) and read by the desktop's loaders, so a model loads here exactly
//! as `lm::load_from_path` loads a directory or a `.gguf` file there.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use burn::prelude::*;
use wasm_bindgen::prelude::*;

use crate::live::{Analysed, LiveAnalysis};
use crate::lm::{LoadedModel, ZConvention};
use crate::sae::BlockDiagSae;

const MODEL_DIR: &str = "/model";
const SAE_DIR: &str = "/sae";

struct Session {
    loaded: LoadedModel,
    sae: BlockDiagSae,
    layer: usize,
    z_convention: ZConvention,
    /// Where the model is, and that said in words: a load that keeps the model keeps them.
    device: Device,
    on: String,
}

thread_local! {
    static SESSION: RefCell<Option<Rc<Session>>> = const { RefCell::new(None) };
    static LAST: RefCell<Option<LiveAnalysis>> = const { RefCell::new(None) };
    /// The last prompt set ranked over, and its ranking (for the exact changes after it).
    static LAST_PROMPTS: RefCell<Option<(Vec<crate::live::PromptLine>, crate::live::PromptsRanking)>> =
        const { RefCell::new(None) };
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// The lowercase hex SHA-256 of `bytes` (the page checks downloads against the manifest).
#[wasm_bindgen]
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::files::sha256_hex(bytes)
}

/// `[[name, Uint8Array], ...]` from the page.
fn named_files(files: &js_sys::Array) -> Result<Vec<(String, Vec<u8>)>, JsValue> {
    files
        .iter()
        .map(|pair| {
            let pair = js_sys::Array::from(&pair);
            let name = pair
                .get(0)
                .as_string()
                .ok_or_else(|| js_error("a file without a name"))?;
            // Only a file name: the page must not reach outside the mounted directory.
            if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
                return Err(js_error(format!("'{name}' is not a plain file name")));
            }
            let bytes = js_sys::Uint8Array::new(&pair.get(1)).to_vec();
            Ok((name, bytes))
        })
        .collect()
}

/// WebGPU when the page asks for it and it works (one tiny op read back), else burn's CPU
/// backend; with a sentence saying which and why.
async fn pick_device(backend: &str) -> (Device, String) {
    if backend == "cpu" {
        return (Device::flex(), "CPU (burn flex, in the page)".into());
    }
    let why = match Device::wgpu_options().init_async().await {
        Ok(device) => {
            let x = Tensor::<1>::ones([4], &device).sum();
            match x.into_data_async().await.map(|d| d.try_to_vec::<f32>()) {
                Ok(Ok(v)) if v == [4.0] => {
                    let name = device
                        .identity()
                        .map(|id| id.name.clone())
                        .unwrap_or_default();
                    let on = match name.trim() {
                        "" => "WebGPU".to_string(),
                        name => format!("WebGPU ({name})"),
                    };
                    return (device, on);
                }
                other => format!("its test op gave {other:?}"),
            }
        }
        Err(e) => e.to_string(),
    };
    (
        Device::flex(),
        format!("CPU (burn flex, in the page): WebGPU did not start: {why}"),
    )
}

/// Loads a model (its files: a `.gguf`, or `config.json` + `model.safetensors` +
/// `tokenizer.json`) and an SAE (`sae_config.json` + `sae.safetensors`) on WebGPU, or on the
/// CPU if `backend` is `"cpu"` or WebGPU does not start. `layer` and `z_convention`
/// (`"TransformerLens"` or `"Raw"`) default to what the SAE records; `name` names the model
/// (default: the `.gguf`'s file name); `keep_bos`, whether the SAE reads BOS positions,
/// defaults to what the SAE records too. With `keep_model`, the model loaded before stays (on
/// its device) and `model_files` are not read: the page asks so when they are the same
/// files; an error when no model is loaded. Returns a description.
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)] // the page's call, argument by argument
pub async fn load(
    model_files: js_sys::Array,
    sae_files: js_sys::Array,
    backend: String,
    layer: Option<u32>,
    z_convention: Option<String>,
    name: Option<String>,
    keep_model: Option<bool>,
    keep_bos: Option<bool>,
) -> Result<String, JsValue> {
    let model_files = named_files(&model_files)?;
    let sae_files = named_files(&sae_files)?;
    let before = SESSION.with(|s| s.borrow_mut().take());
    LAST.with(|l| l.borrow_mut().take());
    let kept = match keep_model {
        Some(true) => {
            let before = before.ok_or_else(|| js_error("no model loaded to keep"))?;
            let before = Rc::try_unwrap(before)
                .map_err(|_| js_error("the model loaded is still in use: load it again"))?;
            Some((before.loaded, before.device, before.on))
        }
        _ => None,
    };
    let (kept, device, on) = match kept {
        Some((loaded, device, on)) => (Some(loaded), device, on),
        None => {
            let (device, on) = pick_device(&backend).await;
            (None, device, on)
        }
    };
    let (model_dir, sae_dir) = (Path::new(MODEL_DIR), Path::new(SAE_DIR));
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        model_files
            .iter()
            .find(|(n, _)| n.ends_with(".gguf"))
            .map_or("model".to_string(), |(n, _)| n.clone())
    });
    crate::vfs::mount(model_dir, model_files);
    crate::vfs::mount(sae_dir, sae_files);
    let loaded = (|| -> anyhow::Result<Session> {
        let loaded = match kept {
            Some(loaded) => loaded,
            None => crate::lm::load_from_path(model_dir, &name, &device)?,
        };
        let mut sae = BlockDiagSae::load(sae_dir, &device)?;
        sae.reads_bos = keep_bos.unwrap_or(sae.reads_bos);
        let config = &loaded.transformer.config;
        sae.check_fits(&name, config.n_heads, config.d_head)?;
        let origin = BlockDiagSae::read_origin(sae_dir)?;
        let layer = match (layer, &origin) {
            (Some(l), _) => l as usize,
            (None, Some(o)) => o.hook_layer,
            (None, None) => anyhow::bail!("the SAE does not record its layer: give one"),
        };
        let z_convention = match (z_convention.as_deref(), &origin) {
            (Some("Raw"), _) => ZConvention::Raw,
            (Some(_), _) => ZConvention::TransformerLens,
            (None, Some(o)) => o.z_convention,
            (None, None) => ZConvention::TransformerLens,
        };
        anyhow::ensure!(
            layer < config.n_layers,
            "layer {layer}: the model has {} layers",
            config.n_layers
        );
        Ok(Session {
            loaded,
            sae,
            layer,
            z_convention,
            device: device.clone(),
            on: on.clone(),
        })
    })();
    // The weights are on the device now (or the load failed): free the downloads.
    crate::vfs::unmount(model_dir);
    crate::vfs::unmount(sae_dir);
    let session = loaded.map_err(|e| js_error(format!("{e:#}")))?;
    let c = &session.sae.config;
    let description = format!(
        "{} layer {}, SAE {} heads x {} features, on {on}",
        session.loaded.transformer.config.name, session.layer, c.n_heads, c.features_per_head
    );
    SESSION.with(|s| *s.borrow_mut() = Some(Rc::new(session)));
    Ok(description)
}

/// Analyses `text` with the loaded model and SAE: JSON of [`crate::live::LiveTokens`].
#[wasm_bindgen]
pub async fn analyze(text: String) -> Result<String, JsValue> {
    let session = session()?;
    let analysis = LiveAnalysis::run_async(
        &session.loaded,
        &session.sae,
        session.layer,
        session.z_convention,
        &text,
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    let json = serde_json::to_string(&analysis.tokens).map_err(js_error)?;
    LAST.with(|l| *l.borrow_mut() = Some(analysis));
    Ok(json)
}

/// The attribution of `feature` of `head` at `position` in the last text analysed: JSON of
/// [`crate::live::Attribution`].
#[wasm_bindgen]
pub fn attribution(head: usize, feature: usize, position: usize) -> Result<String, JsValue> {
    LAST.with(|l| {
        let last = l.borrow();
        let a = last.as_ref().ok_or_else(|| js_error("no text analysed"))?;
        let t = a.tokens();
        if head >= t.n_heads || feature >= t.features_per_head || position >= t.len() {
            return Err(js_error(format!(
                "head {head}, feature {feature}, position {position}: out of range ({} heads, \
                 {} features, {} tokens)",
                t.n_heads,
                t.features_per_head,
                t.len()
            )));
        }
        serde_json::to_string(&a.attribution(head, feature, position)).map_err(js_error)
    })
}

/// What removing `feature` of `head` wherever it fires in the last text analysed changes in
/// the model's next-token predictions (and, given `objective`, JSON of an answer
/// [`crate::live::Objective`], in its value): JSON of [`crate::live::FeatureEffect`].
#[wasm_bindgen]
pub async fn effect(
    head: usize,
    feature: usize,
    objective: Option<String>,
) -> Result<String, JsValue> {
    let session = session()?;
    let ids = last_ids()?;
    let objective: Option<crate::live::Objective> = match objective {
        Some(json) => Some(serde_json::from_str(&json).map_err(js_error)?),
        None => None,
    };
    let effect = crate::live::feature_effect_on_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        &ids,
        ((head, feature), 0.0),
        objective.as_ref(),
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&effect).map_err(js_error)
}

/// The split `ask` (JSON of [`crate::live::UpstreamAsk`]) asks for of the last text
/// analysed: a feature's DFA at a position from a source by what wrote the residual stream
/// at the source, or further up through heads: JSON of [`crate::live::Upstream`].
#[wasm_bindgen]
pub async fn upstream(ask: String) -> Result<String, JsValue> {
    let session = session()?;
    let ids = last_ids()?;
    let ask: crate::live::UpstreamAsk = serde_json::from_str(&ask).map_err(js_error)?;
    let upstream = crate::live::upstream_through_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        &ids,
        &ask,
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&upstream).map_err(js_error)
}

/// Every feature that fires in a prompt set's texts (`lines`: JSON of a list of
/// [`crate::live::PromptLine`]), ranked by a first-order estimate of how much each prompt's
/// answer would fall without it, averaged over the prompts (`rank --prompts`): JSON of
/// [`crate::live::PromptsRanking`].
#[wasm_bindgen]
pub async fn rank_prompts(
    lines: String,
    progress: Option<js_sys::Function>,
) -> Result<String, JsValue> {
    let session = session()?;
    let lines: Vec<crate::live::PromptLine> = serde_json::from_str(&lines).map_err(js_error)?;
    let ranking = crate::live::rank_prompt_lines_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        &lines,
        &mut |done, of| told(progress.as_ref(), done, of),
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    let json = serde_json::to_string(&ranking).map_err(js_error)?;
    LAST_PROMPTS.with(|l| *l.borrow_mut() = Some((lines, ranking)));
    Ok(json)
}

/// Each of `features` (JSON of `[[head, feature], ...]`) removed from every prompt of the
/// set last ranked over (`lines`, JSON of its [`crate::live::PromptLine`]s, must be those)
/// that it fires in: what its answer loses, averaged (`rank --prompts --exact`): JSON of
/// `[[head, feature, change], ...]`.
#[wasm_bindgen]
pub async fn exact_prompts(
    lines: String,
    features: String,
    progress: Option<js_sys::Function>,
) -> Result<String, JsValue> {
    let session = session()?;
    let lines: Vec<crate::live::PromptLine> = serde_json::from_str(&lines).map_err(js_error)?;
    let features: Vec<(usize, usize)> = serde_json::from_str(&features).map_err(js_error)?;
    let ranking = LAST_PROMPTS
        .with(|l| {
            l.borrow()
                .as_ref()
                .filter(|x| x.0 == lines)
                .map(|x| x.1.clone())
        })
        .ok_or_else(|| js_error("this prompt set was not the last ranked over: rank it again"))?;
    let exact = crate::live::exact_prompt_lines_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        (&lines, &ranking),
        &features,
        &mut |done, of| told(progress.as_ref(), done, of),
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&exact).map_err(js_error)
}

/// A feature's DFA taken apart upstream on each of a prompt set's texts (`lines`: JSON of a
/// list of [`crate::live::PromptLine`], each read where its answer is predicted), as `ask`
/// (JSON of [`crate::live::SpreadAsk`]) asks (`upstream --prompts`): JSON of
/// [`crate::live::PromptsSpread`].
#[wasm_bindgen]
pub async fn spread_prompts(
    lines: String,
    ask: String,
    progress: Option<js_sys::Function>,
) -> Result<String, JsValue> {
    let session = session()?;
    let lines: Vec<crate::live::PromptLine> = serde_json::from_str(&lines).map_err(js_error)?;
    let ask: crate::live::SpreadAsk = serde_json::from_str(&ask).map_err(js_error)?;
    let spread = crate::live::upstream_on_prompt_lines_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        &lines,
        &ask,
        &mut |done, of| told(progress.as_ref(), done, of),
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&spread).map_err(js_error)
}

/// Every feature that fires in the last text analysed, ranked by a first-order estimate of
/// how much the text's loss would rise without it, or given `answer` (JSON of
/// [`crate::live::AnswerAsk`]) how much the answer's logit difference or log-probability
/// would fall: JSON of [`crate::live::FeatureRanking`].
#[wasm_bindgen]
pub async fn rank(answer: Option<String>) -> Result<String, JsValue> {
    let session = session()?;
    let ids = last_ids()?;
    let answer: Option<crate::live::AnswerAsk> = match answer {
        Some(json) => Some(serde_json::from_str(&json).map_err(js_error)?),
        None => None,
    };
    let objective = crate::live::resolve_answer(&session.loaded, &ids, answer.as_ref())
        .map_err(|e| js_error(format!("{e:#}")))?;
    let ranking = crate::live::rank_features_async(
        &session.loaded,
        &session.sae,
        (session.layer, session.z_convention),
        &ids,
        &objective,
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&ranking).map_err(js_error)
}

/// The last text analysed continued clean and steered as `steering` (JSON of
/// [`crate::live::Steering`]) asks: JSON of [`crate::live::Steered`].
#[wasm_bindgen]
pub async fn steer(steering: String) -> Result<String, JsValue> {
    let session = session()?;
    let ids = last_ids()?;
    let steering: crate::live::Steering = serde_json::from_str(&steering).map_err(js_error)?;
    let steered = crate::live::steer_async(
        &session.loaded,
        &session.sae,
        session.layer,
        session.z_convention,
        &ids,
        &steering,
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&steered).map_err(js_error)
}

/// The loaded model and SAE.
fn session() -> Result<Rc<Session>, JsValue> {
    SESSION
        .with(|s| s.borrow().clone())
        .ok_or_else(|| js_error("no model loaded"))
}

/// Tells `progress` (the worker's callback, if any) that `done` of `of` are done.
fn told(progress: Option<&js_sys::Function>, done: usize, of: usize) {
    if let Some(f) = progress {
        let _ = f.call2(&JsValue::NULL, &done.into(), &of.into());
    }
}

/// The tokens of the last text analysed.
fn last_ids() -> Result<Vec<u32>, JsValue> {
    LAST.with(|l| l.borrow().as_ref().map(|a| a.tokens().ids.clone()))
        .ok_or_else(|| js_error("no text analysed"))
}

/// What removing `feature` of `head` does on its top examples: `examples` is JSON of
/// `[[window token ids, target], ...]`; JSON of [`crate::live::ExamplesEffect`].
#[wasm_bindgen]
pub async fn examples_effect(
    head: usize,
    feature: usize,
    examples: String,
) -> Result<String, JsValue> {
    let session = session()?;
    let examples: Vec<(Vec<u32>, usize)> = serde_json::from_str(&examples).map_err(js_error)?;
    let effects = crate::live::effects_on_examples_async(
        &session.loaded,
        &session.sae,
        session.layer,
        session.z_convention,
        &examples,
        head,
        feature,
    )
    .await
    .map_err(|e| js_error(format!("{e:#}")))?;
    let targets: Vec<usize> = examples.iter().map(|e| e.1).collect();
    let summary = crate::live::ExamplesEffect::of(&effects, &targets);
    serde_json::to_string(&summary).map_err(js_error)
}

/// What wrote what `feature` of `head` reads over its top examples (`examples`: JSON of
/// `[[window token ids, target], ...]`): each one's DFA from its largest source split
/// upstream, as `dashboard --upstream` puts it in the file; JSON of
/// [`crate::dashboard::format::FeatureUpstream`].
#[wasm_bindgen]
pub async fn examples_split(
    head: usize,
    feature: usize,
    examples: String,
) -> Result<String, JsValue> {
    let session = session()?;
    let examples: Vec<(Vec<u32>, usize)> = serde_json::from_str(&examples).map_err(js_error)?;
    let hook = (session.layer, session.z_convention);
    let (loaded, sae) = (&session.loaded, &session.sae);
    let split = crate::live::examples_split_async(loaded, sae, hook, &examples, (head, feature))
        .await
        .map_err(|e| js_error(format!("{e:#}")))?;
    serde_json::to_string(&split).map_err(js_error)
}
