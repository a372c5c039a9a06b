// The inference worker: a module Web Worker that web/live.js starts when someone loads a
// model. It holds the inference bundle (live/attn_saes_live.js: the LM and SAE in burn, on
// WebGPU or the CPU), downloads the model's and SAE's files with progress into the
// browser's cache (checked against the manifest's sha256 and the open dashboard's
// records), loads them, and analyses texts, all off the page's main thread, so the page
// keeps drawing and answering while it works.
//
// Messages in: {id, op, args}, op one of 'load' | 'analyze' | 'attribution' | 'effect' |
// 'upstream' | 'rank' | 'rank_prompts' | 'exact_prompts' | 'spread_prompts' | 'steer' |
// 'examples', handled one at a time in arrival order. Out: {status, isError} lines while
// working, {progress: {op, done, of}} during a prompt set's requests, and {id, value} or
// {id, error} for each request.
import init, * as lm from './live/attn_saes_live.js';
import { readBody } from './read-body.js';

const CACHE = 'attn-saes-models-v1';
const bundle = init();
// Each analysis is numbered; an attribution or effect names the analysis it is for, and one for an
// earlier text than the last analysed is refused rather than answered from the new text.
let analysis = 0;

function say(text) {
  postMessage({ status: text });
}

// A callback for a long request `op` over a prompt set: {progress: {op, done, of}} out after
// each step (the viewer shows it).
function progressOf(op) {
  return (done, of) => postMessage({ progress: { op, done, of } });
}

// WebGPU when this browser has a hardware adapter; else the CPU, with a notice. A software
// adapter (SwiftShader, or one the browser marks as a fallback) is slower than the CPU
// backend, as on the desktop: `asked` 'webgpu' uses it anyway, 'cpu' never WebGPU.
async function backend(asked) {
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

// SHA-256 of a download, computed once per buffer.
const hashes = new WeakMap();
function sha256(bytes) {
  if (!hashes.has(bytes)) hashes.set(bytes, lm.sha256_hex(bytes));
  return hashes.get(bytes);
}

async function openCache() {
  try { return await caches.open(CACHE); } catch { return null; } // not a secure context
}

// The bytes of `file` ({name, url, sha256?, size?}), from the browser's cache when an
// earlier visit stored them (and the sha256 still matches), else downloaded with progress.
// Stored only once checked.
async function fetchChecked(file) {
  const cache = await openCache();
  const cached = cache ? await cache.match(file.url) : undefined;
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (!file.sha256 || sha256(bytes) === file.sha256) return { bytes, fromCache: true };
    await cache.delete(file.url); // stale: the file changed on the server
  }
  const response = await fetch(file.url);
  if (!response.ok) {
    throw new Error(`${file.url}: HTTP ${response.status} ${response.statusText}`);
  }
  const bytes = await readBody(response, (received, length) => {
    const total = length || file.size || 0;
    const pct = total ? ` (${(100 * received / total).toFixed(0)}%)` : '';
    say(`downloading ${file.name}: ${(received / 1e6).toFixed(1)} MB${pct}`);
  });
  if (file.sha256) {
    say(`checking ${file.name}…`);
    const got = sha256(bytes);
    if (got !== file.sha256) {
      throw new Error(`${file.name}: its sha256 is ${got}, not the manifest's ${file.sha256}: ` +
                      'refused (the file on the server is not the one the manifest names)');
    }
  }
  if (cache) {
    try { await cache.put(file.url, new Response(bytes)); } catch { /* full: fine */ }
  }
  return { bytes, fromCache: false };
}

// `[[name, bytes], ...]` as the bundle takes them, from files the user picked (`file.file`,
// a File) or URLs; and whether every one came from the cache.
async function gather(files) {
  const out = [];
  let fromCache = true;
  for (const f of files) {
    if (f.file) {
      say(`reading ${f.name}…`);
      out.push([f.name, new Uint8Array(await f.file.arrayBuffer())]);
      fromCache = false;
    } else {
      const got = await fetchChecked(f);
      fromCache &&= got.fromCache;
      out.push([f.name, got.bytes]);
    }
  }
  return { files: out, fromCache };
}

// The open dashboard records the files it was built from (`builtFrom`, its JSON, from the
// page): a file of the same name that differs is refused, since its features would not be
// the dashboard's. `modelFiles` and `saeFiles` are `[name, sha256]` each. Returns how many
// files were checked.
function checkAgainstDashboard(builtFrom, modelFiles, saeFiles) {
  if (!builtFrom) return 0;
  const recorded = JSON.parse(builtFrom);
  let checked = 0;
  for (const [files, records] of [[modelFiles, recorded.model], [saeFiles, recorded.sae]]) {
    for (const [name, got] of files) {
      const record = records.find((r) => r.name === name);
      if (!record) continue;
      say(`checking ${name} against the dashboard…`);
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

// The model loaded, as the files the manifest named (names and sha256s), the backend asked
// for and its name: a load of the same model keeps it and reads only the SAE's files.
let loadedModel = null;
// What the backend's choice said when the model was loaded (a kept model keeps it).
let loadedNotice = '';

const ops = {
  // Gets the model's and SAE's files, checks them, and loads them on the backend chosen;
  // the model loaded already when it is the same files (a compared run's SAE on the same
  // model: the page follows the dashboard open).
  async load({ model, sae, layer, zConvention, name, keepBos, builtFrom, asked }) {
    await bundle;
    const named = model.every((f) => f.sha256 && !f.file);
    const key = named ? JSON.stringify([model.map((f) => [f.name, f.sha256]), asked, name]) : null;
    const keep = key !== null && key === loadedModel;
    const m = keep ? { files: [], fromCache: true } : await gather(model);
    const s = await gather(sae);
    const hashed = (files) => files.map(([n, bytes]) => [n, sha256(bytes)]);
    const modelHashes = keep ? model.map((f) => [f.name, f.sha256]) : hashed(m.files);
    const checked = checkAgainstDashboard(builtFrom, modelHashes, hashed(s.files));
    const { backend: which, notice } =
      keep ? { backend: 'kept', notice: loadedNotice } : await backend(asked);
    const note = notice ? `; ${notice}` : '';
    say(keep ? 'loading the SAE (the model stays)…'
             : `loading the model on ${which === 'cpu' ? 'the CPU' : 'WebGPU'}…${note}`);
    const t0 = performance.now();
    loadedModel = null;
    let description;
    try {
      description =
        await lm.load(m.files, s.files, which, layer, zConvention, name, keep, keepBos);
    } catch (e) {
      if (!keep) throw e;
      // The model could not be kept: loaded again with the SAE.
      return ops.load({ model, sae, layer, zConvention, name, keepBos, builtFrom, asked });
    }
    loadedModel = key;
    loadedNotice = notice;
    return {
      description: `${description}${note}`,
      backend: description.split(', on ').pop(),
      loadMs: performance.now() - t0,
      fromCache: m.fromCache && s.fromCache,
      keptModel: keep,
      checked,
    };
  },
  async analyze({ text }) {
    const t0 = performance.now();
    const json = await lm.analyze(text);
    analysis += 1;
    return { json, analysis, ms: performance.now() - t0 };
  },
  async attribution({ head, feature, position, of }) {
    if (of !== analysis) {
      throw new Error('a newer text has been analysed since: pick again on it');
    }
    return lm.attribution(head, feature, position);
  },
  // What removing a feature changes in the last text's predictions (the model run again).
  async effect({ head, feature, objective, of }) {
    if (of !== analysis) {
      throw new Error('a newer text has been analysed since: ask again on it');
    }
    return lm.effect(head, feature, objective ?? undefined);
  },
  // A feature's DFA at a position from a source, split by what wrote the residual stream
  // at the source, or further up through heads (JSON of {feature, at, through}; the model
  // run again to the hooked layer).
  async upstream({ ask, of }) {
    if (of !== analysis) {
      throw new Error('a newer text has been analysed since: ask again on it');
    }
    return lm.upstream(ask);
  },
  // Every feature firing in the last text, ranked by its estimated effect on the loss (or
  // on an answer, JSON of {answer, against?, at?}).
  async rank({ answer, of }) {
    if (of !== analysis) {
      throw new Error('a newer text has been analysed since: ask again on it');
    }
    return lm.rank(answer ?? undefined);
  },
  // Every feature firing in a prompt set's texts (JSON of [{text, answer, against?, at?}]),
  // ranked by its estimated effect on each one's answer, averaged.
  async rank_prompts({ lines }) {
    return lm.rank_prompts(lines, progressOf('rank_prompts'));
  },
  // Each feature listed (JSON of [[head, feature]]) removed from every prompt of the set
  // last ranked over that it fires in, exactly: what the answer loses, averaged.
  async exact_prompts({ lines, features }) {
    return lm.exact_prompts(lines, features, progressOf('exact_prompts'));
  },
  // A feature's DFA taken apart upstream on each of a prompt set's texts (JSON of
  // {feature, from, follow}), and each writer's part over them or the paths followed.
  async spread_prompts({ lines, ask }) {
    return lm.spread_prompts(lines, ask, progressOf('spread_prompts'));
  },
  // The last text continued clean and steered by a feature at a strength.
  async steer({ steering, of }) {
    if (of !== analysis) {
      throw new Error('a newer text has been analysed since: ask again on it');
    }
    return lm.steer(steering);
  },
  // What removing a feature does on its top examples ([[window ids, target], ...] as JSON).
  async examples({ head, feature, examples }) {
    return lm.examples_effect(head, feature, examples);
  },
  // What wrote what a feature reads over its top examples (the same JSON), each one's DFA
  // from its largest source split upstream.
  async examples_split({ head, feature, examples }) {
    return lm.examples_split(head, feature, examples);
  },
};

let queue = Promise.resolve();
self.onmessage = ({ data: { id, op, args } }) => {
  queue = queue
    .then(() => ops[op](args))
    .then((value) => postMessage({ id, value }),
          (e) => postMessage({ id, error: String(e && e.message ? e.message : e) }));
};
