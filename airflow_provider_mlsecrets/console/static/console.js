/* The mlsecrets security console.
 *
 * Every figure on the page comes from the vault's read-only routes (../v1/insight/...), asked
 * with the signed-in Airflow user's session: the browser sends Airflow's HttpOnly session
 * cookie, and the server turns it into the vault's credential. This script never sees a token,
 * never asks for a value (no route it calls returns one), stores nothing (no localStorage, no
 * cache: every request is no-store), and builds the page with textContent only, never HTML
 * from data.
 */
(function () {
  "use strict";

  const API = new URL("../v1/", window.location.href);
  const view = document.getElementById("view");
  const notice = document.getElementById("notice");
  const DAY = 86400000;
  const STATES = ["none", "ok", "due", "overdue", "failed", "in grace", "half done"];
  const OUTCOMES = ["allowed", "denied", "not_found", "error"];
  let charts = [];
  let generation = 0; // a newer navigation makes an older one's late answers moot
  // what the vault lets this user open (GET insight/me, at the start); null: every view
  let allowed = null;
  let mayAudit = true;

  // -- DOM ------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "value") el.value = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function slug(text) { return String(text || "none").replace(/[^a-z0-9_]+/gi, "-").toLowerCase(); }
  function badge(text) { return h("span", { class: "badge " + slug(text) }, text || "none"); }
  function caps(list, deny) {
    if (!list || !list.length) return h("span", { class: "muted" }, "—");
    return h("span", { class: "caps" }, list.map((c) => h("span", { class: deny ? "cap deny" : "cap" }, c)));
  }
  function table(headers, rows, rowClass) {
    if (!rows.length) return h("div", { class: "table-wrap" }, h("div", { class: "empty" }, "Nothing to show."));
    return h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))),
      h("tbody", {}, rows.map((cells, i) => h("tr", { class: rowClass ? rowClass(i) : null },
        cells.map((c) => h("td", {}, c)))))));
  }
  function secretLink(path) {
    if (!mayAudit) return h("span", { class: "mono" }, path); // its page needs audit
    return h("a", { href: "#/secret/" + encodeURI(path), class: "mono" }, path);
  }
  function principalLink(name) {
    return h("a", { href: "#/principal/" + encodeURIComponent(name), class: "mono" }, name);
  }

  // -- time -----------------------------------------------------------------------------
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toISOString().replace("T", " ").slice(0, 16) + " UTC";
  }
  function days(n) {
    if (n === null || n === undefined) return "—";
    if (n < 1) return Math.round(n * 24) + " h";
    return (n < 10 ? n.toFixed(1) : Math.round(n)) + " d";
  }
  function isoAgo(ms) { return new Date(Date.now() - ms).toISOString(); }
  function localInput(iso) { return iso ? iso.slice(0, 16) : ""; }
  function fromLocalInput(v) { return v ? new Date(v + ":00Z").toISOString() : ""; }

  // -- the vault ------------------------------------------------------------------------
  class Refused extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function call(route, params, method, body) {
    const url = new URL(route, API);
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
    }
    const init = {
      method: method || "GET", credentials: "same-origin", cache: "no-store", redirect: "error",
      headers: { "X-MLSecrets-Console": "1", Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new Refused(0, "the vault service did not answer (" + e.message + ")");
    }
    if (response.ok) return response;
    let message = response.status + " " + response.statusText;
    try {
      const data = await response.json();
      message = data.message || (typeof data.detail === "string" ? data.detail : message);
    } catch (e) { /* not JSON: keep the status line */ }
    if (response.status === 404 && route.startsWith("insight/") && !message.includes("not found")) {
      message = "this vault service has no " + route.split("?")[0] + " route yet (" + message + ")";
    }
    throw new Refused(response.status, message);
  }
  // how many answers the page still waits for, on <body data-busy> (the browser test waits on it)
  let busy = 1; // the start, as the HTML says
  function mark(delta) { busy += delta; document.body.dataset.busy = String(busy); }
  async function insight(route, params) {
    mark(1);
    try { return await (await call("insight/" + route, params)).json(); } finally { mark(-1); }
  }

  function refuse(err) {
    // the whole console is refused: say why, in the vault's own words
    document.body.classList.add("refused");
    destroyCharts();
    clear(view);
    const signedOut = /no credential|not authenticated|missing/i.test(err.message) && err.status === 401;
    append(view, [h("section", { class: "refusal", id: "refusal" },
      h("h2", {}, signedOut ? "Sign in to Airflow first" : "The vault refused you"),
      h("p", {}, signedOut
        ? "The console uses your Airflow session, and this browser has none."
        : "Airflow knows who you are, but the vault does not let you see this console. Its answer:"),
      h("p", { class: "reason" }, err.message),
      h("p", { class: "muted" }, signedOut
        ? "Sign in through Airflow's login page, then open Secrets again."
        : "A security engineer can bind your Airflow user or one of your Airflow roles to a vault " +
          "principal (for instance: mlsecrets principal create airflow-user:NAME --role auditor). " +
          "Auditors and security engineers see the whole console; a viewer sees the secrets it may list."))]);
  }
  function failed(err, where) {
    if (err instanceof Refused && err.status === 401) { refuse(err); return; }
    const box = h("div", { class: "notice error", role: "alert" },
      (err.status === 403 ? "The vault does not let you see this: " : "Could not load this view: ") + err.message);
    if (where) { clear(where); where.appendChild(box); } else { clear(view); view.appendChild(box); }
  }
  function flash(message, isError) {
    notice.hidden = false;
    notice.className = isError ? "notice error" : "notice";
    clear(notice);
    append(notice, [message]);
  }

  // -- theme: follow Airflow's (its <html> class, next-themes), else the system's -------
  function parentMode() {
    try {
      if (window.parent === window) return null;
      const root = window.parent.document.documentElement;
      if (root.classList.contains("dark")) return "dark";
      if (root.classList.contains("light")) return "light";
    } catch (e) { /* another origin: cannot read */ }
    return null;
  }
  function storedMode() {
    try {
      const v = window.localStorage.getItem("theme"); // Airflow's own choice (read only)
      return v === "dark" || v === "light" ? v : null;
    } catch (e) { return null; }
  }
  const media = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;
  function mode() { return parentMode() || storedMode() || (media && media.matches ? "dark" : "light"); }
  function applyTheme() {
    const next = mode();
    if (document.documentElement.dataset.theme !== next) {
      document.documentElement.dataset.theme = next;
      if (charts.length) route(); // redraw the charts in the new colours
    }
  }
  applyTheme();
  if (media && media.addEventListener) media.addEventListener("change", applyTheme);
  window.addEventListener("storage", applyTheme);
  try {
    if (window.parent !== window) {
      new MutationObserver(applyTheme).observe(window.parent.document.documentElement,
        { attributes: true, attributeFilter: ["class", "style"] });
    }
  } catch (e) { /* not readable: the system's preference and storage events remain */ }

  // -- charts (Chart.js, vendored) ------------------------------------------------------
  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
  function destroyCharts() { charts.forEach((c) => c.destroy()); charts = []; }
  function chart(holder, config) {
    if (!window.Chart) { holder.appendChild(h("p", { class: "muted" }, "The charting library did not load.")); return; }
    const canvas = h("canvas", { role: "img", "aria-label": config.label || "chart" });
    holder.appendChild(canvas);
    const fg = css("--muted"), grid = css("--border");
    window.Chart.defaults.color = fg;
    window.Chart.defaults.borderColor = grid;
    window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    charts.push(new window.Chart(canvas, config));
  }
  function activityChart(holder, buckets, bucket) {
    const labels = buckets.map((b) => {
      const d = new Date(b.start).toISOString();
      return bucket === "day" ? d.slice(5, 10) : d.slice(5, 13).replace("T", " ") + "h";
    });
    chart(holder, {
      type: "bar", label: "accesses and denials over time",
      data: { labels, datasets: [
        { label: "allowed", data: buckets.map((b) => b.allowed), backgroundColor: css("--ok"), stack: "s" },
        { label: "denied", data: buckets.map((b) => b.denied), backgroundColor: css("--bad"), stack: "s" }] },
      options: { scales: { x: { stacked: true, ticks: { maxTicksLimit: 12 } }, y: { stacked: true, beginAtZero: true } } },
    });
  }
  function ageChart(holder, rows) {
    // the secrets furthest through (or past) their rotation interval, age against policy
    const ranked = rows.map((r) => (Array.isArray(r) ? { path: r[0], age: r[1], policy: r[2] }
      : { path: r.path, age: r.age_days, policy: r.interval_days }))
      .filter((r) => typeof r.age === "number" && (r.policy === null || r.policy === undefined || typeof r.policy === "number"))
      .map((r) => ({ path: r.path, age: r.age, policy: r.policy === undefined ? null : r.policy }))
      .sort((a, b) => (b.policy ? b.age / b.policy : -1) - (a.policy ? a.age / a.policy : -1)
        || b.age - a.age).slice(0, 20);
    chart(holder, {
      type: "bar", label: "secret age against rotation policy",
      data: { labels: ranked.map((r) => r.path), datasets: [
        { label: "age (days)", data: ranked.map((r) => +r.age.toFixed(2)),
          backgroundColor: ranked.map((r) => (r.policy && r.age > r.policy ? css("--bad") : css("--accent"))) },
        { label: "rotation interval (days)", data: ranked.map((r) => (r.policy === null ? null : +r.policy.toFixed(2))),
          backgroundColor: css("--border") }] },
      options: { indexAxis: "y", scales: { x: { beginAtZero: true } } },
    });
  }
  function reachChart(holder, edges) {
    edges = edges.map((e) => (Array.isArray(e) ? e : [e.dag_id, e.path, e.allowed]));
    const dags = [...new Set(edges.map((e) => e[0]))].sort();
    const paths = [...new Set(edges.map((e) => e[1]))].sort();
    const most = Math.max(1, ...edges.map((e) => e[2]));
    chart(holder, {
      type: "bubble", label: "which DAG reaches which secret",
      data: { datasets: [{ label: "allowed uses", backgroundColor: css("--accent"),
        data: edges.map((e) => ({ x: e[1], y: e[0], r: 4 + 14 * Math.sqrt(e[2] / most), uses: e[2] })) }] },
      options: {
        scales: { x: { type: "category", labels: paths, offset: true, ticks: { autoSkip: false, maxRotation: 60 } },
          y: { type: "category", labels: dags, offset: true } },
        plugins: { legend: { display: false }, tooltip: { callbacks: {
          label: (c) => c.raw.y + " → " + c.raw.x + ": " + c.raw.uses + " uses" } } },
      },
    });
  }

  // -- views ----------------------------------------------------------------------------
  function params(query) { return Object.fromEntries(new URLSearchParams(query || "")); }
  function go(name, query) {
    const q = new URLSearchParams(Object.entries(query).filter((kv) => kv[1] !== "" && kv[1] !== undefined)).toString();
    window.location.hash = "#/" + name + (q ? "?" + q : "");
  }
  const SINCE = { "24h": DAY, "7d": 7 * DAY, "30d": 30 * DAY, "90d": 90 * DAY };

  async function overview(q, gen) {
    const window_ = SINCE[q.window] ? q.window : "7d";
    const bucket = SINCE[window_] > 7 * DAY ? "day" : "hour";
    const since = isoAgo(SINCE[window_]);
    const cards = h("div", { class: "cards" });
    const act = h("div", { class: "chart" }), age = h("div", { class: "chart" }), reach = h("div", { class: "chart tall" });
    append(view, [h("h2", {}, "Overview"), cards,
      h("div", { class: "filters" }, h("label", { class: "field" }, "Window",
        h("select", { id: "window", onchange: (e) => go("overview", { window: e.target.value }) },
          Object.keys(SINCE).map((k) => h("option", { value: k, selected: k === window_ }, k))))),
      h("div", { class: "grid2" },
        h("section", { class: "panel" }, h("h3", {}, "Accesses and denials over time"), act),
        h("section", { class: "panel" }, h("h3", {}, "Secret age against rotation policy"), age)),
      h("section", { class: "panel" }, h("h3", {}, "Which DAG reaches which secret"), reach)]);
    const card = (n, l, alert, href) => h(href ? "a" : "div", { class: alert ? "card alert" : "card", href },
      h("div", { class: "n" }, n), h("div", { class: "l" }, l));
    // the cards in a fixed order (what needs attention first), whichever answer comes first
    const slot = () => cards.appendChild(h("div", { class: "slot" }));
    const [alertSlot, askSlot, rotationSlot, auditSlot, inventorySlot] = [slot(), slot(), slot(), slot(), slot()];
    const tasks = [
      insight("inventory", { limit: 1 }).then((p) => inventorySlot.appendChild(card(p.total, "secrets you may list"))),
      insight("rotation").then((rows) => {
        const count = (s) => rows.filter((r) => r.state === s).length;
        rotationSlot.append(card(count("overdue"), "overdue for rotation", count("overdue") > 0),
          card(count("failed"), "rotations failed", count("failed") > 0), card(count("due"), "due for rotation"));
      }),
      insight("audit/health").then((health) => {
        const last = health.last_verification || null;
        const ok = last && (typeof last.ok === "boolean" ? last.ok : last.outcome === "allowed");
        auditSlot.appendChild(card(last ? (ok ? "verified" : "failed") : "never", "audit trail " +
          (last ? "checked " + when(last.ts) : "verification"), last && !ok));
      }),
      insight("alerts").then((rows) => {
        setCount("alerts", rows.length);
        alertSlot.appendChild(card(rows.length, "open alerts", rows.length > 0, "#/alerts"));
      }),
      insight("approvals").then((rows) => {
        const n = setCount("approvals", rows.filter((r) => r.state === "pending").length);
        askSlot.appendChild(card(n, "break-glass requests waiting", n > 0, "#/alerts"));
      }),
      insight("activity", { since, bucket }).then((b) => gen === generation && activityChart(act, b, bucket)),
      insight("age").then((rows) => gen === generation && ageChart(age, rows)),
      insight("reach", { since }).then((edges) => gen === generation && (edges.length ? reachChart(reach, edges)
        : reach.appendChild(h("p", { class: "muted" }, "No DAG reached a secret in this window.")))),
    ];
    const problems = h("div", {});
    view.insertBefore(problems, cards.nextSibling);
    const holders = [null, null, null, null, null, act, age, reach];
    await Promise.all(tasks.map((t, i) => t.catch((e) => {
      if (gen !== generation) return;
      if (holders[i]) { failed(e, holders[i]); return; }
      if (e.status === 401) { refuse(e); return; }
      problems.appendChild(h("div", { class: "notice error" }, "Could not load a figure: " + e.message));
    })));
  }

  async function inventory(q, gen) {
    const offset = parseInt(q.offset || "0", 10) || 0, limit = 50;
    const search = h("input", { type: "search", id: "search", placeholder: "path, owner or description", value: q.search || "" });
    const team = h("input", { type: "text", id: "team", placeholder: "any", value: q.team || "" });
    const state = h("select", { id: "state" }, h("option", { value: "" }, "any"),
      STATES.map((s) => h("option", { value: s, selected: q.state === s }, s)));
    const apply = () => go("inventory", { search: search.value.trim(), team: team.value.trim(), state: state.value });
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { if (gen === generation) apply(); }, 400); // not once the user moved on
    });
    team.addEventListener("change", apply);
    state.addEventListener("change", apply);
    const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    append(view, [h("h2", {}, "Inventory"),
      h("div", { class: "filters" }, h("label", { class: "field" }, "Search", search),
        h("label", { class: "field" }, "Team", team), h("label", { class: "field" }, "Rotation", state)), body]);
    if (q.search) { search.focus(); search.setSelectionRange(search.value.length, search.value.length); }
    let page;
    try {
      page = await insight("inventory", { search: q.search, team: q.team, state: q.state, offset, limit, sort: q.sort });
    } catch (e) { failed(e, body); return; }
    if (gen !== generation) return;
    clear(body);
    append(body, [table(["Path", "Team", "Owner", "Description", "Version", "Age", "Rotation", "State", "Next due"],
      page.items.map((s) => [secretLink(s.path), s.team || "—", s.owner || "—", s.description || "",
        s.current_version === null ? "—" : "v" + s.current_version, days(s.age_days), s.schedule || "—",
        [badge(s.rotation_state), s.deleted ? [" ", badge("deleted")] : null], when(s.next_due_at)])),
    h("div", { class: "pager" },
      h("button", { type: "button", disabled: offset <= 0, onclick: () => go("inventory", { ...q, offset: Math.max(0, offset - limit) }) }, "Previous"),
      h("span", {}, page.total ? `${offset + 1}–${offset + page.items.length} of ${page.total}` : "0 secrets"),
      h("button", { type: "button", disabled: offset + page.items.length >= page.total, onclick: () => go("inventory", { ...q, offset: offset + limit }) }, "Next"))]);
  }

  function eventsTable(events) {
    return table(["Time", "Principal", "Action", "Path", "DAG / task", "Outcome", "Reason"],
      events.map((e) => [when(e.ts), principalLink(e.principal), h("span", { class: "mono" }, e.action),
        e.path ? secretLink(e.path) : "—", e.dag_id ? e.dag_id + (e.task_id ? " / " + e.task_id : "") : "—",
        badge(e.outcome), e.justification ? [e.reason || "", h("div", { class: "why" }, "Why: " + e.justification)] : e.reason || ""]),
      (i) => (events[i].outcome === "denied" ? "denied" : null));
  }

  async function secret(path, gen) {
    const d = await insight("secrets/" + encodeURI(path));
    if (gen !== generation) return;
    const s = d.secret;
    append(view, [h("p", {}, h("a", { href: "#/inventory" }, "← Inventory")),
      h("h2", { class: "mono" }, s.path),
      h("dl", { class: "meta" }, h("dt", {}, "Owner"), h("dd", {}, s.owner || "—"),
        h("dt", {}, "Description"), h("dd", {}, s.description || "—"), h("dt", {}, "Team"), h("dd", {}, s.team || "—"),
        h("dt", {}, "Current version"), h("dd", {}, s.current_version === null ? "—" : "v" + s.current_version),
        h("dt", {}, "Age"), h("dd", {}, days(s.age_days)), h("dt", {}, "Rotation"),
        h("dd", {}, s.schedule || "none", " ", badge(s.rotation_state), s.next_due_at ? " next due " + when(s.next_due_at) : "")),
      h("h3", {}, "Versions"),
      table(["Version", "State", "Key", "Created by", "Created", "Destroyed"], d.versions.map((v) => [
        "v" + v.version, badge(v.state), h("span", { class: "mono" }, v.kek_id), v.created_by, when(v.created_at), when(v.destroyed_at)])),
      h("h3", {}, "Who can reach it"),
      table(["Principal", "Kind", "Role", "Status", "Allowed", "Denied", "Because"], d.reach.map((r) => [
        principalLink(r.principal), r.kind, r.role, badge(r.status), caps(r.allowed), caps(r.denied, true), (r.via || []).join("; ")])),
      h("h3", {}, "Who did (recent access)"), eventsTable(d.recent),
      h("h3", {}, "Rotation history"), eventsTable(d.rotations)]);
  }

  async function principals(q, gen) {
    const since = q.since || "90d";
    const sel = h("select", { id: "since", onchange: (e) => go("principals", { since: e.target.value }) },
      ["7d", "30d", "90d", "365d"].map((k) => h("option", { value: k, selected: k === since }, k)));
    append(view, [h("h2", {}, "Principals"), h("div", { class: "filters" }, h("label", { class: "field" }, "Use in the last", sel))]);
    const rows = await insight("principals", { since: isoAgo(parseInt(since, 10) * DAY) });
    if (gen !== generation) return;
    view.appendChild(table(["Principal", "Kind", "Role", "Status", "Grants", "Unused grants", "Last seen"],
      rows.map((p) => [principalLink(p.name), p.kind, p.role, badge(p.status), p.grants,
        p.unused_grants ? h("span", { class: "badge due" }, p.unused_grants) : "0", when(p.last_seen_at)])));
  }

  async function principal(name, gen) {
    const d = await insight("principals/" + encodeURIComponent(name));
    if (gen !== generation) return;
    const p = d.row;
    append(view, [h("p", {}, h("a", { href: "#/principals" }, "← Principals")), h("h2", { class: "mono" }, p.name),
      h("dl", { class: "meta" }, h("dt", {}, "Kind"), h("dd", {}, p.kind), h("dt", {}, "Role"), h("dd", {}, p.role),
        h("dt", {}, "Status"), h("dd", {}, badge(p.status)), h("dt", {}, "Last seen"), h("dd", {}, when(p.last_seen_at))),
      h("h3", {}, "Grants"),
      table(["Pattern", "Effect", "Capabilities", "Granted", "Last used", "Uses"], d.grants.map((g) => [
        h("span", { class: "mono" }, g.pattern), badge(g.effect === "deny" ? "denied" : "allowed"), g.capabilities,
        when(g.created_at), g.last_used_at ? when(g.last_used_at) : badge("never used"), g.uses])),
      h("h3", {}, "Effective access"),
      table(["Secret", "Allowed"], d.reach.map((r) => [secretLink(r[0]), caps(r[1])]))]);
  }

  async function rotation(q, gen) {
    const rows = await insight("rotation");
    if (gen !== generation) return;
    const order = { failed: 0, overdue: 1, "half done": 2, due: 3, "in grace": 4, ok: 5, none: 6 };
    rows.sort((a, b) => (order[a.state] ?? 9) - (order[b.state] ?? 9) || String(a.status.next_due_at).localeCompare(b.status.next_due_at));
    const count = (s) => rows.filter((r) => r.state === s).length;
    const timeline = h("div", { class: "chart" });
    append(view, [h("h2", {}, "Rotation"),
      h("div", { class: "cards" }, ["overdue", "failed", "due", "in grace", "half done", "ok"].map((s) =>
        h("div", { class: (s === "overdue" || s === "failed") && count(s) ? "card alert" : "card" },
          h("div", { class: "n" }, count(s)), h("div", { class: "l" }, s)))),
      h("section", { class: "panel" }, h("h3", {}, "Timeline: when each secret is due"), timeline),
      h("h3", {}, "Schedules"),
      table(["Secret", "Schedule", "State", "Next due", "Step", "Grace until", "Last result", "Reason"],
        rows.map((r) => [secretLink(r.status.path), r.status.schedule, badge(r.state), when(r.status.next_due_at),
          r.status.step || "—", when(r.status.invalidate_after), r.status.last_result ? badge(r.status.last_result) : "—",
          r.status.last_error || ""]),
        (i) => (rows[i].state === "failed" || rows[i].state === "overdue" ? "denied" : null))]);
    if (!rows.length) { timeline.appendChild(h("p", { class: "muted" }, "No secret has a rotation policy.")); return; }
    const colour = { failed: "--bad", overdue: "--bad", due: "--warn", "in grace": "--info", "half done": "--odd", ok: "--ok" };
    const shown = rows.slice(0, 40), now = Date.now();
    chart(timeline, {
      type: "scatter", label: "rotation timeline",
      data: { datasets: [...new Set(shown.map((r) => r.state))].map((state) => ({
        label: state, backgroundColor: css(colour[state] || "--muted"), pointRadius: 6,
        data: shown.filter((r) => r.state === state).map((r) => ({ x: Date.parse(r.status.next_due_at), y: r.status.path })) })) },
      options: {
        scales: { y: { type: "category", labels: shown.map((r) => r.status.path), offset: true },
          x: { type: "linear", suggestedMin: now - 7 * DAY, suggestedMax: now + 30 * DAY,
            ticks: { callback: (v) => new Date(v).toISOString().slice(0, 10) } } },
        plugins: { tooltip: { callbacks: { label: (c) => c.raw.y + ": due " + when(new Date(c.raw.x).toISOString()) } } },
      },
    });
  }

  const AUDIT_FILTERS = ["principal", "path_prefix", "dag_id", "action", "outcome", "since", "until"];
  async function audit(q, gen) {
    const filters = {};
    AUDIT_FILTERS.forEach((k) => { if (q[k]) filters[k] = q[k]; });
    const field = (k, label, placeholder) => h("label", { class: "field" }, label,
      h("input", { type: "text", name: k, id: "f-" + k, placeholder, value: q[k] || "" }));
    const outcome = h("select", { name: "outcome", id: "f-outcome" }, h("option", { value: "" }, "any"),
      OUTCOMES.map((o) => h("option", { value: o, selected: q.outcome === o }, o)));
    const since = h("input", { type: "datetime-local", name: "since", id: "f-since", value: localInput(q.since) });
    const until = h("input", { type: "datetime-local", name: "until", id: "f-until", value: localInput(q.until) });
    const form = h("div", { class: "filters" }, field("principal", "Principal", "dag:train"),
      field("path_prefix", "Path prefix", "connections/"), field("dag_id", "DAG", "any"),
      field("action", "Action", "secret.inject"), h("label", { class: "field" }, "Outcome", outcome),
      h("label", { class: "field" }, "Since (UTC)", since), h("label", { class: "field" }, "Until (UTC)", until),
      h("button", { type: "button", id: "apply", class: "primary", onclick: () => {
        const next = {};
        form.querySelectorAll("input[type=text]").forEach((i) => { next[i.name] = i.value.trim(); });
        next.outcome = outcome.value; next.since = fromLocalInput(since.value); next.until = fromLocalInput(until.value);
        go("audit", next);
      } }, "Apply"),
      h("button", { type: "button", id: "export", onclick: () => exportRange(filters) }, "Export this range"));
    const health = h("section", { class: "panel" }, h("p", { class: "muted" }, "Loading…"));
    const act = h("div", { class: "chart" });
    const list = h("div", { id: "timeline" }, h("p", { class: "muted" }, "Loading…"));
    append(view, [h("h2", {}, "Audit"), form, list, h("div", { class: "grid2 below" },
      h("section", { class: "panel" }, h("h3", {}, "Accesses and denials, last 7 days"), act), health)]);
    insight("audit/health").then((d) => gen === generation && healthPanel(health, d)).catch((e) => failed(e, health));
    insight("activity", { since: isoAgo(7 * DAY), bucket: "hour" }).then((b) => gen === generation && activityChart(act, b, "hour"))
      .catch((e) => failed(e, act));
    let before = q.before_chain ? { before_chain: q.before_chain, before_seq: q.before_seq } : {};
    const rows = [];
    const more = async () => {
      const page = await insight("audit", { ...filters, ...before, limit: 100 });
      if (gen !== generation) return;
      rows.push(...page.items);
      clear(list);
      append(list, [h("p", { class: "muted" }, `${rows.length} of ${page.total} records, newest first; denials highlighted.`),
        eventsTable(rows)]);
      const last = page.items[page.items.length - 1];
      const next = page.next_before || (last && rows.length < page.total ? [last.chain, last.seq] : null);
      if (next) {
        before = { before_chain: next[0], before_seq: next[1] };
        list.appendChild(h("div", { class: "pager" }, h("button", { type: "button", id: "older", onclick: () => more().catch((e) => failed(e, list)) }, "Older")));
      }
    };
    await more().catch((e) => failed(e, list));
  }

  function healthPanel(holder, d) {
    clear(holder);
    const last = d.last_verification || null;
    const chains = Array.isArray(d.chains) ? d.chains : [];
    const wanted = ["chain", "records", "seq", "hash", "mark", "unmarked"]; // the head, its mark
    const keys = chains.length ? wanted.filter((k) => k in chains[0]) : [];
    append(holder, [h("h3", {}, "Audit trail health"),
      h("dl", { class: "meta" }, h("dt", {}, "Last verification"),
        h("dd", {}, last ? [when(last.ts), " ", badge(last.ok === false ? "failed" : last.ok ? "ok" : last.outcome),
          " by ", last.principal || "?", h("div", { class: "muted" }, last.reason || "")] : "never")),
      chains.length ? table(keys.map((k) => ({ seq: "head seq", hash: "head hash", mark: "HSM mark" }[k] || k)), chains.map((c) => keys.map((k) => {
        const v = c[k];
        if (v === null || v === undefined) return "—";
        if (typeof v === "object" && "seq" in v) return h("span", { title: v.at ? "marked " + when(v.at) : null },
          "seq " + v.seq + (v.generation !== undefined ? " · gen " + v.generation : ""));
        if (typeof v === "object") return h("span", { class: "mono" }, JSON.stringify(v));
        return typeof v === "string" && v.length > 24 ? h("span", { class: "mono", title: v }, v.slice(0, 16) + "…") : String(v);
      }))) : h("p", { class: "muted" }, "No chain has a record yet.")]);
    const rest = Object.entries(d).filter(([k]) => !["chains", "last_verification"].includes(k));
    if (rest.length) holder.appendChild(h("dl", { class: "meta" }, rest.map(([k, v]) =>
      [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))])));
  }

  async function exportRange(filters) {
    const button = document.getElementById("export");
    button.disabled = true;
    try {
      const response = await call("insight/audit/export", filters);
      const blob = await response.blob();
      const link = h("a", { href: URL.createObjectURL(blob), download: "mlsecrets-audit-" + new Date().toISOString().slice(0, 19).replace(/:/g, "") + ".jsonl" });
      document.body.appendChild(link); link.click(); link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
      flash("Exported the filtered range (" + blob.size + " bytes, JSON lines).");
    } catch (e) { flash("Export failed: " + e.message, true); }
    finally { button.disabled = false; }
  }

  async function keys(q, gen) {
    const rows = await insight("keys");
    if (gen !== generation) return;
    append(view, [h("h2", {}, "Keys"), h("p", { class: "muted" },
      "Key-encryption keys in the HSM; each wraps the data keys of secret versions. After a key rotation, re-wrap moves every data key to the current key."),
      table(["Key", "Version", "State", "Created", "Sensitive", "Extractable", "Wraps", "Re-wrap"], rows.map((r) => {
        const total = r.wraps + r.pending_rewrap;
        return [h("span", { class: "mono" }, r.key.label), r.key.version, badge(r.key.state), when(r.key.created_at),
          r.key.sensitive === null ? "?" : r.key.sensitive ? "yes" : "no",
          r.key.extractable === null ? "?" : r.key.extractable ? badge("failed") : "no", r.wraps,
          r.pending_rewrap ? [h("progress", { max: total || 1, value: r.wraps }), " " + r.pending_rewrap + " pending"]
            : h("span", { class: "muted" }, "nothing pending")];
      }))]);
  }

  // -- alerts and break-glass requests ---------------------------------------------------
  // the tab's count: open alerts and requests waiting for a second engineer (null: unknown)
  const counts = { alerts: null, approvals: null };
  function setCount(kind, n) {
    counts[kind] = n;
    const el = document.getElementById("alert-count");
    const total = (counts.alerts || 0) + (counts.approvals || 0);
    clear(el);
    el.hidden = total === 0;
    if (!total) return n;
    append(el, [String(total)]);
    el.title = [counts.alerts ? counts.alerts + " open alert" + (counts.alerts > 1 ? "s" : "") : null,
      counts.approvals ? counts.approvals + " break-glass request" + (counts.approvals > 1 ? "s" : "") + " waiting" : null]
      .filter(Boolean).join(", ");
    el.setAttribute("aria-label", el.title);
    return n;
  }
  function refreshCounts() {
    insight("alerts").then((rows) => setCount("alerts", rows.length)).catch(() => {});
    insight("approvals").then((rows) => setCount("approvals", rows.filter((r) => r.state === "pending").length))
      .catch(() => {});
  }
  function span(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 3600) return Math.round(seconds / 60) + " min";
    if (seconds < 2 * DAY / 1000) return +(seconds / 3600).toFixed(1) + " h";
    return +(seconds / 86400).toFixed(1) + " d";
  }
  function delivery(a) {
    const to = (a.delivered_to || []).join(", ");
    if (a.delivered_at) return [badge("delivered"), h("div", { class: "muted" }, (to ? "to " + to + ", " : "") + when(a.delivered_at))];
    if (a.last_error) return [badge("retrying"), h("div", { class: "muted" },
      a.attempts + " attempt" + (a.attempts === 1 ? "" : "s") + (to ? ", sent to " + to : "") + ": " + a.last_error)];
    return [badge("not sent"), h("div", { class: "muted" }, to ? "sent to " + to + " so far" : "no notifier has it yet")];
  }
  function details(d) {
    const entries = Object.entries(d || {}).filter(([, v]) => v !== null && v !== undefined && v !== "");
    if (!entries.length) return null;
    return h("div", { class: "muted" }, entries.map(([k, v]) => k.replace(/_/g, " ") + ": " + v).join(" · "));
  }

  async function alerts(q, gen) {
    const open = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    const asks = h("div", {}, h("p", { class: "muted" }, "Loading…"));
    append(view, [h("h2", {}, "Alerts"),
      h("p", { class: "muted" }, "Raised from the audit trail by the vault's rules; each names the record " +
        "that raised it. Acknowledge one with: mlsecrets alerts ack ID"),
      h("section", { id: "open-alerts" }, h("h3", {}, "Open alerts"), open),
      h("section", { id: "approvals" }, h("h3", {}, "Break-glass reads: waiting for approval, or open"),
        h("p", { class: "muted", id: "approval-note" }, "The console approves nothing: another security engineer " +
          "approves with their own token (mlsecrets access approve ID, or POST /v1/access/requests/ID/approve)."), asks)]);
    const shown = [
      insight("alerts").then((rows) => {
        if (gen !== generation) return;
        setCount("alerts", rows.length);
        clear(open);
        open.appendChild(table(["Rule", "Who", "What", "When", "Path", "Audit record", "Delivery"], rows.map((a) => [
          [badge(a.severity), " ", h("span", { class: "mono" }, a.rule)],
          a.principal ? principalLink(a.principal) : "—",
          [a.summary, details(a.details)],
          [when(a.event_ts), h("div", { class: "muted" }, "raised " + when(a.raised_at))],
          a.path ? secretLink(a.path) : "—",
          a.chain === null || a.seq === null ? "—" : h("span", { class: "mono" }, "chain " + a.chain + " · seq " + a.seq),
          delivery(a)]), (i) => (["critical", "high"].includes(rows[i].severity) ? "denied" : null)));
      }).catch((e) => gen === generation && failed(e, open)),
      insight("approvals").then((rows) => {
        if (gen !== generation) return;
        setCount("approvals", rows.filter((r) => r.state === "pending").length);
        clear(asks);
        asks.appendChild(table(["State", "Who", "Path", "Reason", "Asked", "Window", "Approved by", "Until", "Request"],
          rows.map((r) => [badge(r.state), principalLink(r.principal), secretLink(r.path), r.justification,
            when(r.requested_at), span(r.window_seconds),
            r.decided_by ? principalLink(r.decided_by) : h("span", { class: "muted" }, "waiting for a second engineer"),
            when(r.expires_at), h("span", { class: "mono request-id" }, r.id)]),
          (i) => (rows[i].state === "pending" ? "pending" : null)));
      }).catch((e) => gen === generation && failed(e, asks)),
    ];
    await Promise.all(shown);
  }

  // -- access review --------------------------------------------------------------------
  async function review() {
    const button = document.getElementById("review");
    const since = document.getElementById("review-window").value;
    button.disabled = true;
    flash("Making the access review (" + since + ")…");
    try {
      const format = document.getElementById("review-format").value;
      mark(1);
      let response, raw;
      try {
        response = await call("review", {}, "POST", { since, format });
        raw = await response.blob();
      } finally { mark(-1); }
      // offered byte for byte as the vault sealed it, so that "review verify" accepts the file
      const named = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "");
      let report = {};
      if (format === "json") {
        try { const parsed = JSON.parse(await raw.text()); report = parsed.review && typeof parsed.review === "object" ? parsed.review : parsed; } catch (e) { report = {}; }
      }
      const link = h("a", { href: URL.createObjectURL(raw), id: "review-download",
        download: named ? named[1] : "mlsecrets-review." + format }, "Download the signed report (" + format.toUpperCase() + ")");
      const counts = Object.entries(report).filter(([, v]) => Array.isArray(v)).map(([k, v]) => h("li", {}, k.replace(/_/g, " ") + ": " + v.length));
      notice.hidden = false; notice.className = "notice review-result"; clear(notice);
      append(notice, [h("strong", {}, "Access review made"), " (recorded in the audit trail). ", link,
        counts.length ? h("ul", {}, counts) : null,
        h("span", { class: "muted" }, "Verify it later with: mlsecrets review verify FILE")]);
    } catch (e) {
      if (e.status === 401) refuse(e); else flash("The access review failed: " + e.message, true);
    } finally { button.disabled = false; }
  }
  document.getElementById("review").addEventListener("click", review);

  // -- what this user may see ------------------------------------------------------------
  function home() { return !allowed || allowed.includes("overview") ? "overview" : allowed[0]; }
  function mayOpen(name) {
    if (name === "secret" || name === "principal") return mayAudit;
    return !allowed || allowed.includes(name);
  }
  function limitTo(me) {
    // open on what the vault lets this user see; grey out the rest and say why, once
    allowed = Array.isArray(me.views) && me.views.length ? me.views : null;
    mayAudit = me.audit !== false;
    append(document.getElementById("who"), [me.principal + " (" + me.role + ")"]);
    if (mayAudit) return;
    document.body.classList.add("limited");
    document.querySelectorAll("#tabs a").forEach((a) => {
      if (mayOpen(a.dataset.tab)) return;
      a.removeAttribute("href");
      a.classList.add("unavailable");
      a.setAttribute("aria-disabled", "true");
      a.title = "Needs the audit capability on every path";
    });
    const limits = document.getElementById("limits");
    append(limits, ["As " + me.role + ", you see the secrets you may list; the other views and " +
      "the access review need the audit capability (auditors and security engineers)."]);
    limits.hidden = false;
  }

  // -- routing --------------------------------------------------------------------------
  const VIEWS = { overview, inventory, principals, rotation, audit, keys, alerts };
  let counted = false; // the tab's count, asked once where the view opened does not ask
  async function route() {
    const gen = ++generation;
    destroyCharts();
    const raw = window.location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?");
    const name = path.split("/")[0] || home();
    const rest = path.slice(name.length + 1);
    document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active",
      a.dataset.tab === name || (name === "secret" && a.dataset.tab === "inventory") || (name === "principal" && a.dataset.tab === "principals")));
    clear(view);
    if (!counted && mayOpen("alerts")) {
      counted = true;
      if (name !== "overview" && name !== "alerts") refreshCounts();
    }
    if (!mayOpen(name)) { // asked by address: say so, without asking the vault for a refusal
      view.appendChild(h("div", { class: "notice error", role: "alert" },
        "The vault does not let you see this view: it needs the audit capability on every path. ",
        h("a", { href: "#/" + home() }, "Back to what you may see")));
      return;
    }
    mark(1);
    try {
      if (name === "secret") await secret(decodeURI(rest), gen);
      else if (name === "principal") await principal(decodeURIComponent(rest), gen);
      else await (VIEWS[name] || VIEWS[home()])(params(query), gen);
    } catch (e) { if (gen === generation) failed(e); } finally { mark(-1); }
  }

  async function start() {
    // who may look: any bound principal may list; an unbound user is refused here, with why
    try {
      limitTo(await insight("me"));
    } catch (e) {
      if (e.status === 401 || e.status === 403) { refuse(e); mark(-1); return; }
      // a vault without the route (older): every view, each refusing what it must
    }
    mark(-1); // the page's own start (data-busy="1" in the HTML)
    window.addEventListener("hashchange", route);
    route();
  }
  start();
})();
