// Workers: every process that serves the endpoint, from /workers: id,
// host, endpoints, version, slots in use, state (lost ones marked), the
// jobs it runs now and when it was last heard from. Read every 2 s.
"use strict";
JP.pages.workers = function (content) {
  const h = JP.h;
  const body = h("tbody", { id: "workers-body" });
  const message = h("p", { class: "note", id: "workers-note" });
  JP.clear(content, h("div", { class: "table-wrap" }, h("table", { id: "workers" },
    h("thead", {}, h("tr", {}, h("th", {}, "Worker"), h("th", {}, "Host"), h("th", { class: "hide-narrow" }, "Endpoints"),
      h("th", { class: "hide-narrow" }, "Version"), h("th", { class: "num" }, "Slots busy"), h("th", {}, "State"),
      h("th", {}, "Current jobs"), h("th", {}, "Last seen"))),
    body)), message);

  function jobs(list) {
    if (!Array.isArray(list) || !list.length) return "—";
    return list.flatMap((id, i) => [i ? ", " : null,
      h("a", { class: "mono", href: JP.link("/dashboard/jobs/" + encodeURIComponent(id)) }, JP.shortId(id, 8))]);
  }

  async function refresh() {
    const answer = await JP.get("/workers");
    if (answer.status !== 200) {
      message.textContent = "No data: " + ((answer.body && answer.body.error) || answer.status);
      return;
    }
    const workers = answer.body.workers || [];
    JP.clear(body, workers.map((w) => h("tr", { class: w.state === "lost" ? "lost" : null, "data-id": w.id },
      h("td", { class: "mono" }, w.id), h("td", {}, w.hostname || "—"),
      h("td", { class: "hide-narrow" }, (w.endpoints || []).join(", ")),
      h("td", { class: "hide-narrow" }, w.version || "—"),
      h("td", { class: "num" }, `${w.busy ?? 0} / ${w.slots ?? "—"}`),
      h("td", {}, JP.badge(w.state)),
      h("td", {}, jobs(w.currentJobs)),
      h("td", { title: JP.time(w.lastSeenAt) }, JP.ago(w.lastSeenAt)))));
    message.textContent = workers.length ? "" : "No worker serves this endpoint.";
  }

  JP.poll(refresh, 2000);
};
