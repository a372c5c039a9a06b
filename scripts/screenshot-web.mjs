// A screenshot of the web viewer in headless Chromium (Debian's /usr/bin/chromium, or
// $CHROMIUM), with playwright-core from tests/web (npm ci there first):
//   attn-saes serve runs/latest --no-live &
//   node scripts/screenshot-web.mjs 'http://127.0.0.1:8765/?url=dashboard.safetensors&feature=3,406' OUT.png [SCROLL]
// Waits for the page to show the dashboard (and the feature a ?feature= names), then, with
// SCROLL, turns the mouse wheel SCROLL times (100 px each) over the feature's dashboard.
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
