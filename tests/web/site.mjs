// A static site that `attn-saes serve --write-to DIR` wrote, served by a plain file server,
// in headless Chromium (no WebGPU flags: the page's CPU fallback). Run by tests/web_live.rs:
//   node tests/web/site.mjs BASE_URL HEAD,FEATURE PROMPT [OTHER_DASHBOARD]
// Opens BASE_URL/?feature=HEAD,FEATURE (the site's index.html, which opens its viewer on
// the site's dashboard and model), reads the selection the page shows, waits for the model,
// (with its label), runs PROMPT through Your text and prints one JSON object: where the page ended up, the
// selection, the live status, what Your text shows, and the console's errors. Exits 1 on a
// step that fails.
import { chromium } from 'playwright-core';

const [base, feature, prompt, other] = process.argv.slice(2);
const result = { consoleErrors: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking'],
});

async function fail(reason) {
  result.failed = reason;
  console.log(JSON.stringify(result));
  await browser.close();
  process.exit(1);
}

// Polls `probe` in the page (which may be navigating: the first page hands over to the
// viewer) until it returns something truthy.
async function until(page, what, probe, arg, ms = 600000) {
  const start = Date.now();
  for (;;) {
    const value = await page.evaluate(probe, arg).catch(() => null);
    if (value) return value;
    if (Date.now() - start > ms) await fail(`timed out waiting for ${what}`);
    await page.waitForTimeout(100);
  }
}

const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
page.on('pageerror', (e) => result.consoleErrors.push(String(e)));
await page.goto(`${base}/?feature=${feature}`);
const want = `feature ${feature.split(',')[1]} · density`;
result.selection = await until(page, 'the feature', (w) => {
  const s = window.attnSaes ? window.attnSaes.selection() : '';
  return s.includes(w) && s.includes(' · label ') ? s : null;
}, want, 60000);
result.location = await page.evaluate(() => location.pathname + location.search);
result.liveStatus = await until(page, 'the model', () => {
  const s = window.attnSaesLive ? window.attnSaesLive.status() : '';
  return s.includes('ready:') || s.startsWith('failed') ? s : null;
});
if (!result.liveStatus.includes('ready:')) await fail(`the model: ${result.liveStatus}`);
await page.evaluate((p) => window.attnSaes.live_set_prompt(p, true), prompt);
result.shown = await until(page, 'Your text', (p) => {
  const s = window.attnSaes.live_shown();
  const v = s ? JSON.parse(s) : null;
  return v && v.prompt === p && v.status.endsWith('tokens') ? v : null;
}, prompt);
// The compared run opened from the page (attnSaes.open_compared, as a click on one of its
// closest features does), then the run again: each time the page loads that dashboard's
// model and SAE (the site's manifests name both) and analyses the text again with them.
async function openRun(name) {
  await page.evaluate((n) => window.attnSaes.open_compared(n, 0, 0), name);
  return until(page, `${name} open, its model and SAE loaded and the text analysed again`,
    (n) => {
      const open = JSON.parse(window.attnSaes.curves_shown()).open.name;
      const live = window.attnSaesLive;
      const s = window.attnSaes.live_shown();
      const shown = s ? JSON.parse(s) : null;
      if (open !== n || !live.ready() || live.loadedFor() !== window.attnSaes.built_from() ||
          !shown || !shown.status.endsWith('tokens')) return null;
      const matches = window.attnSaes.live_matches_dashboard();
      const selection = window.attnSaes.selection();
      return { open, matches, selection, shown, keptModel: live.keptModel, loadMs: live.lastLoadMs };
    }, name, 120000);
}
const curves = JSON.parse(await page.evaluate(() => window.attnSaes.curves_shown()));
if (curves.compared.length) {
  result.swapped = await openRun(curves.compared[0].name);
  result.back = await openRun(curves.open.name);
}
// A dashboard the site has no model and SAE for, opened as a file: Your text says the
// model loaded is another dashboard's.
if (other) {
  await page.setInputFiles('#file', other);
  result.other = await until(page, 'the other dashboard, and the model not its', (n) => {
    const open = JSON.parse(window.attnSaes.curves_shown()).open.name;
    const matches = window.attnSaes.live_matches_dashboard();
    return open === n && !matches ? { open, matches } : null;
  }, other.split('/').pop(), 30000);
}
console.log(JSON.stringify(result));
await browser.close();
