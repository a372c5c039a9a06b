// Your text in headless Chromium, with the model and SAE that `attn-saes serve` serves
// (live.json). Run by tests/web_live.rs, and by hand for timings on the demo run:
//   node tests/web/live.mjs BASE_URL OUT_DIR PROMPT PICK_JSON [--timing-only]
// (--timing-only skips the cache and sha256 steps; LIVE_BACKENDS=cpu runs one backend;
// LIVE_HEADED=1 runs a windowed browser, under xvfb-run.)
// PICK_JSON is [position, head, feature]. For WebGPU (SwiftShader; the page loads the model
// by ?live=live.json) and then for a browser without a WebGPU adapter (the CPU fallback; by
// ?model=&sae=), it runs the prompt, picks the (position, head, feature), and reads what
// the Your text view shows (attnSaes.live_shown()), with LIVE_UPSTREAM (a source) the
// pick's DFA from it split upstream (with LIVE_FOLLOW, followed up through the strongest
// heads; and with LIVE_THROUGH, JSON of steps, further up
// through those heads), and with LIVE_STEER (a steering's JSON) continues the
// text steered that way. Then: a second visit reads the model from the browser's cache,
// and a manifest whose sha256 is wrong is refused. Prints one JSON object; exits 1 on a
// step that fails.
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';

const [base, outDir, prompt, pickJson, flag] = process.argv.slice(2);
const pick = JSON.parse(pickJson);
const timingOnly = flag === '--timing-only';
const result = { runs: {}, consoleErrors: [] };
const common = ['--no-sandbox', '--disable-gpu-sandbox', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync'];
// WebGPU on SwiftShader with WebGL2 still on (DESIGN.md's Vulkan/ANGLE flags turn WebGL2
// off, and the viewer draws with it).
const webgpuFlags = ['--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader'];
let browser = null;

async function fail(reason) {
  result.failed = reason;
  console.log(JSON.stringify(result));
  if (browser) await browser.close();
  process.exit(1);
}

async function launch(flags) {
  if (browser) await browser.close();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [...common, ...flags],
    headless: !process.env.LIVE_HEADED, // LIVE_HEADED=1 under Xvfb (xvfb-run) for timings
  });
  return browser.newContext({ viewport: { width: 1400, height: 900 } });
}

// Polls `predicate` until it gives something; past `ms` fails the run, or with `soft`
// gives null.
async function waitFor(page, what, predicate, ms = 600000, soft = false) {
  const start = Date.now();
  let told = start;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() - told > 10000) {
      told = Date.now();
      const live = await page.evaluate(() => window.attnSaesLive && window.attnSaesLive.status());
      console.error(`${((told - start) / 1000).toFixed(0)} s waiting for ${what}; live status: ${live}`);
    }
    if (Date.now() - start > ms) {
      if (soft) return null;
      const live = await page.evaluate(() => window.attnSaesLive && window.attnSaesLive.status());
      await fail(`timed out waiting for ${what}; live status: ${live}`);
    }
    await page.waitForTimeout(50);
  }
}

const liveStatus = (page) => page.evaluate(() => window.attnSaesLive ? window.attnSaesLive.status() : '');
const shown = async (page) => {
  const s = await page.evaluate(() => window.attnSaes ? window.attnSaes.live_shown() : '');
  return s ? JSON.parse(s) : null;
};

// Opens the page, waits for the model, runs the prompt and the pick; returns what it saw.
async function session(context, name, query) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(`${name}: ${m.text()}`); });
  page.on('pageerror', (e) => result.consoleErrors.push(`${name}: ${e}`));
  if (process.env.LIVE_DEBUG) page.on('console', (m) => console.error(`${name} console: ${m.text()}`));
  // The page's main thread: every task over 50 ms it runs (Chromium's long tasks), to see
  // whether the page could answer input while the model loads and analyses.
  await page.addInitScript(() => {
    window.longTasks = [];
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) window.longTasks.push(e.duration);
    }).observe({ type: 'longtask', buffered: true });
  });
  const longest = () => page.evaluate(() => Math.max(0, ...window.longTasks.splice(0)));
  const run = {};
  const t0 = Date.now();
  await page.goto(`${base}/?url=dashboard.safetensors${query}`);
  await waitFor(page, `${name}: the model`, async () => {
    const s = await liveStatus(page);
    if (s.startsWith('failed')) await fail(`${name}: ${s}`);
    return s.includes('ready:') ? s : null;
  });
  run.loadMs = Date.now() - t0;
  run.status = await liveStatus(page);
  run.fromCache = await page.evaluate(() => window.attnSaesLive.fromCache);
  run.bundleLoadMs = await page.evaluate(() => window.attnSaesLive.lastLoadMs);
  run.longestMainTaskLoadingMs = await longest();
  // Did this page fetch the inference bundle's wasm itself (to run it on its main thread),
  // rather than a worker? A worker's fetch of it is in the worker's resource timeline, not
  // the page's (Chromium lists a worker's module scripts in the page's, its fetches not).
  run.bundleFetchedByPage = await page.evaluate(() => performance.getEntriesByType('resource')
    .map((e) => e.name).filter((n) => n.includes('attn_saes_live_bg.wasm')));
  // Run, timed from the request to the features drawn in the view (live_shown is set
  // after the frame that drew them). Twice: the first includes shader compilation. The
  // first as a user does it: the Your text tab, the text box, typing, Run (where the
  // viewer draws them in a 1400 x 900 page); the second through the page's function.
  for (const key of ['first', 'second']) {
    let start;
    const before = await page.evaluate(() => window.attnSaesLive.lastAnalyzeMs);
    const features = async () => {
      const s = await shown(page);
      const after = await page.evaluate(() => window.attnSaesLive.lastAnalyzeMs);
      return s && s.prompt === prompt && after !== before && s.status.endsWith('tokens') ? s : null;
    };
    let seen = null;
    if (key === 'first') {
      // As a user does it. A click that lands while the page is still settling (seen
      // once in CI: the model ready, no run for 600 s) is tried again, the box's text
      // selected and typed over, at most three times; the attempts are reported.
      for (let attempt = 1; !seen; attempt++) {
        if (attempt > 3) await fail(`${name}: no run after three tries of the clicks`);
        run.firstAttempts = attempt;
        await page.mouse.click(275, 47); // the Your text tab
        await waitFor(page, `${name}: the Your text view`, () => page.evaluate(
          () => window.attnSaes.selection().startsWith('view Text')), 20000, true);
        await page.waitForTimeout(300);
        await page.mouse.click(700, 150); // the text box
        await page.waitForTimeout(300);
        await page.keyboard.press('Control+A');
        await page.keyboard.type(prompt);
        await page.waitForTimeout(300);
        await longest(); // from here on: the run's
        start = await page.evaluate(() => performance.now());
        await page.mouse.click(27, 190); // Run
        seen = await waitFor(page, `${name}: the features`, features, 120000, attempt < 3);
      }
    } else {
      await longest();
      start = await page.evaluate(() => performance.now());
      await page.evaluate((p) => window.attnSaes.live_set_prompt(p, true), prompt);
      seen = await waitFor(page, `${name}: the features`, features);
    }
    run[`${key}Ms`] = (await page.evaluate(() => performance.now())) - start;
    run[`${key}AnalyzeMs`] = await page.evaluate(() => window.attnSaesLive.lastAnalyzeMs);
    run[`${key}LongestMainTaskMs`] = await longest();
    run.tokens = seen.tokens;
  }
  await page.evaluate(([p, h, f]) => window.attnSaes.live_pick(p, h, f), pick);
  const seen = await waitFor(page, `${name}: the pick`, async () => {
    const s = await shown(page);
    return s && s.pick && s.pick.position === pick[0] && s.pick.dfa.length ? s : null;
  });
  run.pick = seen.pick;
  // What removing the picked feature changes (Your text's "Remove it and run again").
  await page.evaluate(([, h, f]) => window.attnSaes.live_effect(h, f), pick);
  const withEffect = await waitFor(page, `${name}: the effect`, async () => {
    const s = await shown(page);
    return s && s.effect_status !== 'computing' && s.effect_status !== 'none' ? s : null;
  });
  run.effectStatus = withEffect.effect_status;
  run.effect = withEffect.effect;
  // LIVE_UPSTREAM (a source position): the picked feature's DFA from it, split by what
  // wrote the residual stream there (Your text's "Take it apart").
  if (process.env.LIVE_UPSTREAM) {
    const source = Number(process.env.LIVE_UPSTREAM);
    await page.evaluate(([[p, h, f], q]) => window.attnSaes.live_upstream(h, f, p, q), [pick, source]);
    const withUpstream = await waitFor(page, `${name}: the upstream split`, async () => {
      const s = await shown(page);
      return s && s.upstream_status !== 'computing' && s.upstream_status !== 'none' ? s : null;
    });
    run.upstreamStatus = withUpstream.upstream_status;
    run.upstream = withUpstream.upstream;
    // LIVE_THROUGH (JSON of steps): the same split taken further up through those heads.
    if (process.env.LIVE_THROUGH) {
      const through = process.env.LIVE_THROUGH;
      await page.evaluate(([[p, h, f], q, t]) => window.attnSaes.live_upstream(h, f, p, q, t),
                          [pick, source, through]);
      const further = await waitFor(page, `${name}: the split further up`, async () => {
        const s = await shown(page);
        const done = s && (s.upstream_status.startsWith('failed')
          || (s.upstream_status === 'ready' && s.upstream.through));
        return done ? s : null;
      });
      run.throughStatus = further.upstream_status;
      run.through = further.upstream;
      // Steps that are not a list of steps are refused with a message.
      run.throughRefused = await page.evaluate(([[p, h, f], q]) => {
        try {
          window.attnSaes.live_upstream(h, f, p, q, '{"layer": 0}');
          return '';
        } catch (e) {
          return String(e && e.message ? e.message : e);
        }
      }, [pick, source]);
    }
    // LIVE_FOLLOW: from the same source, followed up through the strongest heads (Your
    // text's "Follow the strongest head"); the CLI's split there takes a step, so the
    // answer is the one with `followed`.
    if (process.env.LIVE_FOLLOW) {
      await page.evaluate(([[p, h, f], q]) => window.attnSaes.live_upstream(h, f, p, q, null, true),
                          [pick, source]);
      const followed = await waitFor(page, `${name}: the split followed up`, async () => {
        const s = await shown(page);
        const done = s && (s.upstream_status.startsWith('failed')
          || (s.upstream_status === 'ready' && s.upstream.followed));
        return done ? s : null;
      });
      run.followStatus = followed.upstream_status;
      run.followed = followed.upstream;
    }
  }
  // Which features matter (Your text's "Rank the features").
  await page.evaluate(() => window.attnSaes.live_rank());
  const withRanking = await waitFor(page, `${name}: the ranking`, async () => {
    const s = await shown(page);
    return s && s.ranking_status !== 'computing' && s.ranking_status !== 'none' ? s : null;
  });
  run.rankingStatus = withRanking.ranking_status;
  run.ranking = withRanking.ranking;
  // LIVE_ANSWER (JSON of {answer, against?, at?}): ranked by that answer instead, and the
  // picked feature's effect asked again, now with the answer's exact change.
  if (process.env.LIVE_ANSWER) {
    await page.evaluate((a) => window.attnSaes.live_rank(a), process.env.LIVE_ANSWER);
    const byAnswer = await waitFor(page, `${name}: the ranking by the answer`, async () => {
      const s = await shown(page);
      const done = s && (s.ranking_status.startsWith('failed')
        || (s.ranking_status === 'ready' && s.ranking.objective.kind === 'answer'));
      return done ? s : null;
    });
    run.answerRankingStatus = byAnswer.ranking_status;
    run.answerRanking = byAnswer.ranking;
    run.answerRankBy = byAnswer.rank_by;
    await page.evaluate(([, h, f]) => window.attnSaes.live_effect(h, f), pick);
    const answerEffect = await waitFor(page, `${name}: the effect on the answer`, async () => {
      const s = await shown(page);
      const done = s && (s.effect_status.startsWith('failed')
        || (s.effect_status === 'ready' && s.effect.objective));
      return done ? s : null;
    });
    run.answerEffectStatus = answerEffect.effect_status;
    run.answerEffect = answerEffect.effect;
  }
  // LIVE_PROMPTS (a prompt set's JSON lines): the features ranked over it (Your text's
  // "Rank over the set"), and lines that are not prompts refused, naming the line.
  if (process.env.LIVE_PROMPTS) {
    await page.evaluate((l) => window.attnSaes.live_rank_prompts(l), process.env.LIVE_PROMPTS);
    const overSet = await waitFor(page, `${name}: the ranking over the prompt set`, async () => {
      const s = await shown(page);
      return s && s.prompts_status !== 'computing' && s.prompts_status !== 'none' ? s : null;
    });
    run.promptsStatus = overSet.prompts_status;
    run.prompts = overSet.prompts;
    run.promptsProgress = overSet.prompts_progress;
    // The listed features' exact changes (Your text's "Remove each for the exact change").
    await page.evaluate(() => window.attnSaes.live_exact_prompts());
    const exact = await waitFor(page, `${name}: the exact changes over the prompt set`, async () => {
      const s = await shown(page);
      return s && ['ready', 'failed'].some((x) => s.prompts_exact_status.startsWith(x)) ? s : null;
    });
    run.exactStatus = exact.prompts_exact_status;
    run.exact = exact.prompts_exact;
    run.exactProgress = exact.prompts_exact_progress;
    run.promptsRefused = await page.evaluate(() => {
      try {
        window.attnSaes.live_rank_prompts('{"text": "a", "answer": " a"}\n{"answer": " a"}');
        return '';
      } catch (e) {
        return String(e && e.message ? e.message : e);
      }
    });
  }
  // LIVE_SPREAD (JSON of {head, feature, from}), with LIVE_PROMPTS: that feature's DFA taken
  // apart upstream on each prompt of the set (Your text's "Take it apart over the set"), and
  // a source rule that is none refused.
  if (process.env.LIVE_SPREAD) {
    const { head, feature, from } = JSON.parse(process.env.LIVE_SPREAD);
    await page.evaluate(([l, h, f, s]) => window.attnSaes.live_spread_prompts(l, h, f, s, false),
      [process.env.LIVE_PROMPTS, head, feature, from]);
    const spread = await waitFor(page, `${name}: the spread over the prompt set`, async () => {
      const s = await shown(page);
      return s && s.spread_status !== 'computing' && s.spread_status !== 'none' ? s : null;
    });
    run.spreadStatus = spread.spread_status;
    run.spread = spread.spread;
    run.spreadProgress = spread.spread_progress;
    run.spreadRefused = await page.evaluate((l) => {
      try {
        window.attnSaes.live_spread_prompts(l, 0, 0, 'biggest', false);
        return '';
      } catch (e) {
        return String(e && e.message ? e.message : e);
      }
    }, process.env.LIVE_PROMPTS);
  }
  // LIVE_PROMPT_FILES (JSON of [a prompt set's .jsonl, one with a line that is no prompt]):
  // each picked with the page's prompt-file input (what Your text's "Open a prompt file…"
  // opens): its text in the prompt set's box, and the page's status line saying how many
  // prompts, or naming the bad line.
  if (process.env.LIVE_PROMPT_FILES) {
    run.promptFiles = [];
    for (const file of JSON.parse(process.env.LIVE_PROMPT_FILES)) {
      await page.setInputFiles('#prompt-file', file);
      // The status line says it at once; the box has it from the viewer's next frame.
      const text = readFileSync(file, 'utf8');
      const opened = await waitFor(page, `${name}: ${file} in the prompt set`, async () => {
        const s = await shown(page);
        const said = await page.evaluate(() => {
          const el = document.getElementById('status');
          return { text: el.textContent, error: el.className === 'error' };
        });
        const done = s && s.prompt_set === text && said.text.includes(file.split('/').pop());
        return done ? { set: s.prompt_set, said } : null;
      }, 30000);
      run.promptFiles.push(opened);
    }
  }
  // The text continued clean and steered by the picked feature (Your text's "Continue the
  // text"), held at activation 2.5 (clamped) for 6 new tokens, sampled at temperature 0.8
  // with seed 7.
  await page.evaluate(([, h, f]) => window.attnSaes.live_steer(h, f, 2.5, 6, 0.8, 7, true), pick);
  const withSteer = await waitFor(page, `${name}: the steered continuation`, async () => {
    const s = await shown(page);
    return s && s.steer_status !== 'computing' && s.steer_status !== 'none' ? s : null;
  });
  run.steerStatus = withSteer.steer_status;
  run.steer = withSteer.steer;
  // LIVE_STEER (JSON of a steering with every option: attnSaes.live_steer_json): the same
  // text continued that way; and a JSON that is not a steering, refused.
  if (process.env.LIVE_STEER) {
    run.steerJsonRefused = await page.evaluate(() => {
      try {
        window.attnSaes.live_steer_json('{"head": 0}');
        return 'accepted';
      } catch (e) {
        return String(e.message || e);
      }
    });
    await page.evaluate((j) => window.attnSaes.live_steer_json(j), process.env.LIVE_STEER);
    const asked = JSON.parse(process.env.LIVE_STEER);
    const withAll = await waitFor(page, `${name}: the continuation steered with every option`, async () => {
      const s = await shown(page);
      // (until the new answer replaces the first steering's: it has the new top_k)
      const done = s && (s.steer_status.startsWith('failed')
        || (s.steer_status === 'ready' && s.steer.top_k === asked.top_k));
      return done ? s : null;
    });
    run.steerAllStatus = withAll.steer_status;
    run.steerAll = withAll.steer;
  }
  // The picked feature's effect on its top examples in the open dashboard (Features'
  // "Remove it on its top examples").
  await page.evaluate(([, h, f]) => window.attnSaes.live_examples_effect(h, f), pick);
  const examples = await waitFor(page, `${name}: the effect on top examples`, async () => {
    const s = JSON.parse(await page.evaluate(() => window.attnSaes.examples_shown()));
    return s.status !== 'computing' && s.status !== 'none' ? s : null;
  });
  run.examplesStatus = examples.status;
  run.examples = examples.effect;
  // What wrote what it reads over those examples, asked of the model (Features' "Take its
  // top examples apart", for a file built without the split).
  const splitStart = Date.now();
  await page.evaluate(([, h, f]) => window.attnSaes.live_examples_split(h, f), pick);
  const split = await waitFor(page, `${name}: the split over top examples`, async () => {
    const s = JSON.parse(await page.evaluate(() => window.attnSaes.examples_split_shown()));
    return s.status !== 'computing' && s.status !== 'none' ? s : null;
  });
  run.splitMs = Date.now() - splitStart;
  run.splitStatus = split.status;
  run.split = split.split;
  // An attribution asked for while a newer text is being analysed is refused (it would be
  // the new text's), and one asked after that analysis is answered from it.
  run.attributionOrder = await page.evaluate(async () => {
    const live = window.attnSaesLive;
    const analysed = live.analyze('A different text.');
    const stale = await live.attribution(0, 0, 0).then(() => 'answered', (e) => e.message);
    const tokens = JSON.parse(await analysed);
    const fresh = JSON.parse(await live.attribution(0, 0, tokens.ids.length - 1));
    return { stale, tokens: tokens.ids.length, freshDfa: fresh.dfa.length };
  });
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${outDir}/live-${name}.png` });
  await page.close();
  return run;
}

const manifest0 = await (await fetch(`${base}/live.json`)).json();
// LIVE_BACKENDS=cpu (or webgpu) runs one only (timings by hand).
const backends = (process.env.LIVE_BACKENDS || 'webgpu,cpu').split(',');
let context = null;
// 1. WebGPU, then a second visit in the same browser: the model comes from its cache.
if (backends.includes('webgpu')) {
  context = await launch(webgpuFlags);
  result.runs.webgpu = await session(context, 'webgpu', '&live=live.json&backend=webgpu');
}
if (!timingOnly) {
  const again = await context.newPage();
  await again.goto(`${base}/?url=dashboard.safetensors&live=live.json`);
  await waitFor(again, 'the second visit', async () => {
    const s = await liveStatus(again);
    return s.includes('ready:') || s.startsWith('failed') ? s : null;
  });
  result.secondVisitFromCache = await again.evaluate(() => window.attnSaesLive.fromCache);
  // Without ?backend=webgpu, SwiftShader (a software adapter) is passed over for the CPU.
  result.softwareAdapterStatus = await liveStatus(again);
  // 2. A manifest whose model sha256 is wrong: refused, with a message.
  await again.route('**/live.json', async (route) => {
    const response = await route.fetch();
    const manifest = await response.json();
    manifest.model[0].sha256 = '0'.repeat(64);
    await route.fulfill({ response, json: manifest });
  });
  await again.goto(`${base}/?url=dashboard.safetensors&live=live.json`);
  result.wrongShaStatus = await waitFor(again, 'the refusal', async () => {
    const s = await liveStatus(again);
    return s.startsWith('failed') || s.includes('ready:') ? s : null;
  });
  result.wrongShaShown = await again.textContent('#live-status');
  await again.close();
  // 3. A model file that is not the one the dashboard was built from, with a manifest that
  // names no sha256 (so only the dashboard's record can catch it): refused.
  const other = await context.newPage();
  await other.route('**/live.json', async (route) => {
    const response = await route.fetch();
    const manifest = await response.json();
    for (const f of [...manifest.model, ...manifest.sae]) delete f.sha256;
    await route.fulfill({ response, json: manifest });
  });
  const target = manifest0.model[0];
  await other.route(`**/live/model/${target.name}`, async (route) => {
    const response = await route.fetch();
    const bytes = Buffer.from(await response.body());
    bytes[bytes.length - 1] ^= 1; // one bit
    await route.fulfill({ response, body: bytes });
  });
  await other.goto(`${base}/?url=dashboard.safetensors&live=live.json&backend=cpu`);
  result.notTheDashboardsStatus = await waitFor(other, 'the second refusal', async () => {
    const s = await liveStatus(other);
    return s.startsWith('failed') || s.includes('ready:') ? s : null;
  });
  await other.close();
  // And the honest files pass that check (counted).
  const honest = await context.newPage();
  await honest.goto(`${base}/?url=dashboard.safetensors&live=live.json&backend=cpu`);
  await waitFor(honest, 'the honest files', async () => {
    const s = await liveStatus(honest);
    return s.startsWith('failed') || s.includes('ready:') ? s : null;
  });
  result.checkedAgainstDashboard = await honest.evaluate(() => window.attnSaesLive.checkedAgainstDashboard);
  await honest.close();
  // A worker that cannot start (its script missing here; a browser without module
  // workers alike): an error line, not a page waiting for ever.
  const noWorker = await context.newPage();
  await noWorker.route('**/live-worker.js', (route) => route.fulfill({ status: 404, body: '' }));
  await noWorker.goto(`${base}/?url=dashboard.safetensors&live=live.json&backend=cpu`);
  result.noWorkerStatus = await waitFor(noWorker, 'the worker failure', async () => {
    const s = await liveStatus(noWorker);
    return s.startsWith('failed') || s.includes('ready:') ? s : null;
  });
  await noWorker.close();
  // 4. The same files picked with Model + SAE… (LIVE_FILES: their paths, as JSON).
  if (process.env.LIVE_FILES) {
    const picked = await context.newPage();
    await picked.goto(`${base}/?url=dashboard.safetensors&backend=cpu`);
    await waitFor(picked, 'the dashboard', async () => (await picked.evaluate(() => window.attnSaes && window.attnSaes.built_from())) || null);
    await picked.setInputFiles('#live-files', JSON.parse(process.env.LIVE_FILES));
    result.pickedStatus = await waitFor(picked, 'the picked files', async () => {
      const s = await liveStatus(picked);
      return s.startsWith('failed') || s.includes('ready:') ? s : null;
    });
    result.pickedChecked = await picked.evaluate(() => window.attnSaesLive.checkedAgainstDashboard);
    await picked.close();
  }
}

// 5. Headless Chromium's defaults: navigator.gpu exists but gives no adapter, so WebGPU does
// not start and the page falls back to the CPU (WebGL2 draws the viewer).
if (backends.includes('cpu')) {
  // By ?model= and ?sae= this time (no manifest: the SAE records its layer): the .gguf's
  // URL, or the model directory's.
  const model = manifest0.model.length === 1 ? `live/model/${manifest0.model[0].name}` : 'live/model/';
  context = await launch([]);
  result.runs.cpu = await session(context, 'cpu', `&model=${model}&sae=live/sae/`);
}
await browser.close();
console.log(JSON.stringify(result));
