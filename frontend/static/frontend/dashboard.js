// The live dashboard: one message a second from /ws/v1/dashboard/ with every
// server process merged, drawn into counters, charts, tables and a feed.

import { DashboardCharts, chartsAvailable, markChartsUnavailable } from "./charts.js";
import { ReconnectingSocket } from "./socket.js";
import { TryIt } from "./tryit.js";
import { el, formatCount, formatDuration, formatMs, formatRate, clockTime } from "./format.js";

const CLOSE_NOT_LOGGED_IN = 4401;
const CLOSE_NOT_STAFF = 4403;
const HISTORY_S = 300;
const BATCH_WINDOW_S = 60;
const FEED_ROWS = 25;
// No message for this long on an open socket: the numbers on screen are old.
const STALE_AFTER_MS = 4000;

const config = JSON.parse(document.getElementById("dashboard-config").textContent);
const $ = (id) => document.getElementById(id);

const state = {
  history: [],
  batchWindow: [],
  feed: [],
  lastMessageAt: 0,
  socketState: "connecting",
  socketDetail: {},
  processes: 0,
  sawTraffic: false,
};

// -- charts ---------------------------------------------------------------------

const canvases = { throughput: $("chart-throughput"), latency: $("chart-latency"), batches: $("chart-batches") };
let charts = null;
if (chartsAvailable()) {
  charts = new DashboardCharts(canvases, HISTORY_S);
} else {
  markChartsUnavailable(Object.values(canvases));
  document.querySelectorAll(".chart-box .empty").forEach((node) => node.remove());
}

// -- theme ----------------------------------------------------------------------

const THEMES = ["auto", "light", "dark"];
function currentTheme() {
  return document.documentElement.dataset.theme || "auto";
}
function setTheme(theme) {
  if (theme === "auto") {
    delete document.documentElement.dataset.theme;
  } else {
    document.documentElement.dataset.theme = theme;
  }
  try {
    if (theme === "auto") localStorage.removeItem("dashboard-theme");
    else localStorage.setItem("dashboard-theme", theme);
  } catch (error) {
    // The choice lasts for this page only.
  }
  document.querySelector("#theme-toggle .theme-label").textContent = theme[0].toUpperCase() + theme.slice(1);
  charts?.applyTheme();
}
$("theme-toggle").addEventListener("click", () => {
  setTheme(THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length]);
});
window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => charts?.applyTheme());
setTheme(currentTheme());

// -- connection status ------------------------------------------------------------

function renderStatus() {
  const node = $("status");
  const label = node.querySelector(".status-label");
  let shown = state.socketState;
  let text;
  if (shown === "live") {
    const age = Date.now() - state.lastMessageAt;
    if (state.lastMessageAt && age > STALE_AFTER_MS) {
      shown = "stale";
      text = `No update for ${Math.round(age / 1000)} s`;
    } else if (!state.lastMessageAt) {
      text = "Connected, waiting for statistics…";
    } else {
      text = `Live · ${state.processes} ${state.processes === 1 ? "process" : "processes"}`;
    }
  } else if (shown === "reconnecting") {
    const retryAt = state.socketDetail.retryAt;
    const seconds = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
    text = seconds > 0 ? `Disconnected · retrying in ${seconds} s` : "Reconnecting…";
  } else if (shown === "offline") {
    text = state.socketDetail.code === CLOSE_NOT_STAFF ? "Not a staff account" : "Logged out";
  } else {
    text = "Connecting…";
  }
  node.dataset.state = shown;
  label.textContent = text;
}
setInterval(renderStatus, 500);

function showNotice(content) {
  const notice = $("notice");
  notice.replaceChildren(...(content ? [content] : []));
  notice.hidden = !content;
}

// -- rendering a message --------------------------------------------------------------

function setText(id, text) {
  const node = $(id);
  if (node.textContent !== text) node.textContent = text;
}

function renderKpis(message) {
  const { rates, totals, latency_ms: latency } = message;
  setText("kpi-predictions-rate", formatRate(rates.predictions));
  setText("kpi-predictions-total", `${formatCount(totals.predictions)} since start`);
  setText("kpi-rows-rate", formatRate(rates.rows));
  setText("kpi-rows-total", `${formatCount(totals.rows)} rows since start`);
  setText("kpi-p95", latency.p95 == null ? "–" : formatMs(latency.p95));
  setText("kpi-p50", latency.p50 == null ? "idle" : `p50 ${formatMs(latency.p50)} · p99 ${formatMs(latency.p99)}`);
  setText("kpi-connections", formatCount(message.connections));
  setText("kpi-dashboards", `+ ${message.dashboards} dashboard${message.dashboards === 1 ? "" : "s"}`);
  setText("kpi-in-flight", formatCount(message.in_flight));
  setText("kpi-in-flight-peak", `peak ${formatCount(message.in_flight_peak)} this second`);
  setText("kpi-errors-rate", formatRate(rates.errors));
  $("kpi-errors-rate").classList.toggle("bad", rates.errors > 0);
  setText("kpi-errors-total", `${formatCount(totals.errors)} since start`);
}

function renderEmptyStates(message) {
  const traffic = state.history.some((p) => p.predictions > 0 || p.errors > 0);
  const quiet = message.totals.predictions + message.totals.errors > 0;
  for (const node of document.querySelectorAll('[data-empty-for="traffic"]')) {
    node.hidden = traffic;
    node.querySelector('[data-when="never"]').hidden = quiet;
    node.querySelector('[data-when="quiet"]').hidden = !quiet;
  }
  const batches = state.batchWindow.some((p) => p.counts.some((n) => n > 0));
  for (const node of document.querySelectorAll('[data-empty-for="batches"]')) node.hidden = batches;
}

function barRow(name, fraction, value, title) {
  const bar = el("div", { class: "bar" }, el("span", { style: `width:${Math.max(0, Math.min(1, fraction)) * 100}%` }));
  const row = el("div", { class: "bar-row", title: title || "" }, el("span", { class: "name" }, name), bar, el("span", { class: "value" }, value));
  return row;
}

function renderErrors(message) {
  const byCode = Object.entries(message.totals.errors_by_code).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  const container = $("errors");
  if (!byCode.length) {
    const text = message.totals.predictions > 0
      ? "No errors. Every request so far got its prediction."
      : "No errors, and no requests yet.";
    container.replaceChildren(el("p", { class: "empty-inline" }, text));
    return;
  }
  const most = byCode[0][1];
  container.replaceChildren(...byCode.map(([code, n]) => {
    const rate = message.rates.errors_by_code[code] || 0;
    return barRow(code, n / most, formatCount(n), `${formatRate(rate)} per second now`);
  }));
}

function renderModels(message) {
  const body = $("models").tBodies[0];
  const models = Object.entries(message.models);
  if (!models.length) {
    const text = message.processes.length
      ? "No models are registered. Load the demo models with manage.py load_demo_models."
      : "Waiting for the first statistics…";
    body.replaceChildren(el("tr", { class: "empty-row" }, el("td", { colspan: 8 }, text)));
    return;
  }
  body.replaceChildren(...models.map(([name, model]) => {
    let version;
    if (model.active_version == null) {
      version = el("span", { class: "badge warn" }, model.failed_versions.length ? "failed" : "none");
    } else {
      const split = model.active_versions.length > 1 ? ` (${model.active_versions.map((v) => `v${v}`).join(", ")})` : "";
      version = el("span", { class: "badge ok", title: `Loaded: ${model.loaded_versions.map((v) => `v${v}`).join(", ") || "none"}` }, `v${model.active_version}${split}`);
    }
    return el("tr", {},
      el("td", {}, el("strong", {}, name), model.devices.length ? el("span", { class: "muted small" }, ` ${model.devices.join(", ")}`) : ""),
      el("td", {}, version),
      el("td", { class: "num" }, formatRate(model.rates.predictions)),
      el("td", { class: "num hide-narrow" }, formatRate(model.rates.rows)),
      el("td", { class: "num" }, formatCount(model.queue_depth)),
      el("td", { class: "num hide-narrow" }, formatCount(model.computing_rows)),
      el("td", { class: "num hide-narrow" }, formatCount(model.totals.errors)),
      el("td", { class: "num" }, formatCount(model.totals.predictions)));
  }));
}

function renderProcesses(message) {
  const container = $("processes");
  const processes = message.processes;
  setText("processes-note", processes.length ? `${processes.length} live · share of predictions` : "share of predictions");
  if (!processes.length) {
    container.replaceChildren(el("p", { class: "empty-inline" },
      "No server process is publishing statistics. A process appears here once it has served a connection."));
    return;
  }
  container.replaceChildren(...processes.map((process) => {
    const share = process.share == null ? null : process.share;
    const shareText = share == null ? "–" : `${(share * 100).toFixed(share > 0 && share < 0.1 ? 1 : 0)}%`;
    const meta = `${formatCount(process.totals.predictions)} predictions · ${formatRate(process.rates.predictions)}/s · `
      + `${process.connections} conn · ${process.in_flight} in flight · up ${formatDuration(process.uptime_s)}`;
    return el("div", { class: "process", "data-process": process.id },
      el("div", { class: "process-head" }, el("span", { class: "process-name", title: process.id }, process.id), el("strong", { class: "process-share" }, shareText)),
      el("div", { class: "bar" }, el("span", { style: `width:${(share || 0) * 100}%` })),
      el("div", { class: "process-meta" }, meta));
  }));
}

function renderFeed(message) {
  if (!message.recent.length && state.feed.length) return;
  state.feed = [...message.recent.sort((a, b) => b.time - a.time), ...state.feed].slice(0, FEED_ROWS);
  const body = $("feed").tBodies[0];
  if (!state.feed.length) return;
  body.replaceChildren(...state.feed.map((item) => {
    const ok = item.outcome === "ok";
    const model = item.model ? `${item.model}${item.version ? ` v${item.version}` : ""}` : "—";
    return el("tr", {},
      el("td", {}, clockTime(item.time)),
      el("td", {}, model),
      el("td", {}, el("span", { class: `badge ${ok ? "ok" : "bad"}` }, ok ? "ok" : item.outcome)),
      el("td", { class: "mono hide-narrow", title: item.inputs }, item.inputs),
      el("td", { class: "mono", title: item.outputs }, item.outputs),
      el("td", { class: "num" }, item.total_ms == null ? "–" : formatMs(item.total_ms, false)),
      el("td", { class: "mono hide-narrow", title: item.process }, item.process));
  }));
}

function onStats(message) {
  state.lastMessageAt = Date.now();
  state.processes = message.processes.length;
  const t = message.time * 1000;
  state.history.push({
    t,
    predictions: message.rates.predictions,
    rows: message.rates.rows,
    errors: message.rates.errors,
    p50: message.latency_ms.p50,
    p95: message.latency_ms.p95,
    p99: message.latency_ms.p99,
  });
  while (state.history.length && state.history[0].t < t - HISTORY_S * 1000) state.history.shift();
  state.batchWindow.push({ t, counts: message.rates.batch_sizes });
  while (state.batchWindow.length && state.batchWindow[0].t < t - BATCH_WINDOW_S * 1000) state.batchWindow.shift();
  const batchCounts = message.batch_size_labels.map((_, i) => state.batchWindow.reduce((sum, p) => sum + (p.counts[i] || 0), 0));

  renderKpis(message);
  renderEmptyStates(message);
  charts?.update(state.history, batchCounts, message.batch_size_labels);
  renderErrors(message);
  renderModels(message);
  renderProcesses(message);
  renderFeed(message);
  setText("footer-text", `Updated ${clockTime(message.time)} · ${message.processes.length} server `
    + `${message.processes.length === 1 ? "process" : "processes"} · each process sends its statistics once a second`);
  renderStatus();
}

// -- the socket -------------------------------------------------------------------------

new ReconnectingSocket(config.dashboardPath, {
  onopen() {
    state.socketState = "live";
    state.lastMessageAt = 0;
    showNotice(null);
    renderStatus();
  },
  onmessage(message) {
    if (message.type === "stats") {
      onStats(message);
    } else if (message.type === "hello" && !message.publishing) {
      showNotice(el("span", {}, "The server process this page is connected to does not gather statistics "
        + "(PLATFORM_MONITORING is off); other processes still show up here."));
    }
  },
  onstatus(socketState, detail) {
    if (socketState === "connecting" && state.socketState === "live") return;
    state.socketState = socketState;
    state.socketDetail = detail;
    if (socketState === "offline") {
      const text = detail.code === CLOSE_NOT_STAFF
        ? "This account is not a staff account. "
        : "Your session has ended. ";
      showNotice(el("span", {}, text, el("a", { href: config.loginUrl }, "Log in again")));
    }
    renderStatus();
  },
}, [CLOSE_NOT_LOGGED_IN, CLOSE_NOT_STAFF]).start();

new TryIt(config, {
  model: $("tryit-model"),
  inputs: $("tryit-inputs"),
  outputs: $("tryit-outputs"),
  form: $("tryit-form"),
  submit: $("tryit-submit"),
  example: $("tryit-example"),
  zeros: $("tryit-zeros"),
  result: $("tryit-result"),
  status: $("tryit-status"),
}).start();
