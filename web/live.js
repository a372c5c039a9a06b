// Your text in the page: starts the inference worker (live-worker.js, which holds the
// inference bundle: the LM and SAE in burn, on WebGPU or the CPU) only when someone loads a
// model, and answers the viewer through window.attnSaesLive:
//   status() -> a line; ready() -> bool; analyze(text) -> Promise<JSON of the tokens and
//   their features>; attribution(head, feature, position) -> Promise<JSON of a DFA>;
//   effect(head, feature, objectiveJson?) -> Promise<JSON of what removing the feature
//   changes (and in an answer objective's value, given one)>;
//   upstream(askJson) -> Promise<JSON of a feature's DFA from a source split by what wrote
//   the residual stream there, or further up through heads ({feature, at, through})>;
//   rank(answerJson?) -> Promise<JSON of every firing feature's estimated effect on the
//   loss, or on an answer ({answer, against?, at?}: its logit difference or
//   log-probability)>;
//   rankPrompts(linesJson) -> Promise<JSON of every feature firing in a prompt set's texts
//   ([{text, answer, against?, at?}]) ranked by its estimated effect on each one's answer,
//   averaged>;
//   exactPrompts(linesJson, featuresJson) -> Promise<JSON of each feature removed from every
//   prompt of the set last ranked over that it fires in: [[head, feature, mean change]]>;
//   spreadPrompts(linesJson, askJson) -> Promise<JSON of a feature's DFA taken apart
//   upstream on each of a prompt set's texts ({feature, from, follow}), and each writer's
//   part over them or the paths followed>;
//   steer(steeringJson) -> Promise<JSON of the text continued clean and steered by a
//   feature>;
//   examplesEffect(head, feature, examplesJson) -> Promise<JSON of what removing the
//   feature does on its top examples>;
//   examplesSplit(head, feature, examplesJson) -> Promise<JSON of what wrote what the
//   feature reads over its top examples (a dashboard file's split, for one without it)>;
//   loadManifest(url), loadManifests(urls), loadUrls(model, sae), loadFiles(files) ->
//   Promise; follow(builtFrom) -> whether it loads the model and SAE of the dashboard
//   now open, from a manifest given (the viewer asks when another dashboard opens); backend,
//   fromCache, keptModel (the last load kept the model loaded before, the same files, and
//   read only the SAE's), checkedAgainstDashboard (files checked against the open dashboard's
//   records), lastLoadMs, lastAnalyzeMs (as the worker timed them), inWorker.
// The worker downloads, checks, loads and analyses; this page only asks and relays, so it
// keeps drawing and answering input meanwhile.

// Names that make a model or an SAE (anything else dropped is a dashboard).
const SAE_NAMES = ['sae_config.json', 'sae.safetensors'];
const MODEL_NAMES = ['config.json', 'model.safetensors', 'tokenizer.json'];

export function isLiveFile(name) {
  return name.endsWith('.gguf') || SAE_NAMES.includes(name) || MODEL_NAMES.includes(name);
}

let worker = null;
let status = 'no model loaded: open a model and its SAE (Model + SAE…), or add ?live=live.json';
let ready = false;
let loadedFor = '';
let say = () => {};
// Requests waiting for the worker's answer, by id.
const waiting = new Map();
let nextId = 0;
// The analysis the viewer was last given: its attributions are asked of it.
let lastAnalysis = 0;

function setStatus(text, isError = false) {
  status = isError ? `failed: ${text}` : text;
  say(status, isError);
}

function getWorker() {
  if (!worker) {
    setStatus('loading the inference bundle…');
    worker = new Worker(new URL('./live-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => {
      if ('status' in data) {
        setStatus(data.status);
        return;
      }
      // How far a prompt set's request has got: the viewer shows it.
      if ('progress' in data) {
        const { op, done, of } = data.progress;
        if (window.attnSaes && window.attnSaes.live_progress) window.attnSaes.live_progress(op, done, of);
        return;
      }
      const w = waiting.get(data.id);
      waiting.delete(data.id);
      if ('error' in data) w.reject(new Error(data.error));
      else w.resolve(data.value);
    };
    // The worker's script failed to load or threw outside a request: every request fails.
    worker.onerror = (e) => {
      e.preventDefault();
      // A browser without module workers (Firefox before 114) cannot start it.
      const why = `the inference worker stopped: ${e.message || 'its script did not load'} ` +
                  '(Your text needs module workers: Chrome/Edge 80+, Firefox 114+, Safari 15+)';
      for (const w of waiting.values()) w.reject(new Error(why));
      waiting.clear();
      worker = null;
      ready = false;
      setStatus(why, true);
    };
  }
  return worker;
}

// Sends `op` to the worker; a promise of its answer.
function ask(op, args) {
  const w = getWorker();
  const id = nextId++;
  return new Promise((resolve, reject) => {
    waiting.set(id, { resolve, reject });
    w.postMessage({ id, op, args });
  });
}

// The last part of a path or URL (a directory's name, a file's).
function baseName(path) {
  return decodeURIComponent(path.replace(/[?#].*$/, '').replace(/\/+$/, '').split(/[\\/]/).pop() || '');
}

// Has the worker get (download, take from the cache, or read the picked File of) the
// model's and SAE's files, `{name, url, sha256?, size?}` or `{name, file}` each, check them
// and load them.
async function start(model, sae, layer, zConvention, name, keepBos) {
  ready = false;
  try {
    const builtFrom = window.attnSaes && window.attnSaes.built_from ? window.attnSaes.built_from() : '';
    const asked = new URLSearchParams(location.search).get('backend');
    const loaded =
      await ask('load', { model, sae, layer, zConvention, name, keepBos, builtFrom, asked });
    Object.assign(api, {
      backend: loaded.backend,
      fromCache: loaded.fromCache,
      keptModel: loaded.keptModel,
      checkedAgainstDashboard: loaded.checked,
      lastLoadMs: loaded.loadMs,
    });
    ready = true;
    loadedFor = builtFrom;
    setStatus(`ready: ${loaded.description}`);
  } catch (e) {
    setStatus(String(e && e.message ? e.message : e), true);
    throw e;
  }
}

// The manifests the page was given (`?live=`, repeatable: `attn-saes serve --compare` adds
// the compared runs'), as `{url, manifest}`: the one for the open dashboard is loaded, and
// another when its dashboard is opened (follow).
let manifests = [];
let loading = false;

// The open dashboard's records of the files it was built from (JSON), or ''.
function openBuiltFrom() {
  return window.attnSaes && window.attnSaes.built_from ? window.attnSaes.built_from() : '';
}

// The manifest given whose SAE is the one `builtFrom` (a dashboard's records) names: the
// same sha256 for each file of a name both list (and for the model's), at least one.
function manifestFor(builtFrom) {
  if (!builtFrom) return null;
  const recorded = JSON.parse(builtFrom);
  const same = (files, records) =>
    files.every((f) => records.every((r) => r.name !== f.name || r.sha256 === f.sha256));
  const named = (files, records) => files.some((f) => records.some((r) => r.name === f.name));
  return manifests.find(({ manifest: m }) => named(m.sae, recorded.sae) &&
    same(m.sae, recorded.sae) && same(m.model, recorded.model)) || null;
}

// Loads the files `manifest` (read from `url`) names.
async function startManifest({ url, manifest }) {
  const base = new URL(url, location.href);
  const at = (files) => files.map((f) => ({ ...f, url: new URL(f.url, base).href }));
  loading = true;
  try {
    await start(at(manifest.model), at(manifest.sae), manifest.layer, manifest.z_convention,
                baseName(manifest.model_name), manifest.keep_bos);
  } finally {
    loading = false;
  }
}

// A manifest (`attn-saes serve` writes one: live.json) names the files, their sha256, the
// layer and the hook_z convention. Reads each of `manifestUrls` and loads the one for the
// open dashboard (the first when none is); a compared run's that cannot be read is left out.
async function loadManifests(manifestUrls) {
  manifests = [];
  for (const [i, url] of manifestUrls.entries()) {
    try {
      setStatus(`reading ${url}…`);
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      manifests.push({ url, manifest: await response.json() });
    } catch (e) {
      if (i > 0) continue;
      setStatus(String(e && e.message ? e.message : e), true);
      throw e;
    }
  }
  await startManifest(manifestFor(openBuiltFrom()) || manifests[0]);
}

async function loadManifest(manifestUrl) {
  await loadManifests([manifestUrl]);
}

// With another dashboard open (`builtFrom`, its records): loads its model and SAE if a
// manifest given names them. Whether it started to.
function follow(builtFrom) {
  const found = manifestFor(builtFrom);
  if (!found || loading) return false;
  startManifest(found).catch(() => {});
  return true;
}

// `?model=URL&sae=URL`: the model a .gguf's URL, or a directory's (ending in '/') holding
// config.json, model.safetensors and tokenizer.json; the SAE a directory's URL holding
// sae_config.json and sae.safetensors. No sha256 to check: cached by URL.
async function loadUrls(modelUrl, saeUrl) {
  const url = (path, dir = location.href) => new URL(path, new URL(dir, location.href)).href;
  const inDir = (dir, names) => names.map((name) => ({ name, url: url(name, dir) }));
  const modelFiles = modelUrl.endsWith('/')
    ? inDir(modelUrl, MODEL_NAMES)
    : [{ name: baseName(modelUrl), url: url(modelUrl) }];
  const saeFiles = inDir(saeUrl.endsWith('/') ? saeUrl : `${saeUrl}/`, SAE_NAMES);
  await start(modelFiles, saeFiles, undefined, undefined, baseName(modelUrl));
}

// Files the user picked or dropped: a .gguf (or config.json + model.safetensors +
// tokenizer.json) and sae_config.json + sae.safetensors. The SAE records its layer. The
// worker reads them.
async function loadFiles(fileList) {
  const entry = (f) => ({ name: f.name, file: f });
  const sae = fileList.filter((f) => SAE_NAMES.includes(f.name)).map(entry);
  const model = fileList.filter((f) => !SAE_NAMES.includes(f.name)).map(entry);
  if (!model.length || sae.length !== 2) {
    const why = 'pick the model (a .gguf, or config.json + model.safetensors + ' +
                'tokenizer.json) and its SAE (sae_config.json + sae.safetensors) together';
    setStatus(why, true);
    throw new Error(why);
  }
  await start(model, sae, undefined, undefined, undefined);
}

const api = {
  status: () => status,
  ready: () => ready,
  // The open dashboard's `built_from` when the model and SAE were loaded and checked
  // against it ("" when none was open): the viewer tells when another dashboard is open.
  loadedFor: () => loadedFor,
  analyze: async (text) => {
    if (!ready) throw new Error(status);
    const { json, analysis, ms } = await ask('analyze', { text });
    lastAnalysis = analysis;
    api.lastAnalyzeMs = ms;
    return json;
  },
  attribution: (head, feature, position) =>
    ask('attribution', { head, feature, position, of: lastAnalysis }),
  effect: (head, feature, objective) =>
    ask('effect', { head, feature, objective, of: lastAnalysis }),
  upstream: (ask_) => ask('upstream', { ask: ask_, of: lastAnalysis }),
  rank: (answer) => ask('rank', { answer, of: lastAnalysis }),
  rankPrompts: (lines) => {
    if (!ready) return Promise.reject(new Error(status));
    return ask('rank_prompts', { lines });
  },
  exactPrompts: (lines, features) => {
    if (!ready) return Promise.reject(new Error(status));
    return ask('exact_prompts', { lines, features });
  },
  spreadPrompts: (lines, ask_) => {
    if (!ready) return Promise.reject(new Error(status));
    return ask('spread_prompts', { lines, ask: ask_ });
  },
  steer: (steering) => ask('steer', { steering, of: lastAnalysis }),
  examplesEffect: (head, feature, examples) => {
    if (!ready) return Promise.reject(new Error(status));
    return ask('examples', { head, feature, examples });
  },
  examplesSplit: (head, feature, examples) => {
    if (!ready) return Promise.reject(new Error(status));
    return ask('examples_split', { head, feature, examples });
  },
  loadManifest,
  loadManifests,
  follow,
  loadUrls,
  loadFiles,
  inWorker: true,
  backend: null,
  fromCache: false,
  keptModel: false,
  checkedAgainstDashboard: 0,
  lastLoadMs: null,
  lastAnalyzeMs: null,
};

// Installs window.attnSaesLive; `report(text, isError)` shows progress on the page.
export function install(report) {
  say = report;
  window.attnSaesLive = api;
  return api;
}
