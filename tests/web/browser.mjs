// Drives the web viewer served by `attn-saes serve` in headless Chromium (Debian's
// /usr/bin/chromium, or $CHROMIUM) with playwright-core. Run by tests/web_viewer.rs:
//   node tests/web/browser.mjs BASE_URL DASHBOARD_FILE CORRUPT_FILE OUT_DIR COMPARE_FILE SERVED_URL
// (SERVED_URL: the URL `serve --compare` printed, which names the compared dashboards).
// Prints one JSON object with what it saw; screenshots go to OUT_DIR. Exits 1 on a step
// that fails (with the reason), so the Rust test can assert on both.
import { chromium } from 'playwright-core';

const [base, dashboardFile, corruptFile, outDir, compareFile, servedUrl] = process.argv.slice(2);
const result = { consoleErrors: [], steps: {} };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu-sandbox', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function fail(reason) {
  result.failed = reason;
  console.log(JSON.stringify(result));
  await browser.close();
  process.exit(1);
}

const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
page.on('pageerror', (e) => result.consoleErrors.push(String(e)));

const status = () => page.textContent('#status');
// The status line's text if it is an error (text and class read together), on `p`.
const errorStatus = (p = page) => p.evaluate(() => {
  const el = document.getElementById('status');
  return el.className === 'error' ? el.textContent : null;
});
const selection = () => page.evaluate(() => window.attnSaes ? window.attnSaes.selection() : '');
async function waitFor(what, predicate, ms = 60000) {
  const start = Date.now();
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() - start > ms) await fail(`timed out waiting for ${what}; status: ${await status()}`);
    await page.waitForTimeout(100);
  }
}

// 1. ?url=: the page fetches the dashboard and shows the Features view.
const t0 = Date.now();
await page.goto(`${base}/?url=dashboard.safetensors`);
result.steps.urlStatus = await waitFor('the ?url= file', async () => {
  const s = await status();
  return s.includes('heads x') ? s : null;
});
result.steps.initialSelection = await waitFor('the first feature', async () => {
  const s = await selection();
  return s.includes('feature') && s.includes('density') ? s : null;
});
result.steps.loadMs = Date.now() - t0;

// ?feature=HEAD,FEATURE: a link to one feature's dashboard (with its label, which the
// server has beside the dashboard); one the file lacks is an error.
const linked = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await linked.goto(`${base}/?url=dashboard.safetensors&feature=3,5`);
result.steps.linkedSelection = await waitFor('?feature= and its label', async () => {
  const s = await linked.evaluate(() => window.attnSaes ? window.attnSaes.selection() : '');
  return s.includes('head 3 · feature 5 · density') && s.includes(' · label ') ? s : null;
});
// A label given in the page (attnSaes.label_feature, as the label field does) is unsaved
// until Save labels downloads the labels file.
await linked.evaluate(() => window.attnSaes.label_feature(3, 6, 'the next one'));
result.steps.unsavedAfterLabel = await waitFor('the label', async () =>
  ((await linked.evaluate(() => window.attnSaes.labels_unsaved())) ? 'true' : null));
const [download] = await Promise.all([linked.waitForEvent('download'), linked.click('#save-labels')]);
result.steps.labelsDownloadName = download.suggestedFilename();
await download.saveAs(`${outDir}/saved.labels.json`);
result.steps.unsavedAfterSave = String(await linked.evaluate(() => window.attnSaes.labels_unsaved()));
await linked.goto(`${base}/?url=dashboard.safetensors&feature=3,9999`);
result.steps.linkedMissing = await waitFor('?feature= past the features', async () => {
  const s = await linked.evaluate(() => window.attnSaes ? window.attnSaes.messages() : '');
  return s.includes('no head 3 feature 9999') ? s : null;
});
await linked.close();

// ?compare=: another run's curves beside the open one's, as `serve --compare` serves them
// and names them in its URL.
const comparing = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await comparing.goto(servedUrl);
result.compareByUrl = await waitFor('?compare=', async () => {
  const s = await comparing.evaluate(() => window.attnSaes && window.attnSaes.curves_shown());
  return s && JSON.parse(s).compared.length ? JSON.parse(s) : null;
});
// Head 2 feature 5, then the compared run opened at its feature 0 there (as a click on one
// of its closest features does): the two swap places.
await comparing.evaluate(() => window.attnSaes.select_feature(2, 5));
await waitFor('head 2 feature 5', async () => {
  const s = await comparing.evaluate(() => window.attnSaes.selection());
  return s.includes('head 2 · feature 5 ·') ? s : null;
});
const comparedName = result.compareByUrl.compared[0].name;
// A label typed in the run, not saved: still unsaved (leaving asks) once the compared run
// is open and the run kept.
await comparing.evaluate(() => window.attnSaes.label_feature(2, 5, 'typed in the run'));
await waitFor('the typed label', async () =>
  ((await comparing.evaluate(() => window.attnSaes.labels_unsaved())) ? 'true' : null));
await comparing.evaluate((name) => window.attnSaes.open_compared(name, 2, 0), comparedName);
result.openedCompared = await waitFor('the compared run opened', async () => {
  const s = await comparing.evaluate(() => window.attnSaes.curves_shown());
  const shown = JSON.parse(s);
  if (shown.open.name !== comparedName) return null;
  const unsaved = await comparing.evaluate(() => window.attnSaes.labels_unsaved());
  return { shown, selection: await comparing.evaluate(() => window.attnSaes.selection()), unsaved };
});
// Save labels there saves the compared run's, under its name.
const [comparedDownload] = await Promise.all([
  comparing.waitForEvent('download'), comparing.click('#save-labels')]);
result.steps.comparedLabelsName = comparedDownload.suggestedFilename();
await comparedDownload.saveAs(`${outDir}/compared.labels.json`);
await comparing.close();

// 2. Keyboard: two heads right, one feature down. A key pressed before the canvas has
// focus (or while the page is busy) can be lost: press again only after a quiet wait with
// no change, so a slow key is not counted twice.
async function pressUntil(key, what, done) {
  for (let attempt = 0; attempt < 10; attempt++) {
    const s = await selection();
    if (done(s)) return s;
    await page.keyboard.press(key);
    const start = Date.now();
    while (Date.now() - start < 1500) {
      await page.waitForTimeout(100);
      if ((await selection()) !== s) break;
    }
  }
  await fail(`${what}: keys had no effect; selection: ${await selection()}`);
}
await page.focus('#viewer'); // the viewer's canvas takes the keys
await page.waitForTimeout(300);
await pressUntil('ArrowRight', 'head 1', (s) => s.includes('head 1 · feature'));
result.steps.afterRight = await pressUntil('ArrowRight', 'head 2', (s) => s.includes('head 2 · feature') && s.includes('density'));
result.steps.afterDown = await pressUntil('ArrowDown', 'the next feature',
  (s) => s !== result.steps.afterRight && s.includes('head 2 · feature') && s.includes('density'));
await page.screenshot({ path: `${outDir}/web-features.png` });

// The Curves tab (the egui top bar, at its place in a 1400 x 900 page) and back.
await page.mouse.click(130, 47);
result.steps.curvesSelection = await waitFor('the Curves view', async () => {
  const s = await selection();
  return s.startsWith('view Curves') ? s : null;
});
await page.waitForTimeout(500);
await page.screenshot({ path: `${outDir}/web-curves.png` });
await page.mouse.click(200, 47);
result.steps.backToFeatures = await waitFor('the Features view again', async () => {
  const s = await selection();
  return s.startsWith('view Features') ? s : null;
});

// 3. The file input.
await page.goto(base);
await waitFor('the viewer to start', async () => (await status()).startsWith('ready'));
await page.setInputFiles('#file', dashboardFile);
result.steps.fileStatus = await waitFor('the picked file', async () => {
  const s = await status();
  return s.includes('heads x') ? s : null;
});
await page.waitForTimeout(500);
await page.screenshot({ path: `${outDir}/web-file.png` });

// Compare…: another run's dashboard, picked with its labels file; its training curves go
// beside the open one's.
await page.setInputFiles('#compare', [compareFile, compareFile.replace(/\.safetensors$/, '.labels.json')]);
result.steps.compareStatus = await waitFor('the compared file', async () => {
  const s = await status();
  return s.startsWith('comparing with') || s.includes('failed') ? s : null;
});
result.curvesShown = await waitFor('the compared curves', async () => {
  const s = await page.evaluate(() => window.attnSaes.curves_shown());
  return s && JSON.parse(s).compared.length ? JSON.parse(s) : null;
});
result.steps.compareSelection = await selection();
await page.waitForTimeout(500);
await page.screenshot({ path: `${outDir}/web-compare.png` });
// Opened from its closest features (as a click does) at head 2 feature 0: with the label
// picked with it.
await page.evaluate(() => window.attnSaes.open_compared('run-b.safetensors', 2, 0));
result.steps.comparedOpened = await waitFor('the compared file opened', async () => {
  const s = await selection();
  return s.includes('head 2 · feature 0 ·') ? s : null;
});

// 4. A corrupt file and a missing URL: errors in the page, the viewer still works. (The
// 404 is a console error of its own: count the ones before.)
result.consoleErrorsBeforeBadInput = result.consoleErrors.length;
await page.setInputFiles('#file', corruptFile);
result.steps.corruptStatus = await waitFor('the corrupt file error', errorStatus);
await page.goto(`${base}/?url=missing.safetensors`);
result.steps.missingStatus = await waitFor('the missing URL error', errorStatus);
result.steps.stillWorks = await page.evaluate(() => typeof window.attnSaes.selection());

// 5. A browser without WebAssembly SIMD (the bundles need it; Chromium has it, so a page
// where WebAssembly.validate refuses SIMD opcodes stands in): a message, not a failed start.
const noSimd = await browser.newPage();
await noSimd.addInitScript(() => {
  const validate = WebAssembly.validate;
  WebAssembly.validate = (bytes) => !new Uint8Array(bytes).includes(0xfd) && validate(bytes);
});
await noSimd.goto(`${base}/?url=dashboard.safetensors`);
result.steps.noSimdStatus = await waitFor('the no-SIMD message', () => errorStatus(noSimd));
result.steps.noSimdViewer = await noSimd.evaluate(() => typeof window.attnSaes);

console.log(JSON.stringify(result));
await browser.close();
