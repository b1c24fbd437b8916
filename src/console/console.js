// The reviewers' console: signs in with an auditor or admin key (kept in this tab's session
// storage, sent only in the Authorization header) and reads the gateway's audit endpoints.
// Every value from the server is written with textContent, never parsed as HTML.
"use strict";

(function () {
  const KEY = "contabo-gateway-console-key";
  const $ = (id) => document.getElementById(id);
  const state = { role: null, cursors: [null], page: 0, nextCursor: null, records: [] };

  // ---- talking to the gateway ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const message = body && body.message ? body.message : "the gateway answered " + status;
      const id = body && body.request_id ? " (request id " + body.request_id + ")" : "";
      super(message + id);
      this.status = status;
    }
  }

  // A response whose status is not ok nor in `allowed` is thrown as an ApiError (a 401 also signs
  // out: the key was removed or rotated).
  async function call(path, allowed = [], body = undefined) {
    const key = sessionStorage.getItem(KEY);
    const response = await fetch(path, {
      method: body === undefined ? "GET" : "POST",
      body,
      headers: { Authorization: "Bearer " + key },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok && !allowed.includes(response.status)) {
      let body = null;
      try { body = await response.json(); } catch (_) { /* not JSON: the status says it */ }
      const error = new ApiError(response.status, body);
      if (response.status === 401) signOut(error.message);
      throw error;
    }
    return response;
  }

  const getJson = async (path) => (await call(path)).json();

  function showError(error) {
    const alert = $("alert");
    alert.textContent = error instanceof Error ? error.message : String(error);
    alert.hidden = false;
  }

  function clearError() {
    $("alert").hidden = true;
    $("alert").textContent = "";
  }

  // Runs an action from a button or form; its failure is shown, never thrown away.
  function guarded(action) {
    return async (event) => {
      if (event) event.preventDefault();
      clearError();
      try { await action(event); } catch (error) { showError(error); }
    };
  }

  // ---- small DOM helpers ----------------------------------------------------------------------

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // A cell whose value, clicked, becomes a filter.
  function pickCell(row, text, input, className) {
    const td = cell(row, "", className);
    const pick = document.createElement("span");
    pick.className = "pick";
    pick.textContent = String(text);
    pick.title = "filter by this value";
    pick.addEventListener("click", guarded(async (event) => {
      event.stopPropagation();
      $(input).value = String(text);
      await firstPage();
    }));
    td.appendChild(pick);
    return td;
  }

  function clear(element) {
    while (element.firstChild) element.removeChild(element.firstChild);
  }

  const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

  const utc = (value) => (value ? (value.length === 16 ? value + ":00" : value) + "Z" : "");

  function pretty(text) {
    if (!text) return "(empty)";
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (_) { return text; }
  }

  // ---- signing in and out ---------------------------------------------------------------------

  async function signIn(event) {
    const key = $("key").value.trim();
    if (!key) throw new Error("enter an auditor or admin key");
    sessionStorage.setItem(KEY, key);
    $("key").value = "";
    try {
      await enter();
    } catch (error) {
      sessionStorage.removeItem(KEY);
      throw error;
    }
  }

  async function enter() {
    const who = await getJson("audit/whoami");
    state.role = who.role;
    $("who-client").textContent = who.client;
    $("who-role").textContent = who.role;
    $("who").hidden = false;
    $("sign-in-view").hidden = true;
    $("console-view").hidden = false;
    $("reconcile-panel").hidden = who.role !== "admin";
    // Signed in: a part that cannot be read (the store down, say) says so, the rest still shows.
    await Promise.all([firstPage(), verify(), activity()].map((part) => part.catch(showError)));
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.role = null;
    $("who").hidden = true;
    $("console-view").hidden = true;
    $("sign-in-view").hidden = false;
    // Nothing of the last reviewer's session stays on the page.
    $("filters").reset();
    $("reconcile").reset();
    $("verify-own").reset();
    for (const id of ["detail-panel", "trail-panel"]) $(id).hidden = true;
    for (const id of ["records", "trail-gateway", "trail-contabo", "reconcile-unmatched"]) {
      clear($(id).tBodies[0]);
    }
    for (const id of ["activity", "detail-fields", "detail-request", "detail-response"]) {
      clear($(id));
    }
    for (const id of ["chain-status", "checkpoint-status", "reconcile-status", "page-info"]) {
      $(id).textContent = "";
    }
    if (message) showError(message); else clearError();
  }

  // ---- chain and checkpoint status ------------------------------------------------------------

  // The gateway's own verification: its checkpoint file (or the database's copy) and its key.
  async function verify() {
    showVerifying();
    // 409: the log does not verify; the report says why.
    showReport(await (await call("audit/verify", [409])).json());
  }

  // The reviewer's own copy of the checkpoints and the public key they trust.
  async function verifyOwn() {
    const file = $("own-checkpoints").files[0];
    const key = $("own-public-key").value.trim();
    if (!file || !key) throw new Error("choose a checkpoint file and enter its public key");
    showVerifying();
    const path = "audit/verify?" + new URLSearchParams({ public_key: key });
    const report = await (await call(path, [409], await file.text())).json();
    showReport(report, file.name);
  }

  function showVerifying() {
    const status = $("chain-status");
    status.className = "status";
    status.textContent = "verifying...";
  }

  function showReport(report, fileName) {
    const status = $("chain-status");
    if (report.ok) {
      status.classList.add("ok");
      status.textContent = "The chain verifies: " + report.checked + " records checked" +
        (report.pending ? ", " + report.pending + " pending" : "") +
        (report.checkpoint_seq ? ", pruned through seq " + report.checkpoint_seq : "") + ".";
    } else {
      status.classList.add("bad");
      status.textContent = "The audit log does not verify" +
        (report.first_broken_id ? " (broken at record " + report.first_broken_id + ")" : "") +
        ": " + (report.reason || "no reason given");
    }
    const signed = report.signed_checkpoints;
    const source = fileName ? "your file " + fileName : signed && signed.source;
    $("checkpoint-status").textContent = signed
      ? plural(signed.count, "signed checkpoint") + " (" + source + ", key " + signed.public_key +
        ")" + (signed.latest ? "; the latest, #" + signed.latest + ", covers seq " +
        signed.latest_seq + ", signed " + signed.latest_ts : "")
      : fileName
        ? "Checked against your file " + fileName + ": see the reason above."
        : "No signing key is configured: records are protected by the hash chain only.";
  }

  // ---- activity chart -------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }

  function teamChart(hours, team) {
    const width = 300, height = 90, top = 18, bottom = 16;
    const max = Math.max(1, ...team.calls);
    const step = width / hours.length;
    const chart = svg("svg", { width, height, viewBox: "0 0 " + width + " " + height,
      role: "img", "data-team": team.client });
    const calls = team.calls.reduce((a, b) => a + b, 0);
    const refusals = team.refusals.reduce((a, b) => a + b, 0);
    const label = svg("text", { x: 0, y: 12, class: "label" }, chart);
    label.textContent = team.client + ": " + plural(calls, "call") + ", " + refusals + " refused";
    svg("title", {}, chart).textContent =
      team.client + ", last " + hours.length + " hours (click to filter by this team)";
    const plot = height - top - bottom;
    svg("line", { x1: 0, x2: width, y1: top + plot, y2: top + plot, class: "axis" }, chart);
    hours.forEach((hour, i) => {
      const x = i * step + 1, w = Math.max(1, step - 2);
      const h = (team.calls[i] / max) * plot;
      if (team.calls[i] > 0) {
        const bar = svg("rect", { x, y: top + plot - h, width: w, height: h, class: "bar-calls" },
          chart);
        svg("title", {}, bar).textContent = hour + ":00Z: " + team.calls[i] + " calls";
      }
      if (team.refusals[i] > 0) {
        const r = (team.refusals[i] / max) * plot;
        const bar = svg("rect", { x, y: top + plot - r, width: w, height: r,
          class: "bar-refusals" }, chart);
        svg("title", {}, bar).textContent = hour + ":00Z: " + team.refusals[i] + " refused";
      }
    });
    const first = svg("text", { x: 0, y: height - 3, class: "tick" }, chart);
    first.textContent = hours[0].slice(5).replace("T", " ") + "h";
    const last = svg("text", { x: width, y: height - 3, class: "tick", "text-anchor": "end" },
      chart);
    last.textContent = "now (max " + max + "/h)";
    return chart;
  }

  async function activity() {
    const data = await getJson("audit/activity?hours=24");
    const box = $("activity");
    clear(box);
    const teams = $("teams");
    clear(teams);
    if (data.teams.length === 0) {
      const none = document.createElement("p");
      none.className = "muted";
      none.textContent = "No audited calls in the last 24 hours.";
      box.appendChild(none);
    }
    for (const team of data.teams) {
      const holder = document.createElement("div");
      holder.className = "team-chart";
      holder.appendChild(teamChart(data.hours, team));
      holder.addEventListener("click", guarded(async () => {
        $("f-client").value = team.client;
        await firstPage();
      }));
      box.appendChild(holder);
      const option = document.createElement("option");
      option.value = team.client;
      teams.appendChild(option);
    }
  }

  // ---- records: filters, pages, detail --------------------------------------------------------

  function filterParams() {
    const params = new URLSearchParams();
    const set = (name, id, transform) => {
      const value = $(id).value.trim();
      if (value) params.set(name, transform ? transform(value) : value);
    };
    set("client", "f-client");
    set("method", "f-method");
    set("path_prefix", "f-path-prefix");
    set("status", "f-status");
    set("outcome", "f-outcome");
    set("since", "f-since", utc);
    set("until", "f-until", utc);
    set("request_id", "f-request-id");
    return params;
  }

  async function firstPage() {
    state.cursors = [null];
    state.page = 0;
    await loadPage();
  }

  async function loadPage() {
    const params = filterParams();
    params.set("limit", $("f-limit").value);
    const cursor = state.cursors[state.page];
    if (cursor) params.set("cursor", cursor);
    const data = await getJson("audit?" + params.toString());
    state.records = data.records;
    state.nextCursor = data.next_cursor;
    const body = $("records").tBodies[0];
    clear(body);
    for (const record of data.records) {
      const row = document.createElement("tr");
      row.dataset.id = record.id;
      cell(row, record.id);
      cell(row, record.ts);
      pickCell(row, record.client, "f-client");
      pickCell(row, record.method, "f-method");
      cell(row, record.path + (record.query ? "?" + record.query : ""), "path");
      if (record.status === null) cell(row, ""); else pickCell(row, record.status, "f-status");
      pickCell(row, record.outcome, "f-outcome", "outcome-" + record.outcome);
      pickCell(row, record.request_id, "f-request-id");
      cell(row, record.duration_ms === null ? "" : record.duration_ms.toFixed(1));
      row.addEventListener("click", () => showDetail(record, row));
      body.appendChild(row);
    }
    const first = state.page * Number($("f-limit").value);
    $("page-info").textContent = data.records.length
      ? "records " + (first + 1) + "-" + (first + data.records.length) +
        (data.next_cursor ? ", more follow" : "")
      : "no records match";
    $("previous-page").disabled = state.page === 0;
    $("first-page").disabled = state.page === 0;
    $("next-page").disabled = !data.next_cursor;
  }

  async function nextPage() {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    await loadPage();
  }

  async function previousPage() {
    if (state.page === 0) return;
    state.page -= 1;
    await loadPage();
  }

  const DETAIL_FIELDS = ["id", "seq", "ts", "client", "role", "method", "path", "query",
    "status", "outcome", "request_id", "trace_id", "client_ip", "duration_ms", "upstream_ms",
    "prev_hash", "hash"];

  function showDetail(record, row) {
    for (const selected of document.querySelectorAll("#records tr.selected")) {
      selected.classList.remove("selected");
    }
    row.classList.add("selected");
    $("detail-id").textContent = "#" + record.id;
    const fields = $("detail-fields");
    clear(fields);
    for (const name of DETAIL_FIELDS) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      const value = record[name];
      dd.textContent = value === null || value === undefined || value === "" ? "-" : String(value);
      dd.dataset.field = name;
      fields.append(dt, dd);
    }
    $("detail-request").textContent = pretty(record.request_body);
    $("detail-response").textContent = pretty(record.response_body);
    $("follow").dataset.requestId = record.request_id;
    $("detail-panel").hidden = false;
  }

  // ---- following one request id ---------------------------------------------------------------

  async function follow() {
    const id = $("follow").dataset.requestId;
    if (!id) return;
    $("trail-id").textContent = id;
    $("trail-panel").hidden = false;
    const gateway = $("trail-gateway").tBodies[0];
    clear(gateway);
    const params = new URLSearchParams({ request_id: id, limit: "1000" });
    const ours = await getJson("audit?" + params.toString());
    for (const record of ours.records) {
      const row = document.createElement("tr");
      for (const value of [record.id, record.ts, record.client, record.method, record.path,
        record.status, record.outcome]) cell(row, value);
      gateway.appendChild(row);
    }
    const contabo = $("trail-contabo").tBodies[0];
    clear(contabo);
    const status = $("trail-contabo-status");
    if (state.role !== "admin") {
      status.textContent = "Contabo's own audit is shown to admins only.";
      return;
    }
    status.textContent = "reading Contabo's audit...";
    const trail = await getJson("audit/contabo?" + new URLSearchParams({ request_id: id }));
    for (const entry of trail.entries) {
      const row = document.createElement("tr");
      cell(row, entry.timestamp);
      cell(row, entry.endpoint);
      cell(row, entry.action);
      cell(row, entry.changedBy);
      cell(row, entry.changes === undefined ? "" : JSON.stringify(entry.changes), "path");
      contabo.appendChild(row);
    }
    status.textContent = plural(trail.entries.length, "row") + " in Contabo's audit" +
      (trail.skipped.length ? "; " + trail.skipped.length + " audit endpoints could not be read (" +
        trail.skipped.map((s) => s[0] + ": " + s[1]).join("; ") + ")" : "") + ".";
  }

  // ---- export ---------------------------------------------------------------------------------

  async function exportAs(format) {
    const params = filterParams();
    params.set("format", format);
    const blob = await (await call("audit?" + params.toString())).blob();
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "audit-" + stamp + "." + (format === "csv" ? "csv" : "ndjson");
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }

  // ---- reconcile (admins) ---------------------------------------------------------------------

  async function reconcile() {
    const since = utc($("r-since").value);
    if (!since) throw new Error("choose the time to reconcile from");
    $("reconcile-status").textContent = "reading Contabo's audit...";
    const report = await getJson("audit/reconcile?" + new URLSearchParams({ since }));
    const body = $("reconcile-unmatched").tBodies[0];
    clear(body);
    for (const u of report.unmatched) {
      const row = document.createElement("tr");
      for (const value of [u.timestamp, u.endpoint, u.action, u.request_id, u.changed_by]) {
        cell(row, value);
      }
      body.appendChild(row);
    }
    $("reconcile-status").textContent = plural(report.checked, "change") + " checked, " +
      report.unmatched.length + " made around the gateway" +
      (report.skipped.length ? "; " + report.skipped.length + " endpoints could not be read" : "") +
      ".";
  }

  // ---- wiring ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in").addEventListener("submit", guarded(signIn));
    $("sign-out").addEventListener("click", () => signOut());
    $("verify").addEventListener("click", guarded(verify));
    $("verify-own").addEventListener("submit", guarded(verifyOwn));
    $("filters").addEventListener("submit", guarded(firstPage));
    $("clear").addEventListener("click", guarded(async () => {
      $("filters").reset();
      await firstPage();
    }));
    $("first-page").addEventListener("click", guarded(firstPage));
    $("next-page").addEventListener("click", guarded(nextPage));
    $("previous-page").addEventListener("click", guarded(previousPage));
    $("close-detail").addEventListener("click", () => { $("detail-panel").hidden = true; });
    $("follow").addEventListener("click", guarded(follow));
    $("export-csv").addEventListener("click", guarded(() => exportAs("csv")));
    $("export-ndjson").addEventListener("click", guarded(() => exportAs("ndjson")));
    $("reconcile").addEventListener("submit", guarded(reconcile));
    if (sessionStorage.getItem(KEY)) guarded(enter)();
  });
})();
