// Your text in the page: loads the inference bundle (live/attn_saes_live.js: the LM and SAE
// in burn, on WebGPU or the CPU) only when someone loads a model, downloads the model and
// SAE with progress into the browser's cache (checked against the manifest's sha256), and
// answers the viewer through window.attnSaesLive:
//   status() -> a line; ready() -> bool; analyze(text) -> Promise<JSON of the tokens and
//   their features>; attribution(head, feature, position) -> JSON of a DFA;
//   loadManifest(url), loadUrls(model, sae), loadFiles(files) -> Promise; backend,
//   fromCache, checkedAgainstDashboard (files checked against the open dashboard's
//   records), lastLoadMs, lastAnalyzeMs.

const CACHE = 'attn-saes-models-v1';
// Names that make a model or an SAE (anything else dropped is a dashboard).
const SAE_NAMES = ['sae_config.json', 'sae.safetensors'];
const MODEL_NAMES = ['config.json', 'model.safetensors', 'tokenizer.json'];

export function isLiveFile(name) {
  return name.endsWith('.gguf') || SAE_NAMES.includes(name) || MODEL_NAMES.includes(name);
}

let bundle = null;
let status = 'no model loaded: open a model and its SAE (Model + SAE…), or add ?live=live.json';
let ready = false;
let say = () => {};

function setStatus(text, isError = false) {
  status = isError ? `failed: ${text}` : text;
  say(status, isError);
}

async function getBundle() {
  if (!bundle) {
    setStatus('loading the inference bundle…');
    const m = await import('./live/attn_saes_live.js');
    await m.default();
    bundle = m;
  }
  return bundle;
}

// WebGPU when the browser has a hardware adapter; else the CPU, with a notice. A software
// adapter (SwiftShader, or one the browser marks as a fallback) is slower than the CPU
// backend, as on the desktop: ?backend=webgpu uses it anyway, ?backend=cpu never WebGPU.
async function backend() {
  const asked = new URLSearchParams(location.search).get('backend');
  const cpu = (notice) => ({ backend: 'cpu', notice });
  if (asked === 'cpu') return cpu('');
  if (!navigator.gpu) return cpu('this browser has no WebGPU, so the CPU runs it (slower)');
  if (asked !== 'webgpu') {
    let adapter = null;
    try { adapter = await navigator.gpu.requestAdapter(); } catch { /* none */ }
    if (!adapter) return cpu('no WebGPU adapter here, so the CPU runs it (slower)');
    const info = adapter.info || {};
    const what = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
    if (adapter.isFallbackAdapter || info.isFallbackAdapter || /swiftshader/i.test(what)) {
      return cpu(`WebGPU here is a software adapter (${what || 'fallback'}), slower than the ` +
                 'CPU (?backend=webgpu uses it anyway)');
    }
  }
  return { backend: 'webgpu', notice: '' };
}

// A response's body, read in chunks: `onProgress(received, total)` after each (total 0 when
// unknown); returning false from it cancels the read (the result is then null). Shared with
// the page's dashboard download.
export async function readBody(response, onProgress) {
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    if (onProgress(received, total) === false) {
      reader.cancel();
      return null;
    }
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const c of chunks) { bytes.set(c, at); at += c.length; }
  return bytes;
}

async function openCache() {
  try { return await caches.open(CACHE); } catch { return null; } // not a secure context
}

// The bytes at `url`, from the browser's cache when an earlier visit stored them (and the
// sha256 still matches), else downloaded with progress. Stored only once checked.
async function fetchChecked(url, file, lm) {
  const cache = await openCache();
  let cached = cache ? await cache.match(url) : undefined;
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (!file.sha256 || sha256(lm, bytes) === file.sha256) {
      return { bytes, fromCache: true };
    }
    await cache.delete(url); // stale: the file changed on the server
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status} ${response.statusText}`);
  const bytes = await readBody(response, (received, length) => {
    const total = length || file.size || 0;
    const pct = total ? ` (${(100 * received / total).toFixed(0)}%)` : '';
    setStatus(`downloading ${file.name}: ${(received / 1e6).toFixed(1)} MB${pct}`);
  });
  if (file.sha256) {
    setStatus(`checking ${file.name}…`);
    const got = sha256(lm, bytes);
    if (got !== file.sha256) {
      throw new Error(`${file.name}: its sha256 is ${got}, not the manifest's ${file.sha256}: ` +
                      'refused (the file on the server is not the one the manifest names)');
    }
  }
  if (cache) {
    try { await cache.put(url, new Response(bytes)); } catch { /* full: fine */ }
  }
  return { bytes, fromCache: false };
}

// Downloads (or takes from the cache) the model's and SAE's files, `{name, url, sha256?,
// size?}` each, and starts the model on them.
async function fetchAndStart(modelFiles, saeFiles, layer, zConvention, name) {
  const lm = await getBundle();
  let cachedAll = true;
  const fetchAll = async (files) => {
    const out = [];
    for (const f of files) {
      const { bytes, fromCache } = await fetchChecked(f.url, f, lm);
      cachedAll &&= fromCache;
      out.push([f.name, bytes]); // as the bundle takes them
    }
    return out;
  };
  const model = await fetchAll(modelFiles);
  const sae = await fetchAll(saeFiles);
  api.fromCache = cachedAll;
  await start(model, sae, layer, zConvention, name);
}

// The last part of a path or URL (a directory's name, a file's).
function baseName(path) {
  return decodeURIComponent(path.replace(/[?#].*$/, '').replace(/\/+$/, '').split(/[\\/]/).pop() || '');
}

// SHA-256 of a download, computed once per buffer.
const hashes = new WeakMap();
function sha256(lm, bytes) {
  if (!hashes.has(bytes)) hashes.set(bytes, lm.sha256_hex(bytes));
  return hashes.get(bytes);
}

// The open dashboard records the files it was built from (attnSaes.built_from()): a file of
// the same name that differs is refused, since its features would not be the dashboard's.
function checkAgainstDashboard(lm, modelFiles, saeFiles) {
  const json = window.attnSaes && window.attnSaes.built_from ? window.attnSaes.built_from() : '';
  if (!json) return 0;
  const recorded = JSON.parse(json);
  let checked = 0;
  for (const [files, records] of [[modelFiles, recorded.model], [saeFiles, recorded.sae]]) {
    for (const [name, bytes] of files) {
      const record = records.find((r) => r.name === name);
      if (!record) continue;
      setStatus(`checking ${name} against the dashboard…`);
      const got = sha256(lm, bytes);
      if (got !== record.sha256) {
        throw new Error(`${name} is not the file the open dashboard was built from (its sha256 ` +
                        `is ${got}, the dashboard records ${record.sha256}): refused, since its ` +
                        'features would not be the dashboard\'s');
      }
      checked += 1;
    }
  }
  return checked;
}

async function start(modelFiles, saeFiles, layer, zConvention, name) {
  const lm = await getBundle();
  api.checkedAgainstDashboard = checkAgainstDashboard(lm, modelFiles, saeFiles);
  const { backend: which, notice } = await backend();
  const note = notice ? `; ${notice}` : '';
  setStatus(`loading the model on ${which === 'cpu' ? 'the CPU' : 'WebGPU'}…${note}`);
  const t0 = performance.now();
  const description = await lm.load(modelFiles, saeFiles, which, layer, zConvention, name);
  api.lastLoadMs = performance.now() - t0;
  api.backend = description.split(', on ').pop();
  ready = true;
  setStatus(`ready: ${description}${note}`);
}

async function guarded(work) {
  ready = false;
  try {
    await work();
  } catch (e) {
    setStatus(String(e && e.message ? e.message : e), true);
    throw e;
  }
}

// A manifest (`attn-saes serve` writes one: live.json) names the files, their sha256, the
// layer and the hook_z convention.
async function loadManifest(manifestUrl) {
  await guarded(async () => {
    setStatus(`reading ${manifestUrl}…`);
    const response = await fetch(manifestUrl);
    if (!response.ok) throw new Error(`${manifestUrl}: HTTP ${response.status}`);
    const manifest = await response.json();
    const base = new URL(manifestUrl, location.href);
    const at = (files) => files.map((f) => ({ ...f, url: new URL(f.url, base).href }));
    await fetchAndStart(at(manifest.model), at(manifest.sae), manifest.layer,
                        manifest.z_convention, baseName(manifest.model_name));
  });
}

// `?model=URL&sae=URL`: the model a .gguf's URL, or a directory's (ending in '/') holding
// config.json, model.safetensors and tokenizer.json; the SAE a directory's URL holding
// sae_config.json and sae.safetensors. No sha256 to check: cached by URL.
async function loadUrls(modelUrl, saeUrl) {
  await guarded(async () => {
    const url = (path, dir = location.href) => new URL(path, new URL(dir, location.href)).href;
    const inDir = (dir, names) => names.map((name) => ({ name, url: url(name, dir) }));
    const modelFiles = modelUrl.endsWith('/')
      ? inDir(modelUrl, MODEL_NAMES)
      : [{ name: baseName(modelUrl), url: url(modelUrl) }];
    const saeFiles = inDir(saeUrl.endsWith('/') ? saeUrl : `${saeUrl}/`, SAE_NAMES);
    await fetchAndStart(modelFiles, saeFiles, undefined, undefined, baseName(modelUrl));
  });
}

// Files the user picked or dropped: a .gguf (or config.json + model.safetensors +
// tokenizer.json) and sae_config.json + sae.safetensors. The SAE records its layer.
async function loadFiles(fileList) {
  await guarded(async () => {
    const model = [];
    const sae = [];
    for (const f of fileList) {
      setStatus(`reading ${f.name}…`);
      const entry = [f.name, new Uint8Array(await f.arrayBuffer())];
      (SAE_NAMES.includes(f.name) ? sae : model).push(entry);
    }
    if (!model.length || sae.length !== 2) {
      throw new Error('pick the model (a .gguf, or config.json + model.safetensors + ' +
                      'tokenizer.json) and its SAE (sae_config.json + sae.safetensors) together');
    }
    api.fromCache = false;
    await start(model, sae, undefined, undefined);
  });
}

const api = {
  status: () => status,
  ready: () => ready,
  analyze: async (text) => {
    if (!ready) throw new Error(status);
    const t0 = performance.now();
    const json = await bundle.analyze(text);
    api.lastAnalyzeMs = performance.now() - t0;
    return json;
  },
  attribution: (head, feature, position) => bundle.attribution(head, feature, position),
  loadManifest,
  loadUrls,
  loadFiles,
  backend: null,
  fromCache: false,
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
