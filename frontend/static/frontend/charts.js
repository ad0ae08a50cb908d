// The dashboard's time-series and distribution charts, drawn with Chart.js
// (installed from npm by `make setup` and served as a static file). Without
// the library every chart says so and the rest of the page works as usual.

const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

const MIN_AXIS_MS = 60 * 1000;

function cssColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function palette() {
  return {
    text: cssColor("--muted"),
    grid: cssColor("--grid"),
    surface: cssColor("--surface"),
    series: ["--series-1", "--series-2", "--series-3", "--series-4", "--series-5", "--series-6"].map(cssColor),
  };
}

function timeAxis(colors) {
  return {
    type: "linear",
    ticks: {
      color: colors.text,
      maxTicksLimit: 6,
      maxRotation: 0,
      callback: (value) => clock.format(new Date(value)),
    },
    grid: { color: colors.grid },
    border: { display: false },
  };
}

function valueAxis(colors, title, precision = 0) {
  return {
    beginAtZero: true,
    ticks: { color: colors.text, maxTicksLimit: 5, precision },
    grid: { color: colors.grid },
    border: { display: false },
    title: { display: Boolean(title), text: title, color: colors.text },
  };
}

// Lines have no dots, except where a value stands alone between gaps (a
// single second with traffic), which would otherwise not show at all.
function dotWhereAlone(context) {
  const data = context.dataset.data;
  const i = context.dataIndex;
  const missing = (point) => !point || point.y == null;
  if (missing(data[i])) return 0;
  return missing(data[i - 1]) && missing(data[i + 1]) ? 3 : 0;
}

function line(label, color, data, dashed = false) {
  return {
    label,
    data,
    borderColor: color,
    backgroundColor: color,
    borderWidth: 2,
    borderDash: dashed ? [5, 4] : [],
    pointRadius: dotWhereAlone,
    pointHoverRadius: 3,
    tension: 0.25,
    spanGaps: false,
    // A dot on the newest second is drawn whole, not cut by the plot's edge.
    clip: 4,
  };
}

function baseOptions(colors) {
  return {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    interaction: { mode: "index", intersect: false },
    plugins: {
      legend: {
        position: "top",
        align: "end",
        labels: { color: colors.text, boxWidth: 10, boxHeight: 10, usePointStyle: true, pointStyle: "rectRounded" },
      },
      tooltip: { callbacks: { title: (items) => (items.length ? clock.format(new Date(items[0].parsed.x)) : "") } },
    },
  };
}

export function chartsAvailable() {
  return typeof window.Chart === "function";
}

export function markChartsUnavailable(canvases) {
  for (const canvas of canvases) {
    const note = document.createElement("div");
    note.className = "chart-unavailable";
    note.textContent = "Charts are unavailable: the chart library is not installed on the server (run make setup).";
    canvas.replaceWith(note);
  }
}

export class DashboardCharts {
  constructor({ throughput, latency, batches }, windowS) {
    const Chart = window.Chart;
    const colors = palette();
    this.windowS = windowS;
    this.throughput = new Chart(throughput, {
      type: "line",
      data: { datasets: [line("Predictions/s", colors.series[0], []), line("Rows/s", colors.series[1], [], true)] },
      options: { ...baseOptions(colors), scales: { x: timeAxis(colors), y: valueAxis(colors) } },
    });
    this.latency = new Chart(latency, {
      type: "line",
      data: {
        datasets: [
          line("p50", colors.series[2], []),
          line("p95", colors.series[3], []),
          line("p99", colors.series[4], []),
        ],
      },
      options: { ...baseOptions(colors), scales: { x: timeAxis(colors), y: valueAxis(colors, "ms", 2) } },
    });
    this.batches = new Chart(batches, {
      type: "bar",
      data: { labels: [], datasets: [{ label: "Model calls", data: [], backgroundColor: colors.series[5], borderRadius: 4, maxBarThickness: 42 }] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { title: (items) => `${items[0].label} rows per call`, label: (item) => `${Math.round(item.parsed.y)} calls` } },
        },
        scales: {
          x: { ticks: { color: colors.text }, grid: { display: false }, border: { display: false }, title: { display: true, text: "rows per model call", color: colors.text } },
          y: valueAxis(colors),
        },
      },
    });
    this.all = [this.throughput, this.latency, this.batches];
  }

  /** Redraw from the history: [{t, predictions, rows, p50, p95, p99}], newest last. */
  update(history, batchCounts, batchLabels) {
    const now = history.length ? history[history.length - 1].t : Date.now();
    // The axis grows with the history, from one minute up to the whole window.
    const first = history.length ? history[0].t : now;
    const min = now - Math.min(this.windowS * 1000, Math.max(MIN_AXIS_MS, now - first));
    const [predictions, rows] = this.throughput.data.datasets;
    predictions.data = history.map((p) => ({ x: p.t, y: p.predictions }));
    rows.data = history.map((p) => ({ x: p.t, y: p.rows }));
    const [p50, p95, p99] = this.latency.data.datasets;
    p50.data = history.map((p) => ({ x: p.t, y: p.p50 }));
    p95.data = history.map((p) => ({ x: p.t, y: p.p95 }));
    p99.data = history.map((p) => ({ x: p.t, y: p.p99 }));
    for (const chart of [this.throughput, this.latency]) {
      chart.options.scales.x.min = min;
      chart.options.scales.x.max = now;
      chart.update("none");
    }
    // Buckets up to the largest one in use, and at least up to 32-63 rows.
    let last = 5;
    batchCounts.forEach((count, i) => { if (count > 0.5) last = Math.max(last, i); });
    this.batches.data.labels = batchLabels.slice(0, last + 1);
    this.batches.data.datasets[0].data = batchCounts.slice(0, last + 1).map((n) => Math.round(n));
    this.batches.update();
  }

  /** Called when the theme changes: the colours come from the page's CSS variables. */
  applyTheme() {
    const colors = palette();
    const recolor = (dataset, color) => { dataset.borderColor = color; dataset.backgroundColor = color; };
    recolor(this.throughput.data.datasets[0], colors.series[0]);
    recolor(this.throughput.data.datasets[1], colors.series[1]);
    this.latency.data.datasets.forEach((dataset, i) => recolor(dataset, colors.series[2 + i]));
    this.batches.data.datasets[0].backgroundColor = colors.series[5];
    for (const chart of this.all) {
      for (const scale of Object.values(chart.options.scales)) {
        scale.ticks.color = colors.text;
        if (scale.grid.color !== undefined) scale.grid.color = colors.grid;
        if (scale.title) scale.title.color = colors.text;
      }
      if (chart.options.plugins.legend.labels) chart.options.plugins.legend.labels.color = colors.text;
      chart.update("none");
    }
  }
}
