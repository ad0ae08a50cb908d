// The shadow-agreement card: each shadow's agreement with the version that
// answered, per minute over the last hour, read from /dashboard/agreement.json
// every REFRESH_MS (the comparisons are written once per flush interval, so a
// faster refresh would show nothing new). Without Chart.js, a table.

const REFRESH_MS = 15000;
const clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });

function color(index) {
  const name = `--series-${(index % 6) + 1}`;
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function drawTable(container, series) {
  const rows = series.map((s) => {
    const last = s.points[s.points.length - 1];
    return `<tr><td>${s.label}</td><td class="num">${last.agreement.toFixed(1)}%</td><td class="num">${last.requests}</td><td>${clock.format(new Date(last.t))}</td></tr>`;
  });
  container.innerHTML = `<table class="table"><thead><tr><th>Shadow</th><th class="num">Agreement</th><th class="num">Compared</th><th>Minute</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

export function startAgreement(container, url) {
  const canvas = container.querySelector("canvas");
  const box = canvas.parentElement;
  const empty = container.querySelector(".empty-inline");
  let chart = null;

  async function refresh() {
    let series = [];
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) series = (await response.json()).series;
    } catch (error) {
      return; // the server is restarting: the next refresh tries again
    }
    empty.hidden = series.length > 0;
    box.hidden = series.length === 0;
    if (!series.length) return;
    if (typeof window.Chart !== "function") {
      drawTable(container.querySelector(".agreement-table"), series);
      box.hidden = true;
      return;
    }
    const datasets = series.map((s, i) => ({
      label: s.label,
      data: s.points.map((p) => ({ x: p.t, y: p.agreement })),
      borderColor: color(i),
      backgroundColor: color(i),
      borderWidth: 2,
      pointRadius: 2,
      tension: 0.2,
    }));
    if (chart === null) {
      chart = new window.Chart(canvas, {
        type: "line",
        data: { datasets },
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          scales: {
            x: { type: "linear", ticks: { maxTicksLimit: 6, callback: (v) => clock.format(new Date(v)) } },
            y: { min: 0, max: 100, title: { display: true, text: "% of rows agreeing" } },
          },
          plugins: { tooltip: { callbacks: { title: (items) => (items.length ? clock.format(new Date(items[0].parsed.x)) : "") } } },
        },
      });
    } else {
      chart.data.datasets = datasets;
      chart.update();
    }
  }

  refresh();
  return setInterval(refresh, REFRESH_MS);
}
