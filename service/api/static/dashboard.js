// The dashboard's little JavaScript (no build step, no library): confirmations on buttons,
// live sections that refresh themselves, and the throughput / lateness chart (SVG).
"use strict";

// <form data-confirm="…">: ask before posting.
document.addEventListener("submit", (event) => {
  const text = event.target.dataset && event.target.dataset.confirm;
  if (text && !window.confirm(text)) event.preventDefault();
});

// <section id="live" data-refresh="N">: fetch the page again every N seconds and swap the
// section in, unless the reader is typing or the tab is hidden.
function refreshLive() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refresh) return;
  const every = Number(live.dataset.refresh) * 1000;
  setInterval(async () => {
    if (document.hidden || document.activeElement.tagName === "INPUT") return;
    try {
      const answer = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (!answer.ok || answer.redirected) return;
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html").getElementById("live");
      if (fresh) document.getElementById("live").replaceWith(fresh);
    } catch (e) { /* the next round tries again */ }
  }, every);
}

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Bars: messages sent (green) and discarded (red) per minute, left axis. Lines: lateness p50
// and p99 in seconds, right axis. The last 60 minutes, empty minutes at zero.
function drawChart(box, rows) {
  const width = 900, height = 180, pad = { l: 40, r: 48, t: 10, b: 22 };
  const now = Math.floor(Date.now() / 60000) * 60000;
  const byMinute = new Map(rows.map((r) => [Date.parse(r.minute), r]));
  const minutes = Array.from({ length: 60 }, (_, k) => now - (59 - k) * 60000);
  const data = minutes.map((m) => byMinute.get(m) || { sent: 0, discarded: 0, latenessP50: null, latenessP99: null });
  const maxCount = Math.max(1, ...data.map((d) => d.sent + d.discarded));
  const maxLate = Math.max(1, ...data.map((d) => d.latenessP99 || 0));
  const w = (width - pad.l - pad.r) / 60, plotH = height - pad.t - pad.b;
  const y = (v) => pad.t + plotH - (v / maxCount) * plotH;
  const yl = (v) => pad.t + plotH - (v / maxLate) * plotH;
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "throughput and lateness" });
  svg.append(el("line", { x1: pad.l, x2: width - pad.r, y1: pad.t + plotH, y2: pad.t + plotH, stroke: "#dde2e6" }));
  svg.append(el("text", { x: pad.l - 6, y: pad.t + 8, "text-anchor": "end", "font-size": 10, fill: "#66707a" }, maxCount));
  svg.append(el("text", { x: width - pad.r + 6, y: pad.t + 8, "font-size": 10, fill: "#66707a" }, `${maxLate.toFixed(1)} s`));
  svg.append(el("text", { x: pad.l, y: height - 6, "font-size": 10, fill: "#66707a" }, "60 min ago"));
  svg.append(el("text", { x: width - pad.r, y: height - 6, "text-anchor": "end", "font-size": 10, fill: "#66707a" }, "now"));
  data.forEach((d, k) => {
    const x = pad.l + k * w + 1;
    if (d.sent) svg.append(el("rect", { x, y: y(d.sent), width: w - 2, height: plotH - (y(d.sent) - pad.t), fill: "#0b6e4f", "data-sent": d.sent }));
    if (d.discarded) svg.append(el("rect", { x, y: y(d.sent + d.discarded), width: w - 2, height: y(d.sent) - y(d.sent + d.discarded), fill: "#b3261e" }));
  });
  for (const [key, colour] of [["latenessP50", "#1f6feb"], ["latenessP99", "#9a6700"]]) {
    const points = data.map((d, k) => d[key] == null ? null : `${pad.l + k * w + w / 2},${yl(d[key])}`).filter(Boolean);
    if (points.length > 1) svg.append(el("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 1.5 }));
    for (const p of points) { const [cx, cy] = p.split(","); svg.append(el("circle", { cx, cy, r: 2.5, fill: colour })); }
  }
  const total = data.reduce((s, d) => s + d.sent, 0), dropped = data.reduce((s, d) => s + d.discarded, 0);
  const legend = document.createElement("div");
  legend.className = "legend";
  legend.innerHTML = '<span><i class="k-sent"></i>sent</span><span><i class="k-discarded"></i>discarded</span>' +
    '<span><i class="k-p50"></i>lateness p50</span><span><i class="k-p99"></i>lateness p99</span>';
  const sums = document.createElement("span");
  sums.className = "totals";
  sums.textContent = `${total} sent, ${dropped} discarded in the last hour`;
  legend.append(sums);
  box.replaceChildren(svg, legend);
  box.dataset.sent = String(total);
}

function chart() {
  const box = document.getElementById("chart");
  if (!box) return;
  const load = async () => {
    try {
      const answer = await fetch(box.dataset.source, { credentials: "same-origin" });
      if (answer.ok) drawChart(box, await answer.json());
    } catch (e) { /* the next round tries again */ }
  };
  load();
  setInterval(load, Number(box.dataset.every || 15) * 1000);
}

refreshLive();
chart();
