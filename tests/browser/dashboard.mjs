// Drives headless Chromium through the dashboard of a running endpoint, as
// a person would, and fails (exit 1) on the first thing a person would
// see go wrong. Run by tests/dashboard.rs, which starts the endpoint (with
// a worker) and passes:
//
//   DASH_ROOT        http://127.0.0.1:PORT
//   DASH_SUBMIT_KEY  a key with role "submit" on every endpoint
//   DASH_READ_KEY    a key with role "read"
//   DASH_PYTHON      a python with the official runpod package
//   DASH_SUBMIT_PY   tests/fixtures/dashboard_submit.py
//   DASH_SHOTS       where the screenshots go (light and dark, each page)
//   DASH_CHROMIUM    the browser (default /usr/bin/chromium)
//   DASH_OPEN_ROOT   another endpoint, run without keys (the login is skipped)
//
// Checks: login; a job submitted with the runpod client appears on the Jobs
// page and completes without a reload; its page shows its output; a
// running job is cancelled from its page; a failed one is retried; 2,000
// jobs are paged through with the API's cursors; a read key sees no action
// buttons; a `<script>` input shows as text and opens no dialog; purge asks
// with the count; no console error, page error or failed request anywhere.
// Prints the bytes transferred for the first view.

import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const ROOT = need("DASH_ROOT");
const SUBMIT = need("DASH_SUBMIT_KEY");
const READ = need("DASH_READ_KEY");
const SHOTS = need("DASH_SHOTS");
const WAIT = 60_000;
mkdirSync(SHOTS, { recursive: true });

function need(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function step(text) {
  console.log(`dashboard: ${text}`);
}

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function api(method, path, body, key = SUBMIT) {
  const response = await fetch(ROOT + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

const submit = async (input, ep = "default") => (await api("POST", `/v2/${ep}/run`, { input })).id;

// What went wrong in the browser, on any page.
const problems = [];
function watch(page, label) {
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`${label}: console error: ${msg.text()} (${page.url()})`);
  });
  page.on("pageerror", (error) => problems.push(`${label}: page error: ${error.message} (${page.url()})`));
  page.on("requestfailed", (request) => {
    // A poll in flight when the page navigates away is aborted by the
    // browser itself: not a failure of the dashboard or the API.
    if (request.failure()?.errorText === "net::ERR_ABORTED") return;
    problems.push(`${label}: request failed: ${request.url()} ${request.failure()?.errorText}`);
  });
  page.on("response", (response) => {
    if (response.status() >= 400) {
      problems.push(`${label}: ${response.status()} for ${response.request().method()} ${response.url()}`);
    }
  });
  page.on("dialog", async (dialog) => {
    problems.push(`${label}: a ${dialog.type()} dialog opened: ${dialog.message()}`);
    await dialog.dismiss();
  });
}

async function shoot(page, name, fullPage = true) {
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.waitForTimeout(150);
    await page.screenshot({ path: `${SHOTS}/${name}-${scheme}.png`, fullPage });
  }
  await page.emulateMedia({ colorScheme: "light" });
}

async function login(page, key) {
  await page.goto(`${ROOT}/dashboard`);
  await page.locator("#login").waitFor({ timeout: WAIT });
  await page.fill("#key", key);
  await page.click("#login button[type=submit]");
  await page.locator("#card-waiting").waitFor({ timeout: WAIT });
}

/** Status shown on a job page. */
const jobStatus = (page) => page.locator("#job-facts [data-status]").getAttribute("data-status");

async function waitJobStatus(page, status) {
  await page.locator(`#job-facts [data-status="${status}"]`).waitFor({ timeout: WAIT });
}

const browser = await chromium.launch({
  executablePath: process.env.DASH_CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  watch(page, "submit key");

  // The first view, cold: the login page, then the Overview it leads to.
  const cdp = await context.newCDPSession(page);
  await cdp.send("Network.enable");
  let bytes = 0;
  let requests = 0;
  cdp.on("Network.loadingFinished", (event) => {
    bytes += event.encodedDataLength;
    requests += 1;
  });
  await page.goto(`${ROOT}/dashboard`);
  await page.locator("#login").waitFor({ timeout: WAIT });
  check(await page.locator(".nav a", { hasText: "Jobs" }).count() === 1, "the navigation bar shows before login");
  check(await page.locator("#endpoint").isHidden(), "no endpoint selector before login");
  await page.waitForLoadState("networkidle");
  step(`first view (login page, cold cache): ${requests} requests, ${bytes} bytes transferred`);
  await shoot(page, "login");
  const loginBytes = bytes;
  await page.fill("#key", "not-a-key");
  await page.click("#login button[type=submit]");
  await page.locator("#login-error", { hasText: "not one this API knows" }).waitFor({ timeout: WAIT });
  await page.fill("#key", SUBMIT);
  await page.click("#login button[type=submit]");
  await page.locator("#card-waiting").waitFor({ timeout: WAIT });
  await page.waitForLoadState("networkidle");
  step(`first view (login, then Overview): ${requests} requests, ${bytes} bytes transferred (${bytes - loginBytes} after login)`);
  await cdp.detach();
  step("logged in with the submit key; Overview shows");

  // A job from the runpod client appears and completes on the Jobs page.
  await page.goto(`${ROOT}/dashboard/jobs`);
  await page.locator("#jobs-body").waitFor({ state: "attached", timeout: WAIT });
  const clientId = execFileSync(need("DASH_PYTHON"), [need("DASH_SUBMIT_PY"), JSON.stringify({ do: "echo", via: "runpod client" })], {
    env: { ...process.env, JOBPIPE_BASE: `${ROOT}/v2`, JOBPIPE_KEY: SUBMIT, JOBPIPE_ENDPOINT_NAME: "default" },
    encoding: "utf8",
  }).trim();
  step(`the runpod client submitted ${clientId}`);
  const clientRow = page.locator(`#jobs-body tr[data-id="${clientId}"]`);
  await clientRow.waitFor({ timeout: WAIT });
  await clientRow.locator('[data-status="COMPLETED"]').waitFor({ timeout: WAIT });
  step("it appeared on the Jobs page and completed there, without a reload");
  await clientRow.locator("a").click();
  await page.locator("#output").waitFor({ timeout: WAIT });
  const output = JSON.parse(await page.locator("#output").textContent());
  check(JSON.stringify(output).includes("runpod client"), `the output shows the input echoed: ${JSON.stringify(output)}`);
  step("its page shows its output");
  await shoot(page, "job");
  await page.click("#copy-curl");
  const command = await page.locator("#curl").textContent();
  const resubmitted = JSON.parse(execFileSync("bash", ["-c", command], {
    env: { ...process.env, JOBPIPE_API_KEY: SUBMIT }, encoding: "utf8",
  }));
  check(resubmitted.status === "IN_QUEUE", `the copied curl command submits it again: ${JSON.stringify(resubmitted)}`);
  const again = await api("GET", `/v2/default/jobs/${resubmitted.id}`);
  check(again.input.via === "runpod client", `with the same input: ${JSON.stringify(again.input)}`);
  step("its copied curl command, run by bash, submitted the same input again");

  // Cancel a running job from its page.
  const slow = await submit({ do: "sleep", ms: 120000 });
  await page.goto(`${ROOT}/dashboard/jobs/${slow}`);
  await waitJobStatus(page, "IN_PROGRESS");
  await page.click("#cancel");
  await waitJobStatus(page, "CANCELLED");
  check((await api("GET", `/v2/default/status/${slow}`)).status === "CANCELLED", "the API has it CANCELLED too");
  step("a running job was cancelled from its page");

  // Retry a failed job from its page.
  const failing = await submit({ do: "error", message: "it went wrong on purpose" });
  await page.goto(`${ROOT}/dashboard/jobs/${failing}`);
  await waitJobStatus(page, "FAILED");
  check((await page.locator("#error").textContent()).includes("it went wrong on purpose"), "the error shows");
  await shoot(page, "job-failed");
  const before = await api("GET", `/v2/default/jobs/${failing}`);
  await page.click("#retry");
  await page.locator("#action-status", { hasText: "Queued again" }).waitFor({ timeout: WAIT });
  let retried = before;
  for (const started = Date.now(); retried.queuedAt === before.queuedAt || retried.status !== "FAILED"; ) {
    check(Date.now() - started < WAIT, `the retried job ran again and failed again: ${JSON.stringify(retried)}`);
    await new Promise((r) => setTimeout(r, 100));
    retried = await api("GET", `/v2/default/jobs/${failing}`);
  }
  await page.locator(`#job-facts[data-queued-at="${retried.queuedAt}"] [data-status="FAILED"]`).waitFor({ timeout: WAIT });
  step("a failed job was retried from its page: it ran again, and its page shows the new run");

  // A `<script>` input is text, and runs nothing.
  const xss = await submit({ do: "echo", text: "<script>alert(1)</script><img src=x onerror=alert(2)>" });
  await page.goto(`${ROOT}/dashboard/jobs/${xss}`);
  await page.locator("#input").waitFor({ timeout: WAIT });
  check((await page.locator("#input").textContent()).includes("<script>alert(1)</script>"), "the input shows as text");
  await waitJobStatus(page, "COMPLETED");
  check((await page.locator("#output").textContent()).includes("<img src=x onerror=alert(2)>"), "the output shows as text");
  check(await page.locator("#content script, #content img").count() === 0, "no element was made from the input");
  await page.waitForTimeout(500);
  step("the <script> input and output show as text; no dialog opened");

  // 2,000 jobs, paged through with the API's cursors.
  const many = [];
  for (let i = 0; i < 2000; i += 50) {
    many.push(...(await Promise.all(Array.from({ length: 50 }, (_, j) => submit({ do: "echo", n: i + j })))));
  }
  step(`submitted ${many.length} jobs`);
  await page.goto(`${ROOT}/dashboard/jobs?limit=200`);
  const seen = new Set();
  let pages = 0;
  for (;;) {
    pages += 1;
    await page.locator("#page-info", { hasText: `Page ${pages} ·` }).waitFor({ timeout: WAIT });
    const ids = await page.locator("#jobs-body tr").evaluateAll((rows) => rows.map((r) => r.dataset.id));
    for (const id of ids) {
      check(!seen.has(id), `job ${id} shows on one page only`);
      seen.add(id);
    }
    if (await page.locator("#older").isDisabled()) break;
    await page.click("#older");
  }
  check(many.every((id) => seen.has(id)), `all 2,000 jobs were on the pages (${seen.size} seen)`);
  await page.click("#newer");
  await page.locator("#page-info", { hasText: `Page ${pages - 1} ·` }).waitFor({ timeout: WAIT });
  step(`paged through ${seen.size} jobs in ${pages} pages of 200 and back`);

  // A large input is folded, and cut for display beyond 256 KB.
  const big = await submit({ do: "echo", blob: "x".repeat(300 * 1024) });
  await page.goto(`${ROOT}/dashboard/jobs/${big}`);
  await page.locator("#input").waitFor({ state: "attached", timeout: WAIT });
  check(!(await page.locator("#input").isVisible()), "a large input starts folded");
  check((await page.locator("#input").textContent()).length <= 256 * 1024, "at most 256 KB of it is in the page");
  await page.locator("text=Showing the first 256 KB").first().waitFor({ state: "attached", timeout: WAIT });
  step("a 300 KB input is folded and cut to 256 KB on its page");

  // A streaming job's partials are on its page, and the page's read takes
  // none from a client's /stream.
  const streamed = await submit({ do: "stream", n: 3 });
  await page.goto(`${ROOT}/dashboard/jobs/${streamed}`);
  await page.locator("#stream").waitFor({ timeout: WAIT });
  const partials = await page.locator("#stream").textContent();
  check(partials.includes('"n": 0') && partials.includes('"n": 2'), `the stream partials show on the job's page (${partials})`);
  const unread = await api("POST", `/v2/default/stream/${streamed}`);
  check((unread.stream || []).length === 3, `the page took no partial from /stream (${JSON.stringify(unread)})`);
  step("a streaming job's partials show on its page and stay for /stream");

  // Purge asks first, naming the count.
  for (let i = 0; i < 3; i++) await submit({ do: "echo" }, "idle");
  await page.goto(`${ROOT}/dashboard?ep=idle`);
  await page.locator("#card-waiting .value", { hasText: "3" }).waitFor({ timeout: WAIT });
  await page.click("#purge");
  const question = await page.locator("#confirm p").textContent();
  check(question.includes("3 jobs waiting on endpoint idle"), `the confirmation names the count: ${question}`);
  await page.click("#confirm-yes");
  await page.locator("#purge-status", { hasText: "3 removed" }).waitFor({ timeout: WAIT });
  step("purge asked, naming 3 waiting jobs, and removed them");

  // The endpoint chosen stays for the tab: back to "default".
  await page.goto(`${ROOT}/dashboard?ep=default`);
  await page.locator("#chart-throughput svg path").first().waitFor({ timeout: WAIT });
  await page.locator("#chart-latency svg circle, #chart-latency svg path").first().waitFor({ timeout: WAIT });
  check(await page.locator("#chart-throughput .legend", { hasText: "Completed" }).count() === 1, "the throughput chart has a legend");
  // The figures are gathered every few seconds: wait for them.
  await page.waitForFunction(
    () => Number(document.querySelector("#card-completed .value")?.textContent.replace(/\D/g, "")) >= 2000,
    null, { timeout: WAIT });
  step("the Overview shows the last hour's figures and its charts");
  await shoot(page, "overview");
  await page.click('button[data-range="1d"]');
  await page.locator("#chart-throughput h3", { hasText: "per 5 minutes" }).waitFor({ timeout: WAIT });
  await page.click('button[data-range="1h"]');
  await page.locator("#chart-throughput h3", { hasText: "per minute" }).waitFor({ timeout: WAIT });
  step("the charts switch between the last day (5-minute buckets) and the last hour");
  // A busy worker names the job it runs, linked to its page.
  const running = await submit({ do: "sleep", ms: 120000 });
  await page.goto(`${ROOT}/dashboard/workers`);
  const current = page.locator(`#workers-body a[href*="${running}"]`);
  await current.waitFor({ timeout: WAIT });
  check(await page.locator('#workers-body [data-status="busy"]').count() === 1, "the worker shows as busy");
  await shoot(page, "workers");
  await api("POST", `/v2/default/cancel/${running}`);
  step("the Workers page shows the busy worker and links the job it runs");
  await page.goto(`${ROOT}/dashboard/jobs`);
  await page.locator(`#jobs-body tr[data-id="${running}"] [data-status="CANCELLED"]`).waitFor({ timeout: WAIT });
  await shoot(page, "jobs", false);

  // The Jobs page reads again every 2 s while shown, and not while hidden.
  await page.goto(`${ROOT}/dashboard/jobs`);
  await page.locator("#jobs-body tr").first().waitFor({ timeout: WAIT });
  const polls = [];
  const onRequest = (r) => { if (r.url().includes("/v2/default/jobs?")) polls.push(Date.now()); };
  page.on("request", onRequest);
  while (polls.length < 3) await page.waitForTimeout(200);
  const gaps = polls.slice(1).map((t, i) => t - polls[i]);
  check(gaps.every((g) => g >= 1900), `the Jobs page reads at most every 2 s: gaps ${gaps} ms`);
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  const hiddenAt = Date.now();
  await page.waitForTimeout(5000);
  check(polls.every((t) => t <= hiddenAt + 100), "no reads while the tab is hidden");
  page.off("request", onRequest);
  step(`the Jobs page read every ${Math.min(...gaps)}-${Math.max(...gaps)} ms while shown, and stopped while hidden`);

  // A phone's width.
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${ROOT}/dashboard/jobs`);
  await page.locator("#jobs-body tr").first().waitFor({ timeout: WAIT });
  await shoot(page, "jobs-phone", false);
  await page.goto(`${ROOT}/dashboard`);
  await page.locator("#card-waiting").waitFor({ timeout: WAIT });
  await shoot(page, "overview-phone");

  // A read key: the same pages, no action buttons.
  const reader = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const view = await reader.newPage();
  watch(view, "read key");
  await login(view, READ);
  check(await view.locator("#who", { hasText: "read only" }).count() === 1, "the read key is named read only");
  check(await view.locator("#purge").count() === 0, "no purge button for a read key");
  await view.goto(`${ROOT}/dashboard/jobs/${failing}`);
  await waitJobStatus(view, "FAILED");
  check(await view.locator("#retry, #cancel").count() === 0, "no retry or cancel button for a read key");
  const hanging = await submit({ do: "sleep", ms: 120000 });
  await view.goto(`${ROOT}/dashboard/jobs/${hanging}`);
  await view.locator("#job-facts [data-status]").waitFor({ timeout: WAIT });
  check(await view.locator("#retry, #cancel").count() === 0, `no cancel button on a ${await jobStatus(view)} job for a read key`);
  await api("POST", `/v2/default/cancel/${hanging}`);
  step("a read key sees the pages without action buttons");
  await reader.close();
  await context.close();

  // An API without keys: no login form, and every action.
  const open = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const anyone = await open.newPage();
  watch(anyone, "no keys");
  await anyone.goto(`${need("DASH_OPEN_ROOT")}/dashboard`);
  await anyone.locator("#card-waiting").waitFor({ timeout: WAIT });
  check(await anyone.locator("#login").count() === 0, "no login form when the API has no keys");
  check(await anyone.locator("#logout").isHidden(), "no log out button when the API has no keys");
  check(await anyone.locator("#purge").count() === 1, "the actions are there");
  await open.close();
  step("an API without keys shows its pages without a login");

  check(problems.length === 0, `no console errors or failed requests:\n  ${problems.join("\n  ")}`);
  step("no console error, page error, dialog or failed request on any page");
} catch (error) {
  failed = true;
  console.error(`dashboard: FAILED: ${error.stack || error}`);
  if (problems.length) console.error(`dashboard: seen in the browser:\n  ${problems.join("\n  ")}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
