// Overview: the endpoint's queue now (waiting, running, finished in the
// last hour, oldest wait, workers) and its throughput and latency over the
// last hour or day, from /stats; /health when /stats is not there. Purge
// is here, behind a confirmation that names how many jobs it removes.
"use strict";
JP.pages.overview = function (content) {
  const h = JP.h;
  let range = "1h";
  const cards = h("div", { class: "cards", id: "cards" });
  const throughput = h("div", { class: "panel chart", id: "chart-throughput" });
  const latency = h("div", { class: "panel chart", id: "chart-latency" });
  const note = h("p", { class: "note", id: "overview-note" });
  const rangeButtons = ["1h", "1d"].map((r) =>
    h("button", { type: "button", "data-range": r, "aria-pressed": String(r === range), onclick: () => pick(r) },
      r === "1h" ? "Last hour" : "Last day"));
  const purgeStatus = h("span", { id: "purge-status", class: "note" });
  const purge = JP.canAct()
    ? h("button", { type: "button", class: "danger", id: "purge", onclick: purgeQueue }, "Purge queue…")
    : null;
  JP.clear(content,
    h("div", { class: "row actions" }, rangeButtons, h("span", { class: "spacer" }), purgeStatus, purge),
    cards, note, h("div", { class: "charts" }, throughput, latency));

  function pick(r) {
    range = r;
    for (const b of rangeButtons) b.setAttribute("aria-pressed", String(b.dataset.range === r));
    poller.now();
  }

  function card(id, label, value, sub) {
    return h("div", { class: "card", id: "card-" + id },
      h("div", { class: "label" }, label), h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null);
  }

  function showNow(now) {
    const w = now.workers || {};
    JP.clear(cards,
      card("waiting", "Waiting", JP.count(now.waiting)),
      card("running", "Running", JP.count(now.running)),
      card("completed", "Completed, last hour", JP.count(now.completedLastHour)),
      card("failed", "Failed, last hour", JP.count(now.failedLastHour)),
      card("oldest", "Oldest wait", now.oldestWaitSeconds === null || now.oldestWaitSeconds === undefined
        ? "—" : JP.duration(now.oldestWaitSeconds * 1000), now.waiting === 0 ? "none waiting" : null),
      card("workers", "Workers", JP.count((w.idle || 0) + (w.busy || 0)),
        `${JP.count(w.idle)} idle · ${JP.count(w.busy)} busy · ${JP.count(w.lost)} lost`));
  }

  function showCharts(stats) {
    const bucket = (stats.bucketSeconds || 60) * 1000;
    const series = stats.series || [];
    const to = Date.now();
    const from = to - (range === "1d" ? 86400e3 : 3600e3);
    const minutes = bucket / 60000;
    const per = minutes === 1 ? "per minute" : Number.isInteger(minutes) ? `per ${minutes} minutes` : "per " + JP.duration(bucket);
    // Each figure at its bucket's middle; the current bucket's at now.
    const pts = (k) => series.map((b) => [Math.min(b.t + bucket / 2, to), b[k]]);
    JP.lineChart(throughput, {
      title: "Throughput (jobs " + per + ")", unit: "jobs " + per, from, to,
      format: (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)),
      series: [
        { name: "Completed", cls: "s0", points: pts("completed") },
        { name: "Failed", cls: "s1", points: pts("failed") },
      ],
    });
    JP.lineChart(latency, {
      title: "Latency (queue wait and run time)", unit: "time (ms, s, min as marked)", from, to,
      format: (v) => (v === 0 ? "0" : JP.duration(v)),
      series: [
        { name: "Wait p50", cls: "s2", points: pts("waitP50Ms") },
        { name: "Wait p99", cls: "s2", dash: true, points: pts("waitP99Ms") },
        { name: "Run p50", cls: "s3", points: pts("runP50Ms") },
        { name: "Run p99", cls: "s3", dash: true, points: pts("runP99Ms") },
      ],
    });
  }

  async function refresh() {
    const stats = await JP.get("/stats?range=" + range);
    if (stats.status === 200) {
      showNow(stats.body.now || {});
      showCharts(stats.body);
      note.textContent = "";
      return;
    }
    // No /stats on this API: the counts /health has, and no charts.
    const health = await JP.get("/health");
    if (health.status !== 200) {
      note.textContent = "No data: " + ((health.body && health.body.error) || "the API answered " + health.status);
      return;
    }
    const jobs = health.body.jobs || {};
    const workers = health.body.workers || {};
    showNow({
      waiting: jobs.inQueue, running: jobs.inProgress, completedLastHour: null, failedLastHour: null,
      oldestWaitSeconds: null, workers: { idle: workers.idle, busy: workers.running, lost: null },
    });
    note.textContent = "No data for the charts: this API has no /stats route.";
    JP.clear(throughput, h("h3", {}, "Throughput"), h("p", { class: "empty" }, "No data"));
    JP.clear(latency, h("h3", {}, "Latency"), h("p", { class: "empty" }, "No data"));
  }

  async function purgeQueue() {
    const health = await JP.get("/health");
    if (health.status !== 200) {
      purgeStatus.textContent = "Cannot read the queue: " + (health.body.error || health.status);
      return;
    }
    const waiting = (health.body.jobs || {}).inQueue || 0;
    const ok = await JP.confirm(
      `Remove the ${JP.plural(waiting, "job")} waiting on endpoint ${JP.endpoint()}? Running jobs go on; this cannot be undone.`,
      `Purge ${JP.count(waiting)} waiting`);
    if (!ok) return;
    const answer = await JP.post("/purge-queue");
    purgeStatus.textContent = answer.status === 200
      ? `Purged: ${JP.count(answer.body.removed)} removed.`
      : "Purge failed: " + (answer.body.error || answer.status);
    poller.now();
  }

  const poller = JP.poll(refresh, 2000);
};
