// A small line chart in SVG, drawn from the API's figures: time on the x
// axis (local clock), a value axis with round ticks and its unit, a line
// per series (gaps where a bucket has no figure) and a legend. Colours and
// dash patterns come from the stylesheet's classes (s0..s3, dash), so the
// chart follows dark mode and needs no inline style.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 600, H = 220, L = 56, R = 12, T = 10, B = 28;

  function svg(tag, attrs, text) {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /** Round tick values from 0 to at least `max`. */
  function ticks(max) {
    if (!(max > 0)) max = 1;
    const raw = max / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    const out = [];
    for (let v = 0; v <= max + step * 0.999; v += step) out.push(v);
    return out;
  }

  function clock(t, spanMs) {
    const d = new Date(t);
    const hm = String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
    return spanMs > 26 * 3600e3 ? d.getDate() + "/" + (d.getMonth() + 1) + " " + hm : hm;
  }

  /**
   * Draws into `box`: `opts.series` is [{name, cls, dash, points: [[t, v|null]]}],
   * `opts.from`/`opts.to` the time span (ms), `opts.format(v)` a tick label,
   * `opts.unit` the value axis's unit.
   */
  JP.lineChart = function (box, opts) {
    const values = opts.series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null && v !== undefined);
    const yt = ticks(values.length ? Math.max(...values) : 0);
    const ymax = yt[yt.length - 1];
    const span = Math.max(1, opts.to - opts.from);
    const x = (t) => L + ((t - opts.from) / span) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    root.append(svg("title", {}, opts.title));
    for (const v of yt) {
      root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, opts.format(v)));
    }
    const axis = svg("g", { class: "axis" });
    axis.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
    axis.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B }));
    root.append(axis);
    const n = 6;
    for (let i = 0; i <= n; i++) {
      const t = opts.from + (span * i) / n;
      root.append(svg("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle" }, clock(t, span)));
    }
    for (const s of opts.series) {
      let d = "";
      const pts = s.points.filter(([t]) => t <= opts.to);
      pts.forEach(([t, v], i) => {
        if (v === null || v === undefined) return;
        const before = i > 0 && pts[i - 1][1] !== null && pts[i - 1][1] !== undefined;
        const after = i + 1 < pts.length && pts[i + 1][1] !== null && pts[i + 1][1] !== undefined;
        d += (before ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
        // A figure with none beside it would be an invisible line: a dot.
        if (!before && !after) {
          root.append(svg("circle", { class: "dot " + s.cls, cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5 }));
        }
      });
      if (d) root.append(svg("path", { class: "line " + s.cls + (s.dash ? " dash" : ""), d }));
    }
    const legend = JP.h("div", { class: "legend" },
      opts.series.map((s) => JP.h("span", {}, JP.h("span", { class: "key " + s.cls + (s.dash ? " dash" : "") }), s.name)),
      JP.h("span", {}, "Unit: " + opts.unit));
    JP.clear(box, JP.h("h3", {}, opts.title), root, legend);
    if (!values.length) box.append(JP.h("p", { class: "empty" }, "No jobs in this range yet."));
  };
})();
