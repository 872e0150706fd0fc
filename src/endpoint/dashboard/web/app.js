// What every dashboard page shares: the key (session storage, sent as the
// bearer header), the login form, the endpoint selector, calls to the
// public API, a bounded poller, and DOM helpers that only ever set text
// (never innerHTML), so a job's data can never become markup.
"use strict";
(function () {
  const KEY = "jobpipe.key";
  const EP = "jobpipe.endpoint";
  const JP = (window.JP = { pages: {} });

  /** An element: `h("td", {class: "num"}, "text", child, ...)`. */
  JP.h = function (tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    JP.append(el, children);
    return el;
  };
  JP.append = function (el, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  };
  JP.clear = function (el, ...children) {
    el.replaceChildren();
    return JP.append(el, children);
  };

  JP.key = () => sessionStorage.getItem(KEY) || "";
  JP.endpoint = function () {
    const fromUrl = new URLSearchParams(location.search).get("ep");
    if (fromUrl) sessionStorage.setItem(EP, fromUrl);
    return fromUrl || sessionStorage.getItem(EP) || "default";
  };
  /** A dashboard link that keeps the endpoint. */
  JP.link = function (path, params) {
    const q = new URLSearchParams(params || {});
    const ep = JP.endpoint();
    if (ep !== "default") q.set("ep", ep);
    const s = q.toString();
    return path + (s ? "?" + s : "");
  };

  /** Calls the API at `path` (under /v2/ENDPOINT unless it starts with
   * "//"); answers {status, body}; status 0 when the network failed. */
  JP.call = async function (method, path, body) {
    const url = path.startsWith("//")
      ? path.slice(1)
      : "/v2/" + encodeURIComponent(JP.endpoint()) + path;
    const headers = {};
    if (JP.key()) headers.Authorization = "Bearer " + JP.key();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (e) {
      return { status: 0, body: { error: "the API cannot be reached: " + e.message } };
    }
    let parsed = null;
    try {
      parsed = await response.json();
    } catch (e) {
      parsed = { error: "the API answered something that is not JSON" };
    }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      showLogin("The key was refused; log in again.");
    }
    return { status: response.status, body: parsed };
  };
  JP.get = (path) => JP.call("GET", path);
  JP.post = (path, body) => JP.call("POST", path, body === undefined ? {} : body);

  /** Runs `task` now and every `ms` while the tab is shown: one run at a
   * time, none while hidden, resumed when shown again. */
  JP.poll = function (task, ms) {
    let running = false;
    let again = false;
    let timer = null;
    let stopped = false;
    const tick = async () => {
      timer = null;
      if (stopped || running || document.hidden) return;
      running = true;
      try {
        await task();
      } finally {
        running = false;
        if (!stopped && !document.hidden) timer = setTimeout(tick, again ? 0 : ms);
        again = false;
      }
    };
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        if (timer) clearTimeout(timer);
        timer = null;
      } else if (!timer && !running) tick();
    });
    tick();
    return {
      stop() { stopped = true; if (timer) clearTimeout(timer); },
      /** Runs the task at once (after the one in flight, if any). */
      now() {
        if (running) { again = true; return; }
        if (timer) clearTimeout(timer);
        tick();
      },
    };
  };

  const STATUS_WORDS = {
    IN_QUEUE: "Waiting", IN_PROGRESS: "Running", COMPLETED: "Completed",
    FAILED: "Failed", CANCELLED: "Cancelled", TIMED_OUT: "Timed out",
    idle: "Idle", busy: "Busy", lost: "Lost",
  };
  JP.statusWord = (s) => STATUS_WORDS[s] || String(s);
  /** A status as a coloured badge that also says it in words. */
  JP.badge = (s) =>
    JP.h("span", { class: "st st-" + String(s).toLowerCase(), "data-status": s, title: s }, JP.statusWord(s));

  JP.duration = function (ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "—";
    if (ms < 1000) return Math.round(ms) + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    const m = s / 60;
    if (m < 60) return Math.floor(m) + " min " + Math.round(s % 60) + " s";
    const h = m / 60;
    if (h < 48) return Math.floor(h) + " h " + Math.round(m % 60) + " min";
    return Math.round(h / 24) + " d";
  };
  JP.ago = (t) => (t ? JP.duration(Date.now() - t) + " ago" : "—");
  JP.time = (t) => (t ? new Date(t).toLocaleString() : "—");
  /** A long id cut to its first `n` characters (the whole in a tooltip). */
  JP.shortId = (id, n = 13) =>
    JP.h("span", { title: id }, String(id).length > n + 1 ? String(id).slice(0, n) + "…" : String(id));
  JP.plural = (n, word) => `${JP.count(n)} ${word}${n === 1 ? "" : "s"}`;
  JP.count = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString());

  /** Asks in a modal dialog; resolves true for the confirming button. */
  JP.confirm = function (message, action) {
    return new Promise((resolve) => {
      const dialog = JP.h("dialog", { id: "confirm" });
      const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
      JP.append(dialog, [
        JP.h("p", {}, message),
        JP.h("div", { class: "row" },
          JP.h("span", { class: "spacer" }),
          JP.h("button", { type: "button", onclick: () => done(false) }, "Keep"),
          JP.h("button", { type: "button", class: "danger", id: "confirm-yes", onclick: () => done(true) }, action)),
      ]);
      dialog.addEventListener("cancel", () => resolve(false));
      document.body.append(dialog);
      dialog.showModal();
    });
  };

  JP.session = null;
  JP.canAct = () => Boolean(JP.session && JP.session.role === "submit");

  function showLogin(message) {
    const content = document.getElementById("content");
    const input = JP.h("input", { type: "password", id: "key", name: "key", autocomplete: "off", required: true });
    const error = JP.h("p", { class: "error", id: "login-error" }, message || "");
    const form = JP.h("form", { class: "panel login", id: "login" },
      JP.h("p", {}, "This endpoint API asks for a key. It stays in this tab only (session storage) and goes with each call as the bearer header."),
      JP.h("label", {}, "API key", input),
      JP.h("button", { type: "submit", class: "primary" }, "Log in"),
      error);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      const session = await loadSession();
      if (session && session.valid) location.reload();
      else {
        sessionStorage.removeItem(KEY);
        JP.clear(error, "That key is not one this API knows.");
      }
    });
    JP.clear(content, form);
    document.getElementById("title").textContent = "Log in";
    document.getElementById("tools").hidden = true;
    input.focus();
  }

  async function loadSession() {
    const headers = JP.key() ? { Authorization: "Bearer " + JP.key() } : {};
    try {
      const response = await fetch("/dashboard/session", { headers, cache: "no-store" });
      return await response.json();
    } catch (e) {
      return null;
    }
  }

  async function endpointSelector() {
    const select = document.getElementById("endpoint");
    const current = JP.endpoint();
    const { status, body } = await JP.get("//endpoints");
    const names = status === 200 && body && Array.isArray(body.endpoints) ? body.endpoints.slice() : [];
    if (!names.includes(current)) names.unshift(current);
    JP.clear(select, names.map((n) => JP.h("option", { value: n, selected: n === current }, n)));
    select.addEventListener("change", () => {
      sessionStorage.setItem(EP, select.value);
      const q = new URLSearchParams(location.search);
      q.set("ep", select.value);
      q.delete("cursor");
      location.search = q.toString();
    });
  }

  async function start() {
    const content = document.getElementById("content");
    const session = await loadSession();
    if (!session) {
      JP.clear(content, JP.h("p", { class: "error" }, "The API cannot be reached."));
      return;
    }
    JP.session = session;
    if (session.keysRequired && !session.valid) {
      showLogin(JP.key() ? "That key is not one this API knows." : "");
      return;
    }
    document.getElementById("tools").hidden = false;
    const who = document.getElementById("who");
    if (session.keysRequired) {
      who.textContent = (session.tenant || "key") + (session.role === "read" ? " (read only)" : "");
      const logout = document.getElementById("logout");
      logout.hidden = false;
      logout.addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });
    }
    for (const a of document.querySelectorAll(".nav a, a.brand")) a.href = JP.link(a.getAttribute("href"));
    await endpointSelector();
    const page = JP.pages[document.body.dataset.page];
    if (page) page(content);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
