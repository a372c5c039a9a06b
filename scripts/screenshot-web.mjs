// A screenshot of the web viewer in headless Chromium (Debian's /usr/bin/chromium, or
// $CHROMIUM), with playwright-core from tests/web (npm ci there first):
//   attn-saes serve runs/latest --no-live &
//   node scripts/screenshot-web.mjs 'http://127.0.0.1:8765/?url=dashboard.safetensors&feature=3,406' OUT.png [SCROLL]
// Waits for the page to show the dashboard (and the feature a ?feature= names), then, with
// SCROLL, turns the mouse wheel SCROLL times (100 px each) over the feature's dashboard.
// Your text (serve without --no-live, and &live=live.json in the URL): TEXT="..." runs a
// text once the model is loaded, PICK=POSITION,HEAD,FEATURE picks a feature, and EFFECT=1
// asks for its effect on the predictions, STEER=STRENGTH,TOKENS[,TEMPERATURE,SEED] for the
// text continued clean and steered by it (printing how long that took), or STEER_JSON=
// a steering as JSON (attnSaes.live_steer_json; `attn-saes steer ... --json` prints one)
// for the text continued that way, the controls set to it. EXAMPLES=1 (with ?feature=H,F and a model) asks
// for that feature's effect on its top examples (Features) and prints how long it took.
import { chromium } from '../tests/web/node_modules/playwright-core/index.mjs';

const [url, out, scroll = '0'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
await page.goto(url);
const feature = new URL(url).searchParams.get('feature');
const want = feature ? `feature ${feature.split(',')[1]} · density` : 'density';
let shown = '';
for (let i = 0; i < 300 && !shown.includes(want); i++) {
  await page.waitForTimeout(100);
  shown = await page.evaluate(() => (window.attnSaes ? window.attnSaes.selection() : ''));
}
if (!shown.includes(want)) {
  console.error(`the page never showed ${want}: ${shown}`);
  process.exit(1);
}
// Polls `probe` (run in the page) until it returns something truthy; exits on timeout.
async function until(what, probe, arg) {
  for (let i = 0; i < 1200; i++) {
    const v = await page.evaluate(probe, arg);
    if (v) return v;
    await page.waitForTimeout(100);
  }
  console.error(`timed out waiting for ${what}`);
  process.exit(1);
}
const liveShown = () => {
  const s = window.attnSaes.live_shown();
  return s ? JSON.parse(s) : null;
};
if (process.env.TEXT) {
  await until('the model', () => window.attnSaesLive && window.attnSaesLive.ready());
  await page.evaluate((t) => window.attnSaes.live_set_prompt(t, true), process.env.TEXT);
  await until('the analysis', (t) => {
    const s = window.attnSaes.live_shown();
    return s && JSON.parse(s).prompt === t && JSON.parse(s).status.endsWith('tokens');
  }, process.env.TEXT);
  if (process.env.PICK) {
    const [p, h, f] = process.env.PICK.split(',').map(Number);
    await page.evaluate(([p, h, f]) => window.attnSaes.live_pick(p, h, f), [p, h, f]);
    // Waits for Your text's `name` (effect, steer) to be answered; exits unless ready.
    const answered = async (name) => {
      const status = await until(`the ${name}`, (name) => {
        const s = window.attnSaes.live_shown();
        const e = s ? JSON.parse(s)[`${name}_status`] : 'none';
        return e !== 'none' && e !== 'computing' ? e : null;
      }, name);
      if (status !== 'ready') {
        console.error(`the ${name}: ${status}`);
        process.exit(1);
      }
    };
    if (process.env.EFFECT) {
      await page.waitForTimeout(500);
      await page.evaluate(([h, f]) => window.attnSaes.live_effect(h, f), [h, f]);
      await answered('effect');
    }
    if (process.env.STEER) {
      const [strength, tokens, temperature = 0, seed = 0] = process.env.STEER.split(',').map(Number);
      await page.waitForTimeout(500);
      const t0 = Date.now();
      const args = [h, f, strength, tokens, temperature, seed];
      await page.evaluate((a) => window.attnSaes.live_steer(...a), args);
      await answered('steer');
      console.error(`steered continuation: ${Date.now() - t0} ms`);
    }
    if (process.env.STEER_JSON) {
      await page.waitForTimeout(500);
      const t0 = Date.now();
      await page.evaluate((j) => window.attnSaes.live_steer_json(j), process.env.STEER_JSON);
      await answered('steer');
      console.error(`steered continuation: ${Date.now() - t0} ms`);
    }
  }
  shown = JSON.stringify((await page.evaluate(liveShown)).pick);
}
if (process.env.EXAMPLES && feature) {
  const [h, f] = feature.split(',').map(Number);
  await until('the model', () => window.attnSaesLive && window.attnSaesLive.ready());
  const t0 = Date.now();
  await page.evaluate(([h, f]) => window.attnSaes.live_examples_effect(h, f), [h, f]);
  const status = await until('the effect on top examples', () => {
    const s = JSON.parse(window.attnSaes.examples_shown());
    return s.status !== 'none' && s.status !== 'computing' ? s.status : null;
  });
  if (status !== 'ready') {
    console.error(`the effect on top examples: ${status}`);
    process.exit(1);
  }
  console.error(`effect on top examples: ${Date.now() - t0} ms`);
}
await page.waitForTimeout(1000);
await page.mouse.move(1000, 650);
for (let i = 0; i < Number(scroll); i++) {
  await page.mouse.wheel(0, 100);
  await page.waitForTimeout(100);
}
await page.waitForTimeout(1000);
await page.screenshot({ path: out });
console.log(`${out}: ${shown}`);
await browser.close();
