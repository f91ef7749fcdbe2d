// Hand-written SVG charts: a line chart (one or two series over time) and a bar chart.
// Colours and fonts come from app.css classes (no inline style: the CSP forbids it).
const NS = 'http://www.w3.org/2000/svg';
const W = 800, H = 220, L = 56, R = 12, T = 12, B = 26;

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function frame(label, max, fmt) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': label });
  svg.append(s('title', {}, label));
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (1 - i / 4);
    svg.append(s('line', { x1: L, x2: W - R, y1: y, y2: y, class: i === 0 ? 'chart-axis' : 'chart-grid' }));
    svg.append(s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end', class: 'chart-text' }, fmt(max * i / 4)));
  }
  return svg;
}

function empty(svg, text) {
  svg.append(s('text', { x: (W + L) / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, text));
  return svg;
}

/** series: [{values: [{x, y}], className}], x a number (UNIX seconds). */
export function lineChart(series, { label, fmt = String, xfmt = String, emptyText = 'No data yet', xDomain = null }) {
  const all = series.flatMap((one) => one.values).filter((p) => p.y != null && Number.isFinite(p.y));
  const max = niceMax(Math.max(0, ...all.map((p) => p.y)));
  const svg = frame(label, max, fmt);
  if (all.length === 0) return empty(svg, emptyText);
  const xs = series.flatMap((one) => one.values.map((p) => p.x));
  const x0 = xDomain ? Math.min(xDomain[0], ...xs) : Math.min(...xs);
  const x1 = xDomain ? Math.max(xDomain[1], ...xs) : Math.max(...xs);
  const px = (x) => L + (x1 === x0 ? (W - L - R) / 2 : (W - L - R) * (x - x0) / (x1 - x0));
  const py = (y) => T + (H - T - B) * (1 - y / max);
  series.forEach((one, i) => {
    let run = [];
    const flush = () => {
      if (run.length === 1) svg.append(s('circle', { cx: run[0][0], cy: run[0][1], r: 3, class: `chart-dot ${one.className || ''}` }));
      if (run.length > 1) {
        const pts = run.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ');
        if (i === 0) svg.append(s('polygon', { points: `${run[0][0]},${py(0)} ${pts} ${run[run.length - 1][0]},${py(0)}`, class: 'chart-area' }));
        svg.append(s('polyline', { points: pts, class: `chart-line ${one.className || ''}` }));
      }
      run = [];
    };
    for (const p of one.values) {
      if (p.y == null || !Number.isFinite(p.y)) flush(); else run.push([px(p.x), py(p.y)]);
    }
    flush();
  });
  svg.append(s('text', { x: L, y: H - 6, class: 'chart-text' }, xfmt(x0)));
  svg.append(s('text', { x: W - R, y: H - 6, 'text-anchor': 'end', class: 'chart-text' }, xfmt(x1)));
  return svg;
}

/** bars: [{label, value}] in order. */
export function barChart(bars, { label, fmt = String, emptyText = 'No data' }) {
  const max = niceMax(Math.max(0, ...bars.map((b) => b.value)));
  const svg = frame(label, max, fmt);
  if (bars.length === 0) return empty(svg, emptyText);
  const slot = (W - L - R) / bars.length;
  const every = Math.ceil(bars.length / 10);
  bars.forEach((b, i) => {
    const h = (H - T - B) * (b.value / max);
    const rect = s('rect', { x: L + i * slot + slot * 0.15, y: T + (H - T - B) - h, width: Math.max(slot * 0.7, 1), height: Math.max(h, 0), class: 'chart-bar' });
    rect.append(s('title', {}, `${b.label}: ${fmt(b.value)}`));
    svg.append(rect);
    if (i % every === 0) svg.append(s('text', { x: L + i * slot + slot / 2, y: H - 6, 'text-anchor': 'middle', class: 'chart-text' }, b.label));
  });
  return svg;
}
