// Jobs: the endpoint's jobs, newest first, from /jobs: filters by status
// and tenant, a search by id, keyset paging with the API's nextCursor (a
// stack of the cursors seen, for going back), and the shown page read again
// every 2 s while the tab is visible.
"use strict";
JP.pages.jobs = function (content) {
  const h = JP.h;
  const params = new URLSearchParams(location.search);
  const STATUSES = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"];
  const status = h("select", { name: "status", id: "filter-status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, JP.statusWord(s))));
  const tenant = h("input", { name: "tenant", id: "filter-tenant", placeholder: "Tenant", value: params.get("tenant") || "", size: 12 });
  const size = h("select", { name: "limit", id: "page-size", "aria-label": "Jobs per page" },
    ["50", "100", "200", "500"].map((n) => h("option", { value: n, selected: (params.get("limit") || "50") === n }, n + " a page")));
  const search = h("input", { name: "id", id: "search-id", placeholder: "Job id", size: 24, type: "search" });
  const filters = h("form", { class: "row filters", id: "filters" },
    status, tenant, size, h("button", { type: "submit" }, "Filter"),
    h("span", { class: "spacer" }), search, h("button", { type: "button", id: "search", onclick: find }, "Find"));
  const body = h("tbody", { id: "jobs-body" });
  const table = h("div", { class: "table-wrap" }, h("table", { id: "jobs" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Job"), h("th", {}, "Status"), h("th", { class: "hide-narrow" }, "Endpoint"),
      h("th", { class: "hide-narrow" }, "Tenant"), h("th", { class: "num hide-narrow" }, "Priority"), h("th", {}, "Age"),
      h("th", { class: "num" }, "Run time"), h("th", { class: "hide-narrow" }, "Worker"), h("th", { class: "num" }, "Attempts"))),
    body));
  const newer = h("button", { type: "button", id: "newer", onclick: back }, "← Newer");
  const older = h("button", { type: "button", id: "older", onclick: forward }, "Older →");
  const where = h("span", { class: "note", id: "page-info" });
  const message = h("p", { class: "note", id: "jobs-note" });
  JP.clear(content, filters, table, message, h("div", { class: "row pager" }, newer, older, where));

  // The cursors of the pages before this one; the current page's cursor.
  const cursors = [];
  let cursor = null;
  let next = null;
  let found = null;

  filters.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams(location.search);
    for (const [k, el] of [["status", status], ["tenant", tenant], ["limit", size]]) {
      if (el.value.trim()) q.set(k, el.value.trim()); else q.delete(k);
    }
    history.replaceState(null, "", "?" + q.toString());
    cursors.length = 0;
    cursor = null;
    found = null;
    poller.now();
  });
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); find(); } });

  function query() {
    const q = new URLSearchParams();
    if (status.value) q.set("status", status.value);
    if (tenant.value.trim()) q.set("tenant", tenant.value.trim());
    q.set("limit", size.value);
    if (cursor) q.set("cursor", cursor);
    return q.toString();
  }

  function row(job) {
    const run = job.startedAt ? (job.finishedAt || Date.now()) - job.startedAt : null;
    return h("tr", { "data-id": job.id },
      h("td", { class: "mono" }, h("a", { href: JP.link("/dashboard/jobs/" + encodeURIComponent(job.id)) }, JP.shortId(job.id, 8))),
      h("td", {}, JP.badge(job.status)),
      h("td", { class: "hide-narrow" }, job.endpoint || JP.endpoint()),
      h("td", { class: "hide-narrow" }, job.tenant || "—"),
      h("td", { class: "num hide-narrow" }, job.priority ?? 0),
      h("td", { title: JP.time(job.createdAt) }, JP.ago(job.createdAt)),
      h("td", { class: "num" }, JP.duration(run)),
      h("td", { class: "mono hide-narrow" }, job.workerId ? JP.shortId(job.workerId, 16) : "—"),
      h("td", { class: "num" }, typeof job.attempts === "number" ? job.attempts : job.attemptCount ?? 0));
  }

  function show(jobs, emptyText) {
    JP.clear(body, jobs.map(row));
    message.textContent = jobs.length ? "" : emptyText;
    newer.disabled = !found && cursors.length === 0;
    older.disabled = Boolean(found) || !next;
    where.textContent = found ? "Search result" : `Page ${cursors.length + 1}` + (jobs.length ? ` · ${JP.plural(jobs.length, "job")}` : "");
  }

  async function refresh() {
    if (found) return;
    const answer = await JP.get("/jobs?" + query());
    if (answer.status !== 200) {
      message.textContent = "No data: " + ((answer.body && answer.body.error) || "the API answered " + answer.status);
      return;
    }
    next = answer.body.nextCursor || null;
    show(answer.body.jobs || [], "No jobs match.");
  }

  async function find() {
    const id = search.value.trim();
    if (!id) { found = null; poller.now(); return; }
    const answer = await JP.get("/jobs/" + encodeURIComponent(id));
    found = id;
    show(answer.status === 200 ? [answer.body] : [], `No job ${id} on endpoint ${JP.endpoint()}.`);
  }

  function forward() {
    if (!next) return;
    cursors.push(cursor);
    cursor = next;
    poller.now();
  }

  function back() {
    if (found) { found = null; search.value = ""; poller.now(); return; }
    if (!cursors.length) return;
    cursor = cursors.pop();
    poller.now();
  }

  const poller = JP.poll(refresh, 2000);
};
