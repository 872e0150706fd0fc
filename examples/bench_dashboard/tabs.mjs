// Opens dashboard tabs in one headless Chromium for examples/bench_dashboard.rs
// and keeps them open, each polling as a person's open page does, until
// SIGTERM; then prints how many API requests the tabs made.
//
// node examples/bench_dashboard/tabs.mjs BASE_URL TABS
// (playwright-core from tests/browser/node_modules: `npm ci` there first)
import { chromium } from "../../tests/browser/node_modules/playwright-core/index.mjs";

const [base, tabs] = [process.argv[2], Number(process.argv[3] || 10)];
const browser = await chromium.launch({
  executablePath: process.env.DASH_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let requests = 0;
const visible = [];
for (let i = 0; i < tabs; i++) {
  // A context of its own for each tab: each is a window in front, as on
  // ten screens, so none is hidden and stops polling.
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on("request", (r) => { if (new URL(r.url()).pathname.startsWith("/v2/")) requests++; });
  await page.goto(`${base}/dashboard${i % 2 ? "/jobs" : ""}`);
  visible.push(await page.evaluate(() => document.visibilityState));
}
console.log(`open ${tabs} tabs: ${visible.filter((v) => v === "visible").length} visible`);
const opened = Date.now();
requests = 0;
process.on("SIGTERM", async () => {
  const secs = (Date.now() - opened) / 1000;
  console.log(`requests ${requests} in ${secs.toFixed(1)} s`);
  await browser.close();
  process.exit(0);
});
