// A job: its facts, input, output or error (pretty-printed as text,
// folded when large, cut for display beyond 256 KB), every attempt with its
// worker, timing, outcome and stderr tail, its webhook; cancel, retry and
// a curl command that submits it again. Read again every 2 s until it ends
// (a job's input can be megabytes: an ended job is not read again until an
// action here may have changed it).
"use strict";
JP.pages.job = function (content) {
  const h = JP.h;
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const SHOWN = 256 * 1024;
  const FOLDED = 4 * 1024;
  const FINAL = ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
  document.getElementById("title").textContent = "Job " + id;
  document.title = "Job " + id + " · jobpipe";
  const actions = h("div", { class: "row actions", id: "job-actions" });
  const facts = h("div", { class: "panel", id: "job-facts" });
  const data = h("div", { id: "job-data" });
  const attempts = h("div", { id: "job-attempts" });
  const message = h("p", { class: "note", id: "job-note" });
  JP.clear(content, actions, message, facts, data, attempts);
  // Says what the last action did; kept across re-renders of the buttons.
  const status = h("span", { class: "note", id: "action-status", role: "status" });
  let shownKey = null;
  // The job has ended: no more reads until an action.
  let ended = false;

  function kb(n) { return n < 1024 ? n + " bytes" : (n / 1024).toFixed(n < 10240 ? 1 : 0) + " KB"; }

  /** A JSON value (or text) as escaped, pretty-printed text. */
  function block(name, value, elId) {
    let text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    if (text === undefined) text = String(value);
    const size = new Blob([text]).size;
    const pre = h("pre", { class: "json", id: elId });
    if (text.length > SHOWN) {
      pre.textContent = text.slice(0, SHOWN);
    } else pre.textContent = text;
    const cut = text.length > SHOWN
      ? h("p", { class: "note" }, `Showing the first 256 KB of ${kb(size)}; the whole is at ${location.origin}/v2/${JP.endpoint()}/jobs/${encodeURIComponent(id)}.`)
      : null;
    if (size > FOLDED) {
      return h("section", {}, h("h2", {}, name),
        h("details", {}, h("summary", {}, `${name} (${kb(size)}, folded; click to show)`), pre, cut));
    }
    return h("section", {}, h("h2", {}, name), pre, cut);
  }

  function fact(label, value) { return [h("dt", {}, label), h("dd", {}, value)]; }

  function curl(job) {
    const body = JSON.stringify({ input: job.input === undefined ? {} : job.input });
    const quote = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
    return `curl -X POST ${quote(location.origin + "/v2/" + JP.endpoint() + "/run")} \\\n` +
      `  -H "Authorization: Bearer $JOBPIPE_API_KEY" -H 'Content-Type: application/json' \\\n` +
      `  -d ${quote(body)}`;
  }

  function showActions(job) {
    const buttons = [];
    if (JP.canAct() && !FINAL.includes(job.status)) {
      buttons.push(h("button", { type: "button", class: "danger", id: "cancel", onclick: () => act("cancel") }, "Cancel"));
    }
    if (JP.canAct() && (job.status === "FAILED" || job.status === "TIMED_OUT")) {
      buttons.push(h("button", { type: "button", class: "primary", id: "retry", onclick: () => act("retry") }, "Retry"));
    }
    const command = curl(job);
    buttons.push(h("button", { type: "button", id: "copy-curl", onclick: () => copy(command) }, "Copy curl command"));
    JP.clear(actions, buttons, status);
  }

  async function act(what) {
    const answer = await JP.post(`/${what}/${encodeURIComponent(id)}`);
    status.textContent = answer.status === 200
      ? `${what === "cancel" ? "Cancelled" : "Queued again"}: now ${JP.statusWord(answer.body.status)}.`
      : `${what} failed: ${answer.body.error || answer.status}`;
    shownKey = null;
    ended = false;
    poller.now();
  }

  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied the curl command.";
    } catch (e) {
      status.textContent = "Copy it from the box below.";
    }
    let box = document.getElementById("curl");
    if (!box) {
      box = h("pre", { class: "json", id: "curl" });
      actions.after(box);
    }
    box.textContent = text;
  }

  function show(job) {
    const key = JSON.stringify([job.status, job.attemptCount, (job.attempts || []).length,
      job.webhooksPending, job.queuedAt, job.startedAt, job.finishedAt,
      job.status === "IN_PROGRESS" ? JSON.stringify(job.output) : null, job.streamCount]);
    if (key === shownKey) return;
    shownKey = key;
    showActions(job);
    const wait = job.startedAt ? job.startedAt - (job.queuedAt || job.createdAt) : null;
    const run = job.startedAt ? (job.finishedAt || Date.now()) - job.startedAt : null;
    facts.dataset.queuedAt = job.queuedAt || "";
    JP.clear(facts, h("dl", { class: "facts" },
      fact("Status", JP.badge(job.status)),
      fact("Endpoint", job.endpoint),
      fact("Tenant", job.tenant || "—"),
      fact("Priority", String(job.priority ?? 0)),
      fact("Attempts", `${job.attemptCount ?? 0} of ${job.maxAttempts ?? "—"}`),
      fact("Worker", job.workerId || "—"),
      fact("Submitted", JP.time(job.createdAt)),
      job.queuedAt && job.queuedAt !== job.createdAt ? fact("Queued again", JP.time(job.queuedAt)) : null,
      fact("Queue wait", JP.duration(wait)),
      fact("Run time", JP.duration(run)),
      fact("Finished", JP.time(job.finishedAt)),
      fact("Webhook", job.webhook ? `${job.webhook} (${job.webhooksPending ? job.webhooksPending + " deliveries pending" : "delivered or none due"})` : "none")));
    const parts = [];
    if (job.input !== undefined) parts.push(block("Input", job.input, "input"));
    if (job.output !== undefined && job.output !== null) {
      // While it runs, the output is the handler's last progress update.
      parts.push(block(job.status === "IN_PROGRESS" ? "Progress" : "Output", job.output, "output"));
    }
    // An output in the object store: links to download it.
    const objects = job.output && typeof job.output === "object"
      ? (job.output.object ? [{ name: "output", object: job.output.object }] : (job.output.files || []))
      : [];
    const links = objects.filter((f) => f && f.object && typeof f.object.url === "string" && /^https?:/.test(f.object.url));
    if (links.length) {
      parts.push(h("section", { id: "objects" }, h("h2", {}, "In the object store"),
        h("ul", {}, links.map((f) => h("li", {},
          h("a", { href: f.object.url, rel: "noopener noreferrer" }, `Download ${f.name}`),
          ` (${kb(f.object.size || 0)}, ${f.object.contentType || "unknown type"}; the link expires)`)))));
    }
    if (job.error) parts.push(block("Error", job.error, "error"));
    if (job.streamCount) {
      // The stream partials as kept, read by /stream or not (this read
      // does not take them from a client's /stream).
      const shown = (job.stream || []).length;
      const name = shown < job.streamCount
        ? `Stream partials (the first ${shown} of ${job.streamCount})`
        : `Stream partials (${job.streamCount})`;
      parts.push(block(name, job.stream, "stream"));
    }
    JP.clear(data, parts);
    const history = job.attempts || [];
    JP.clear(attempts, h("h2", {}, "Attempts"), history.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "attempts" },
        h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "Worker"), h("th", {}, "Started"),
          h("th", { class: "num" }, "Took"), h("th", {}, "Outcome"), h("th", {}, "Detail"))),
        h("tbody", {}, history.map((a) => h("tr", {},
          h("td", { class: "num" }, a.attempt), h("td", { class: "mono" }, a.workerId || "—"),
          h("td", {}, JP.time(a.startedAt)),
          h("td", { class: "num" }, JP.duration(a.endedAt && a.startedAt ? a.endedAt - a.startedAt : null)),
          h("td", {}, a.outcome || "—"),
          h("td", {}, a.detail ? h("details", {}, h("summary", {}, "stderr tail and detail"), h("pre", { class: "json" }, a.detail)) : "—"))))))
      : h("p", { class: "note" }, "No attempt has ended yet."));
  }

  async function refresh() {
    if (ended) return;
    const answer = await JP.get("/jobs/" + encodeURIComponent(id));
    if (answer.status !== 200) {
      message.textContent = answer.status === 404
        ? `No job ${id} on endpoint ${JP.endpoint()}: it never existed, was purged, or passed its retention.`
        : "No data: " + ((answer.body && answer.body.error) || answer.status);
      return;
    }
    message.textContent = "";
    show(answer.body);
    ended = FINAL.includes(answer.body.status);
  }

  const poller = JP.poll(refresh, 2000);
};
