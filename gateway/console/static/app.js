// Tollway operator console: vanilla ES modules, no build step, no third-party requests.
// The admin credential lives only in `credential` below (memory): never in a URL, a cookie
// or web storage. It goes out as `Authorization: Bearer ...` on each /admin/* fetch.
import { barChart, lineChart } from './chart.js';

let credential = null;
let me = null; // GET /admin/whoami
let timer = null; // the overview's poll
let generation = 0; // bumped on each page change and log-out: late answers of an old page are dropped

const $ = (sel) => document.querySelector(sel);
const PAGES = ['overview', 'spend', 'requests', 'routing', 'keys', 'audit'];

// -- helpers ---------------------------------------------------------------------------------

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message, detail) { super(message); this.status = status; this.detail = detail; }
}

async function api(method, path, body) {
  if (credential === null) throw new ApiError(401, 'Not logged in.');
  const headers = { Authorization: `Bearer ${credential}` };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) { headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
  let r;
  try { r = await fetch(path, init); } catch (e) { throw new ApiError(0, `The gateway did not answer (${e.message}).`); }
  let data = null;
  try { data = await r.json(); } catch { /* not JSON */ }
  if (!r.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `HTTP ${r.status}`;
    if (r.status === 401 && me !== null) { // the credential stopped working (removed from the config): log out, say why
      logout();
      const err = $('#login-error');
      err.textContent = `Logged out: ${message}`;
      err.hidden = false;
    }
    throw new ApiError(r.status, message, data && data.error);
  }
  return data;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
}

const num = (v, digits = 0) => (v == null || !Number.isFinite(Number(v)) ? '—'
  : Number(v).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 }));
const ms = (v) => (v == null ? '—' : `${num(v, v < 10 ? 2 : 0)} ms`);
const pct = (v) => (v == null ? '—' : `${num(v * 100, 2)} %`);
export function usd(v) {
  if (v == null || !Number.isFinite(Number(v))) return '—';
  const n = Number(v);
  if (n > 0 && n < 0.01) return '< $0.01';
  return `$${n.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
}
// A chart axis needs the figure even under a cent: $0.0025, not "< $0.01".
const axisUsd = (v) => (v > 0 && v < 0.01 ? `$${Number(v.toPrecision(2))}` : usd(v));
const exactUsd = (v) => (v == null ? 'no price' : `$${Number(v).toFixed(6)}`);
function when(v) {
  if (v == null || v === '') return '—';
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  if (Number.isNaN(d.getTime())) return String(v);
  return `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}
const hhmm = (t) => new Date(t * 1000).toISOString().slice(11, 16);
const isoDay = (d) => d.toISOString().slice(0, 10);
const canWrite = () => me && me.role !== 'viewer';
const isOwner = () => me && me.role === 'owner';
const list = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

function flash(message, kind = 'success') {
  const el = $('#flash');
  el.textContent = message;
  el.className = `flash ${kind}`;
  el.hidden = false;
}
function clearFlash() { const el = $('#flash'); el.hidden = true; el.textContent = ''; }
function errorBox(e) { return h('p', { class: 'error', role: 'alert' }, e instanceof Error ? e.message : String(e)); }

function table(columns, rows, { empty = 'Nothing to show.', onRow, label } = {}) {
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.title)));
  const body = h('tbody');
  if (rows.length === 0) body.append(h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, empty)));
  for (const row of rows) {
    const tr = h('tr', { class: onRow ? 'clickable' : null },
      columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.render ? c.render(row) : (row[c.key] ?? '—'))));
    if (onRow) tr.addEventListener('click', (ev) => { if (!ev.target.closest('button')) onRow(row, tr); });
    body.append(tr);
  }
  return h('div', { class: 'table-wrap' }, h('table', { 'aria-label': label }, h('thead', {}, head), body));
}

function field(id, label, input) {
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input);
}

function jsonOr(text, fallback) {
  const t = text.trim();
  if (!t) return fallback;
  try { return JSON.parse(t); } catch { throw new Error(`Not valid JSON: ${t.slice(0, 60)}`); }
}

// -- login, navigation -----------------------------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  const input = $('#credential');
  const err = $('#login-error');
  err.hidden = true;
  credential = input.value.trim();
  $('#login-button').disabled = true;
  try {
    me = await api('GET', '/admin/whoami');
  } catch (e) {
    credential = null; me = null;
    err.textContent = e.status === 401 ? `That credential was refused: ${e.message}` : e.message;
    err.hidden = false;
    input.focus();
    return;
  } finally {
    $('#login-button').disabled = false;
  }
  input.value = '';
  $('#login').hidden = true;
  $('#shell').hidden = false;
  $('#who').textContent = `${me.name} (${me.role.replace('_', ' ')}${me.team ? `, team ${me.team}` : ''})`;
  show(pageFromHash());
}

function logout() {
  credential = null; me = null; generation++;
  stopPolling();
  $('#page').replaceChildren();
  clearFlash();
  $('#who').textContent = '';
  $('#login-error').hidden = true;
  $('#shell').hidden = true;
  $('#login').hidden = false;
  $('#credential').value = '';
  $('#credential').focus();
}

function pageFromHash() {
  const name = location.hash.replace('#', '');
  return PAGES.includes(name) ? name : 'overview';
}

function stopPolling() { if (timer !== null) { clearInterval(timer); timer = null; } }

function show(name) {
  if (credential === null) return;
  stopPolling();
  generation++;
  clearFlash();
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  $('#nav').classList.remove('open');
  $('#menu-button').setAttribute('aria-expanded', 'false');
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · Tollway console`;
  const root = h('section', { id: `page-${name}`, 'aria-labelledby': `title-${name}` });
  $('#page').replaceChildren(root);
  RENDER[name](root, generation);
}

const current = (gen) => gen === generation && credential !== null;

// -- Overview --------------------------------------------------------------------------------

function overview(root, gen) {
  const tiles = h('div', { class: 'tiles', id: 'ov-tiles' });
  const chart = h('div', { class: 'chart-box', id: 'ov-chart' });
  const latency = h('div', { class: 'chart-box', id: 'ov-latency' });
  const today = h('div', { id: 'ov-today' });
  const status = h('p', { class: 'muted', id: 'ov-status' }, 'Loading…');
  root.append(h('h1', { id: 'title-overview' }, 'Overview'), status,
    h('div', { class: 'replica' },
      h('h2', {}, 'This replica, latest interval'), tiles,
      h('h2', {}, 'Requests per second, last hour'), chart,
      h('h2', {}, 'Latency p50 / p99, last hour'), h('div', { class: 'legend' },
        h('span', {}, h('span', { class: 'swatch' }), 'p50'), h('span', {}, h('span', { class: 'swatch second' }), 'p99')), latency),
    h('h2', {}, 'All replicas today (UTC, from the ledger)'), today);
  const tile = (id, label, value) => h('div', { class: 'tile' }, h('div', { class: 'label' }, label), h('div', { class: 'value', id }, value));

  async function load() {
    let stats;
    try { stats = await api('GET', '/admin/stats'); } catch (e) {
      if (current(gen)) status.replaceChildren(errorBox(e));
      return;
    }
    if (!current(gen)) return;
    const points = stats.points || [];
    const latest = points.length ? points[points.length - 1] : stats.now;
    if (me.role === 'team_admin') { // this replica's traffic is every team's: a team admin gets its team's day only
      for (const el of root.querySelectorAll('.replica')) el.hidden = true;
      status.textContent = "This replica's live traffic is every team's: it is shown to the owner and viewers. Below: your team's day.";
    } else if (points.length) {
      status.textContent = `Sampled every ${stats.interval_seconds} s; the latest interval ended ${when(latest.ts)}. Refreshes every 10 s.`;
    } else if (latest) {
      status.textContent = `No complete ${stats.interval_seconds} s sample yet: the figures are of the interval so far.`;
    } else {
      status.textContent = 'No sample yet: the first arrives within 10 s of the gateway starting.';
    }
    const p = latest || {};
    tiles.replaceChildren(
      tile('ov-rps', 'Requests / s', num(p.requests_per_second, 2)),
      tile('ov-error-rate', 'Error rate', pct(p.error_rate)),
      tile('ov-p50', 'Latency p50', ms(p.p50_ms)),
      tile('ov-p99', 'Latency p99', ms(p.p99_ms)),
      tile('ov-ttft', 'TTFT p50', ms(p.ttft_p50_ms)),
      tile('ov-tps', 'Tokens / s', num(p.tokens_per_second, 1)));
    const hour = points.length ? [points[points.length - 1].ts - 3600, points[points.length - 1].ts] : null;
    chart.replaceChildren(lineChart([{ values: points.map((q) => ({ x: q.ts, y: q.requests_per_second })) }],
      { label: 'Requests per second over the last hour', fmt: (v) => num(v, 2), xfmt: hhmm, xDomain: hour }));
    latency.replaceChildren(lineChart([
      { values: points.map((q) => ({ x: q.ts, y: q.p50_ms })) },
      { values: points.map((q) => ({ x: q.ts, y: q.p99_ms })), className: 'second' }],
    { label: 'Latency p50 and p99 (ms) over the last hour', fmt: (v) => num(v, v < 10 ? 2 : 0), xfmt: hhmm, xDomain: hour }));
    const t = stats.today;
    today.replaceChildren(t == null
      ? h('p', { class: 'muted' }, 'No ledger on this gateway (store: is not configured), or it is unavailable.')
      : h('div', { class: 'tiles' },
        tile('ov-today-requests', 'Requests', num(t.requests)),
        tile('ov-today-errors', 'Errors', num(t.errors)),
        tile('ov-today-input', 'Input tokens', num(t.input_tokens)),
        tile('ov-today-output', 'Output tokens', num(t.output_tokens)),
        tile('ov-today-cost', 'Cost', usd(t.cost_usd))));
  }
  load();
  timer = setInterval(() => { if (!document.hidden) load(); }, 10_000);
}

// -- Spend -----------------------------------------------------------------------------------

function spend(root, gen) {
  const today = new Date();
  const weekAgo = new Date(today.getTime() - 6 * 86400_000);
  const by = h('select', {}, ['team', 'model', 'key', 'tag'].map((d) => h('option', { value: d }, d)));
  const since = h('input', { type: 'date', value: isoDay(weekAgo), required: true });
  const until = h('input', { type: 'date', value: isoDay(today), required: true });
  const out = h('div', { id: 'spend-out' });
  const budgets = h('div', { id: 'spend-budgets' });
  let last = null;
  const csv = h('button', { type: 'button', class: 'secondary', id: 'spend-csv', disabled: true, onclick: () => download(last) }, 'Export CSV');
  const form = h('form', { class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); load(); } },
    field('spend-by', 'Group by', by), field('spend-since', 'From (UTC)', since), field('spend-until', 'To (UTC, inclusive)', until),
    h('button', { type: 'submit' }, 'Show'), csv);
  root.append(h('h1', { id: 'title-spend' }, 'Spend'), form, out, h('h2', {}, 'Budgets'), budgets);

  async function load() {
    out.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    const end = new Date(`${until.value}T00:00:00Z`);
    const params = { group_by: `${by.value},day`, since: since.value, until: isoDay(new Date(end.getTime() + 86400_000)) };
    let report;
    try { report = await api('GET', `/admin/spend${qs(params)}`); } catch (e) {
      if (current(gen)) out.replaceChildren(errorBox(e));
      return;
    }
    if (!current(gen)) return;
    last = { report, dim: by.value };
    csv.disabled = false;
    const days = new Map();
    for (let d = new Date(`${since.value}T00:00:00Z`); d <= end; d = new Date(d.getTime() + 86400_000)) days.set(isoDay(d), 0);
    const groups = new Map();
    for (const row of report.data) {
      days.set(row.day, (days.get(row.day) || 0) + (row.cost_usd || 0));
      const name = row[by.value] ?? '(none)';
      const g = groups.get(name) || { name, requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cost_usd: 0 };
      for (const k of ['requests', 'errors', 'input_tokens', 'output_tokens', 'cost_usd']) g[k] += row[k] || 0;
      groups.set(name, g);
    }
    const rows = [...groups.values()].sort((a, b) => b.cost_usd - a.cost_usd || b.requests - a.requests);
    const total = report.total || {};
    out.replaceChildren(
      h('div', { class: 'chart-box' }, barChart([...days].map(([label, value]) => ({ label: label.slice(5), value })),
        { label: 'Cost per day (USD)', fmt: axisUsd })),
      h('p', {}, `Total: ${num(total.requests)} requests, ${num(total.input_tokens)} input and ${num(total.output_tokens)} output tokens, `,
        h('strong', { id: 'spend-total' }, usd(total.cost_usd)), '.'),
      table([
        { title: by.value, render: (r) => String(r.name) },
        { title: 'Requests', key: 'requests', num: true, render: (r) => num(r.requests) },
        { title: 'Errors', num: true, render: (r) => num(r.errors) },
        { title: 'Input tokens', num: true, render: (r) => num(r.input_tokens) },
        { title: 'Output tokens', num: true, render: (r) => num(r.output_tokens) },
        { title: 'Cost', num: true, render: (r) => h('span', { title: exactUsd(r.cost_usd) }, usd(r.cost_usd)) },
      ], rows, { empty: 'No spend in this range.', label: `Spend by ${by.value}` }));
  }

  async function loadBudgets() {
    let answer;
    try { answer = await api('GET', '/admin/budgets'); } catch (e) {
      if (current(gen)) budgets.replaceChildren(errorBox(e));
      return;
    }
    if (!current(gen)) return;
    budgets.replaceChildren(table([
      { title: 'Owner', render: (b) => `${b.owner} ${b[b.owner]}` },
      { title: 'Budget', num: true, render: (b) => `${usd(b.budget_usd)} / ${b.period}` },
      { title: 'Spent', num: true, render: (b) => usd(b.spent_usd) },
      { title: 'Remaining', num: true, render: (b) => usd(b.remaining_usd) },
      { title: 'Resets', render: (b) => when(b.resets_at) },
    ], answer.data || [], { empty: 'No key or team has a budget.', label: 'Budgets' }));
  }
  load();
  loadBudgets();
}

function csvCell(v) {
  const s = v == null ? '' : String(v);
  const safe = /^[=+\-@\t\r]/.test(s) ? `'${s}` : s; // no formulas when opened in a spreadsheet
  return /[",\n\r]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

function download(last) {
  if (!last) return;
  const cols = [last.dim, 'day', 'requests', 'errors', 'input_tokens', 'output_tokens', 'cost_usd'];
  const lines = [cols.join(',')].concat(last.report.data.map((row) => cols.map((c) => csvCell(row[c])).join(',')));
  const blob = new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv' });
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: `tollway-spend-${last.dim}-${last.report.since.slice(0, 10)}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  flash('CSV exported.');
}

// -- Requests --------------------------------------------------------------------------------

function requests(root, gen) {
  const inputs = Object.fromEntries(['key', 'team', 'model', 'status'].map((n) => [n,
    h('input', { type: n === 'status' ? 'number' : 'text', min: n === 'status' ? 100 : null, max: n === 'status' ? 599 : null, name: n })]));
  const out = h('div', { id: 'requests-out' });
  const detail = h('div', { id: 'request-detail', class: 'panel' });
  const form = h('form', { class: 'toolbar', onsubmit: (ev) => { ev.preventDefault(); load(); } },
    field('req-key', 'Key', inputs.key), field('req-team', 'Team', inputs.team),
    field('req-model', 'Model', inputs.model), field('req-status', 'Status', inputs.status),
    h('button', { type: 'submit' }, 'Filter'));
  root.append(h('h1', { id: 'title-requests' }, 'Requests'),
    h('p', { class: 'muted' }, 'The latest 100 requests from the ledger, newest first. Prompts and answers are never kept.'),
    form, detail, out);

  function open(r, tr) {
    for (const row of out.querySelectorAll('tr.selected')) row.classList.remove('selected');
    if (tr) tr.classList.add('selected');
    const item = (k, v) => [h('dt', {}, k), h('dd', {}, v)];
    detail.replaceChildren(h('div', { class: 'card' },
      h('h2', {}, `Request ${r.request_id}`),
      h('dl', { class: 'detail' },
        item('Time', when(r.ts)), item('Key', r.key ?? '—'), item('Team', r.team ?? '—'), item('Model', r.model ?? '—'),
        item('Provider / upstream model', `${r.provider ?? '—'} / ${r.upstream_model ?? '—'}`), item('API', r.api),
        item('Status', `${r.status}${r.error ? ` (${r.error})` : ''}`), item('Stream', r.stream ? 'yes' : 'no'),
        item('Input tokens', num(r.input_tokens)), item('Cached input tokens', num(r.cached_input_tokens)),
        item('Cache-write tokens', num(r.cache_write_tokens)), item('Output tokens', num(r.output_tokens)),
        item('Reasoning tokens', num(r.reasoning_tokens)), item('Cost', exactUsd(r.cost_usd)),
        item('Latency', ms(r.latency_ms)), item('TTFT', ms(r.ttft_ms)), item('Attempts', num(r.attempts)),
        item('Cache hit', r.cache_hit ? 'yes' : 'no'), item('Tags', (r.tags || []).join(', ') || '—'),
        item('Trace id', r.trace_id ?? '—')),
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary small', onclick: () => detail.replaceChildren() }, 'Close'))));
    detail.querySelector('h2').setAttribute('tabindex', '-1');
    detail.querySelector('h2').focus();
  }

  async function load() {
    const params = { limit: 100 };
    for (const [k, el] of Object.entries(inputs)) params[k] = el.value.trim();
    out.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    let answer;
    try { answer = await api('GET', `/admin/requests${qs(params)}`); } catch (e) {
      if (current(gen)) out.replaceChildren(errorBox(e));
      return;
    }
    if (!current(gen)) return;
    out.replaceChildren(table([
      { title: 'Time', render: (r) => h('button', { type: 'button', class: 'linklike small', onclick: (ev) => open(r, ev.target.closest('tr')) }, when(r.ts)) },
      { title: 'Key', key: 'key' }, { title: 'Team', key: 'team' }, { title: 'Model', key: 'model' },
      { title: 'Status', render: (r) => h('span', { class: `badge ${r.status < 400 ? 'ok' : 'bad'}` }, String(r.status)) },
      { title: 'Tokens in / out', num: true, render: (r) => `${num(r.input_tokens)} / ${num(r.output_tokens)}` },
      { title: 'Cost', num: true, render: (r) => exactUsd(r.cost_usd) }, // (one request: well under a cent)
      { title: 'Latency', num: true, render: (r) => ms(r.latency_ms) },
    ], answer.data || [], { empty: 'No requests match.', onRow: open, label: 'Requests' }));
  }
  load();
}

// -- Routing ---------------------------------------------------------------------------------

function routing(root, gen) {
  const out = h('div', { id: 'routing-out' }, h('p', { class: 'muted' }, 'Loading…'));
  const cfg = h('div', { id: 'config-out' });
  root.append(h('h1', { id: 'title-routing' }, 'Routing'), out, h('h2', {}, 'Effective config (secrets redacted)'), cfg);
  const health = (ok, until) => h('span', { class: `badge ${ok ? 'ok' : 'bad'}` },
    ok ? 'healthy' : (until ? `ejected until ${when(until)}` : 'unhealthy'));
  (async () => {
    try {
      const r = await api('GET', '/admin/routing');
      if (!current(gen)) return;
      out.replaceChildren(
        h('h2', {}, 'Providers'),
        ...r.providers.map((p) => h('div', { class: 'panel' }, h('h3', {}, `${p.name} `, h('span', { class: 'muted' }, `(${p.schema})`)),
          table([
            { title: 'Endpoint', render: (e) => h('span', { class: 'mono' }, e.address) },
            { title: 'Health', render: (e) => health(e.healthy, e.ejected_until) },
            { title: 'In flight', num: true, render: (e) => num(e.in_flight) },
            { title: 'Load (queue)', num: true, render: (e) => (e.load == null ? '—' : num(e.load, 1)) },
          ], p.endpoints, { empty: 'One base URL (no endpoint pool).', label: `Endpoints of ${p.name}` }))),
        h('h2', {}, 'Models'),
        table([
          { title: 'Model', render: (m) => (m.match ? `${m.name} (match ${m.match})` : m.name) },
          { title: 'Targets', render: (m) => h('div', {}, m.targets.map((t) => h('div', {},
            `${t.provider} → ${t.model} (weight ${t.weight ?? '—'}, priority ${t.priority ?? '—'}) `, health(t.healthy, t.ejected_until)))) },
        ], r.models, { empty: 'No models.', label: 'Models' }));
    } catch (e) { if (current(gen)) out.replaceChildren(errorBox(e)); }
  })();
  (async () => {
    try {
      const c = await api('GET', '/admin/config');
      if (current(gen)) cfg.replaceChildren(h('pre', { id: 'config-json', tabindex: '0' }, JSON.stringify(c.config, null, 2)));
    } catch (e) { if (current(gen)) cfg.replaceChildren(errorBox(e)); }
  })();
}

// -- Keys and teams --------------------------------------------------------------------------

function showSecret(where, title, secret) {
  const status = h('span', { class: 'muted', id: 'copy-status', role: 'status' });
  const code = h('code', { id: 'new-key' }, secret);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(secret);
      status.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      status.textContent = 'Copy failed: the key is selected, copy it with Ctrl+C.';
    }
  };
  where.replaceChildren(h('div', { class: 'card success', role: 'region', 'aria-label': 'New key' },
    h('strong', {}, title),
    h('p', {}, 'It is shown this once: copy it now. The gateway keeps only its digest.'),
    h('div', { class: 'secret' }, code, h('button', { type: 'button', id: 'copy-key', onclick: copy }, 'Copy'), status),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary small', onclick: () => where.replaceChildren() }, 'Done'))));
  where.querySelector('#copy-key').focus();
}

function limitsText(limits) { return limits && limits.length ? JSON.stringify(limits) : ''; }
function describeLimits(limits) {
  if (!limits || !limits.length) return '—';
  return limits.map((l) => Object.entries(l).filter(([k]) => k !== 'per' && k !== 'model')
    .map(([k, v]) => `${v} ${k.replace('_', ' ')}`).join(', ') + (l.per ? ` per ${l.per}` : '') + (l.model ? ` (${l.model})` : '')).join('; ');
}
const budgetText = (b) => (b ? `${usd(b.usd)} / ${b.period}` : '—');

function budgetInputs(prefix, budget) {
  const amount = h('input', { type: 'number', min: 0, step: '0.01', value: budget ? budget.usd : '' });
  const period = h('select', {}, ['day', 'week', 'month'].map((p) => h('option', { value: p, selected: budget && budget.period === p }, p)));
  if (!budget) period.value = 'month';
  const read = () => (amount.value.trim() === '' ? null : { usd: Number(amount.value), period: period.value });
  return { fields: [field(`${prefix}-budget`, 'Budget (USD, empty: none)', amount), field(`${prefix}-period`, 'Budget period', period)], read };
}

const KEYS_PAGE = 100;

function keys(root, gen) {
  const notice = h('div', { id: 'keys-notice' });
  const formBox = h('div', { id: 'key-form-box' });
  const search = h('input', { type: 'search', placeholder: 'name, team or id' });
  const revoked = h('input', { type: 'checkbox', id: 'key-revoked' });
  const out = h('div', { id: 'keys-out' });
  // The API pages its lists (at most 1000 a page): the keys are read a page at a time, the
  // search goes to the server (q=), and "Show more keys" reads the next page (after=).
  const more = h('button', { type: 'button', id: 'more-keys', class: 'secondary', hidden: true, onclick: () => load(true) },
    'Show more keys');
  const teamsOut = h('div', { id: 'teams-out' });
  const teamForm = h('div', { id: 'team-form-box' });
  let all = [];
  let next = null; // the last id read when there are more keys to read
  let asked = 0; // the latest keys request: an answer to an earlier one (a search typed since) is dropped
  let typing = null;
  let teams = [];
  root.append(...[h('h1', { id: 'title-keys' }, 'Keys'), notice,
    h('div', { class: 'toolbar' }, field('key-search', 'Search keys', search),
      h('label', { class: 'check', for: 'key-revoked' }, revoked, ' Show revoked keys'),
      canWrite() ? h('button', { type: 'button', id: 'create-key', onclick: () => createForm() }, 'Create key') : null),
    formBox, out, more, h('h2', {}, 'Teams'),
    isOwner() ? h('div', { class: 'toolbar' }, h('button', { type: 'button', id: 'create-team', onclick: () => teamCreateForm() }, 'Create team')) : null,
    teamForm, teamsOut].filter(Boolean));
  search.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(() => load(), 250); });
  revoked.addEventListener('change', () => load());

  const fail = (box, e) => box.prepend(errorBox(e));

  function createForm() {
    const name = h('input', { type: 'text', required: true, autocomplete: 'off' });
    const team = h('input', { type: 'text', list: 'team-names', value: me.role === 'team_admin' ? me.team : '' });
    const models = h('input', { type: 'text', placeholder: '* (all)' });
    const expiry = h('input', { type: 'date', min: isoDay(new Date(Date.now() + 86400_000)) });
    const limits = h('textarea', { placeholder: '[{"requests": 60, "per": "1m"}]' });
    const budget = budgetInputs('new-key', null);
    const form = h('form', { class: 'card panel', 'aria-label': 'Create key', onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { name: name.value.trim() };
      try {
        if (team.value.trim()) body.team = team.value.trim();
        if (models.value.trim()) body.models = list(models.value);
        if (expiry.value) body.expires_at = `${expiry.value}T00:00:00Z`;
        const lim = jsonOr(limits.value, null); if (lim) body.limits = lim;
        const b = budget.read(); if (b) body.budget = b;
        const made = await api('POST', '/admin/keys', body);
        showSecret(notice, `Key ${made.name} created (${made.id}).`, made.key);
        formBox.replaceChildren();
        flash(`Key ${made.name} created.`);
        await load();
      } catch (e) { form.querySelector('.error')?.remove(); fail(form, e); }
    } },
    h('h2', {}, 'Create key'),
    h('div', { class: 'form-grid' }, field('new-key-name', 'Name', name), field('new-key-team', 'Team', team),
      field('new-key-models', 'Models (comma list)', models), field('new-key-expiry', 'Expires (UTC date, empty: never)', expiry),
      ...budget.fields, h('div', { class: 'wide' }, field('new-key-limits', 'Limits (JSON list, optional)', limits))),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create'),
      h('button', { type: 'button', class: 'secondary', onclick: () => formBox.replaceChildren() }, 'Cancel')));
    formBox.replaceChildren(form);
    name.focus();
  }

  function editForm(k) {
    const models = h('input', { type: 'text', value: k.models.join(', ') });
    const expiry = h('input', { type: 'date', value: k.expires_at ? k.expires_at.slice(0, 10) : '' });
    const limits = h('textarea', {}, limitsText(k.limits));
    const budget = budgetInputs('edit-key', k.budget);
    const form = h('form', { class: 'card panel', 'aria-label': `Edit key ${k.name}`, onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const body = {};
        const modelsNow = list(models.value);
        if (JSON.stringify(modelsNow) !== JSON.stringify(k.models)) body.models = modelsNow;
        const limitsNow = jsonOr(limits.value, []);
        if (JSON.stringify(limitsNow) !== JSON.stringify(k.limits || [])) body.limits = limitsNow;
        const budgetNow = budget.read();
        if (JSON.stringify(budgetNow) !== JSON.stringify(k.budget)) body.budget = budgetNow;
        if (expiry.value !== (k.expires_at ? k.expires_at.slice(0, 10) : '')) { // (unchanged: the exact instant stays)
          body.expires_at = expiry.value ? `${expiry.value}T00:00:00Z` : null;
        }
        if (Object.keys(body).length === 0) { formBox.replaceChildren(); flash('Nothing changed.'); return; }
        const changed = await api('PATCH', `/admin/keys/${encodeURIComponent(k.id)}`, body);
        formBox.replaceChildren();
        flash(`Key ${changed.name} updated.`);
        await load();
      } catch (e) { form.querySelector('.error')?.remove(); fail(form, e); }
    } },
    h('h2', {}, `Edit key ${k.name}`),
    h('div', { class: 'form-grid' }, field('edit-key-models', 'Models (comma list)', models),
      field('edit-key-expiry', 'Expires (UTC date, empty: never)', expiry), ...budget.fields,
      h('div', { class: 'wide' }, field('edit-key-limits', 'Limits (JSON list)', limits))),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => formBox.replaceChildren() }, 'Cancel')));
    formBox.replaceChildren(form);
    models.focus();
  }

  function confirmBox(text, label, act) {
    const box = h('div', { class: 'card panel confirm', role: 'alertdialog', 'aria-label': label },
      h('p', {}, text),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger', id: 'confirm-action', onclick: async () => {
          try { await act(); formBox.replaceChildren(); } catch (e) { box.querySelector('.error')?.remove(); fail(box, e); }
        } }, label),
        h('button', { type: 'button', class: 'secondary', onclick: () => formBox.replaceChildren() }, 'Cancel')));
    formBox.replaceChildren(box);
    box.querySelector('#confirm-action').focus();
  }

  function rotate(k) {
    confirmBox(`Rotate key ${k.name}? A new key is made; the old one keeps working for an hour.`, 'Rotate', async () => {
      const r = await api('POST', `/admin/keys/${encodeURIComponent(k.id)}/rotate`, {});
      showSecret(notice, `Key ${r.name} rotated: its new key.`, r.key);
      flash(`Key ${r.name} rotated.`);
      await load();
    });
  }

  function revoke(k) {
    confirmBox(`Revoke key ${k.name} (${k.id})? It stops working at once, for good.`, 'Revoke', async () => {
      const r = await api('POST', `/admin/keys/${encodeURIComponent(k.id)}/revoke`);
      flash(`Key ${r.name} revoked.`);
      await load();
    });
  }

  function render() {
    const q = search.value.trim();
    const rows = all; // (the server searched: q=)
    out.replaceChildren(table([
      { title: 'Name', key: 'name' }, { title: 'Id', render: (k) => h('span', { class: 'mono' }, k.id) },
      { title: 'Team', key: 'team' }, { title: 'Models', render: (k) => k.models.join(', ') },
      { title: 'Limits', render: (k) => describeLimits(k.limits) }, { title: 'Budget', render: (k) => budgetText(k.budget) },
      { title: 'Status', render: (k) => h('span', { class: `badge ${k.status === 'active' ? 'ok' : 'bad'}` }, k.status) },
      { title: 'Expires', render: (k) => when(k.expires_at) }, { title: 'Last used', render: (k) => when(k.last_used_at) },
      { title: 'Actions', render: (k) => (k.source === 'config' ? h('span', { class: 'muted' }, 'config file (read-only)')
        : !canWrite() || k.status === 'revoked' ? '—' : h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary small', 'aria-label': `Edit ${k.name}`, onclick: () => editForm(k) }, 'Edit'),
          h('button', { type: 'button', class: 'secondary small', 'aria-label': `Rotate ${k.name}`, onclick: () => rotate(k) }, 'Rotate'),
          h('button', { type: 'button', class: 'danger small', 'aria-label': `Revoke ${k.name}`, onclick: () => revoke(k) }, 'Revoke'))) },
    ], rows, { empty: q ? 'No key matches.' : 'No keys.', label: 'Keys' }));
    out.querySelectorAll('tbody tr').forEach((tr, i) => { if (rows[i]) tr.dataset.keyName = rows[i].name; });
    more.hidden = next === null;
  }

  function teamCreateForm() {
    const name = h('input', { type: 'text', required: true });
    const models = h('input', { type: 'text', placeholder: '* (all)' });
    const budget = budgetInputs('new-team', null);
    const form = h('form', { class: 'card panel', 'aria-label': 'Create team', onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const body = { name: name.value.trim() };
        if (models.value.trim()) body.models = list(models.value);
        const b = budget.read(); if (b) body.budget = b;
        const t = await api('POST', '/admin/teams', body);
        teamForm.replaceChildren();
        flash(`Team ${t.name} created.`);
        await loadTeams();
      } catch (e) { form.querySelector('.error')?.remove(); fail(form, e); }
    } },
    h('h2', {}, 'Create team'),
    h('div', { class: 'form-grid' }, field('new-team-name', 'Team name', name), field('new-team-models', 'Models (comma list)', models), ...budget.fields),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create team'),
      h('button', { type: 'button', class: 'secondary', onclick: () => teamForm.replaceChildren() }, 'Cancel')));
    teamForm.replaceChildren(form);
    name.focus();
  }

  function teamEditForm(t) {
    const models = h('input', { type: 'text', value: t.models.join(', ') });
    const limits = h('textarea', {}, limitsText(t.limits));
    const budget = budgetInputs('edit-team', t.budget);
    const form = h('form', { class: 'card panel', 'aria-label': `Edit team ${t.name}`, onsubmit: async (ev) => {
      ev.preventDefault();
      try {
        const body = {};
        const modelsNow = list(models.value);
        if (JSON.stringify(modelsNow) !== JSON.stringify(t.models)) body.models = modelsNow;
        const limitsNow = jsonOr(limits.value, []);
        if (JSON.stringify(limitsNow) !== JSON.stringify(t.limits || [])) body.limits = limitsNow;
        const budgetNow = budget.read();
        if (JSON.stringify(budgetNow) !== JSON.stringify(t.budget)) body.budget = budgetNow;
        if (Object.keys(body).length === 0) { teamForm.replaceChildren(); flash('Nothing changed.'); return; }
        const changed = await api('PATCH', `/admin/teams/${encodeURIComponent(t.name)}`, body);
        teamForm.replaceChildren();
        flash(`Team ${changed.name} updated.`);
        await loadTeams();
      } catch (e) { form.querySelector('.error')?.remove(); fail(form, e); }
    } },
    h('h2', {}, `Edit team ${t.name}`),
    h('div', { class: 'form-grid' }, field('edit-team-models', 'Models (comma list)', models), ...budget.fields,
      h('div', { class: 'wide' }, field('edit-team-limits', 'Limits (JSON list)', limits))),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'secondary', onclick: () => teamForm.replaceChildren() }, 'Cancel')));
    teamForm.replaceChildren(form);
    models.focus();
  }

  function deleteTeam(t) {
    const box = h('div', { class: 'card panel confirm', role: 'alertdialog', 'aria-label': `Delete team ${t.name}` },
      h('p', {}, `Delete team ${t.name}? A team with live keys cannot be deleted.`),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger', onclick: async () => {
          try {
            await api('DELETE', `/admin/teams/${encodeURIComponent(t.name)}`);
            teamForm.replaceChildren();
            flash(`Team ${t.name} deleted.`);
            await loadTeams();
          } catch (e) { box.querySelector('.error')?.remove(); fail(box, e); }
        } }, 'Delete'),
        h('button', { type: 'button', class: 'secondary', onclick: () => teamForm.replaceChildren() }, 'Cancel')));
    teamForm.replaceChildren(box);
  }

  function renderTeams() {
    teamsOut.replaceChildren(table([
      { title: 'Team', key: 'name' }, { title: 'Models', render: (t) => t.models.join(', ') },
      { title: 'Limits', render: (t) => describeLimits(t.limits) }, { title: 'Budget', render: (t) => budgetText(t.budget) },
      { title: 'Actions', render: (t) => (t.source === 'config' ? h('span', { class: 'muted' }, 'config file (read-only)')
        : !isOwner() ? '—' : h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary small', 'aria-label': `Edit team ${t.name}`, onclick: () => teamEditForm(t) }, 'Edit'),
          h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete team ${t.name}`, onclick: () => deleteTeam(t) }, 'Delete'))) },
    ], teams, { empty: 'No teams.', label: 'Teams' }),
    h('datalist', { id: 'team-names' }, teams.map((t) => h('option', { value: t.name }))));
  }

  async function load(further = false) {
    const mine = ++asked;
    const after = further ? next : null;
    try {
      const answer = await api('GET', `/admin/keys${qs({ limit: KEYS_PAGE, q: search.value.trim(),
        include_revoked: revoked.checked ? 'true' : '', after })}`);
      if (!current(gen) || mine !== asked) return;
      all = after ? all.concat(answer.data || []) : (answer.data || []);
      next = answer.has_more ? answer.last_id : null;
      render();
    } catch (e) { if (current(gen) && mine === asked) out.replaceChildren(errorBox(e)); }
  }
  async function loadTeams() {
    try {
      let found = [];
      let after = null;
      do { // every page: the team names also fill the key forms' suggestions
        const answer = await api('GET', `/admin/teams${qs({ limit: 1000, after })}`);
        if (!current(gen)) return;
        found = found.concat(answer.data || []);
        after = answer.has_more ? answer.last_id : null;
      } while (after !== null);
      teams = found;
      renderTeams();
    } catch (e) { if (current(gen)) teamsOut.replaceChildren(errorBox(e)); }
  }
  load();
  loadTeams();
}

// -- Audit -----------------------------------------------------------------------------------

function changes(before, after) {
  if (before == null && after == null) return '—';
  const SKIP = new Set(['object', 'id', 'created_at', 'source', 'status', 'last_used_at', 'revoked_at', 'rotation_grace_until']);
  const shown = (v) => v != null && !(Array.isArray(v) && v.length === 0) && !(typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0);
  if (before == null && after && typeof after === 'object') { // made: what it was made with
    return h('div', { class: 'diff' }, h('div', {}, 'created'), Object.entries(after)
      .filter(([k, v]) => !SKIP.has(k) && shown(v)).map(([k, v]) => h('div', {}, `${k}: ${JSON.stringify(v)}`)));
  }
  if (before == null || after == null || typeof before !== 'object' || typeof after !== 'object') {
    return h('div', { class: 'diff' }, h('div', {}, `${before == null ? '∅' : JSON.stringify(before)} → ${after == null ? '∅' : JSON.stringify(after)}`));
  }
  const names = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  const lines = names.filter((n) => JSON.stringify(before[n]) !== JSON.stringify(after[n]))
    .map((n) => h('div', {}, `${n}: ${JSON.stringify(before[n] ?? null)} → ${JSON.stringify(after[n] ?? null)}`));
  return h('div', { class: 'diff' }, lines.length ? lines : 'no change');
}

function audit(root, gen) {
  const out = h('div', { id: 'audit-out' }, h('p', { class: 'muted' }, 'Loading…'));
  root.append(h('h1', { id: 'title-audit' }, 'Audit'), h('p', { class: 'muted' }, 'The latest 100 admin changes, newest first.'), out);
  (async () => {
    try {
      const answer = await api('GET', '/admin/audit?limit=100');
      if (!current(gen)) return;
      out.replaceChildren(table([
        { title: 'Time', render: (e) => when(e.ts) }, { title: 'Actor', key: 'actor' }, { title: 'Action', key: 'action' },
        { title: 'Target', render: (e) => h('span', { class: 'mono' }, e.target ?? '—') }, { title: 'Team', key: 'team' },
        { title: 'Before → after', render: (e) => changes(e.before, e.after) },
      ], answer.data || [], { empty: 'No changes yet.', label: 'Audit trail' }));
    } catch (e) { if (current(gen)) out.replaceChildren(errorBox(e)); }
  })();
}

const RENDER = { overview, spend, requests, routing, keys, audit };

// -- start -----------------------------------------------------------------------------------

function start() {
  $('#login-form').addEventListener('submit', login);
  $('#login-button').disabled = false; // the page ships it disabled: no submit without this script
  $('#logout').addEventListener('click', logout);
  $('#menu-button').addEventListener('click', () => {
    const open = $('#nav').classList.toggle('open');
    $('#menu-button').setAttribute('aria-expanded', String(open));
    if (open) $('#nav a').focus();
  });
  window.addEventListener('hashchange', () => { if (credential !== null) show(pageFromHash()); });
  document.addEventListener('keydown', (ev) => { // Escape folds the phone menu back behind its button
    if (ev.key === 'Escape' && $('#nav').classList.contains('open')) {
      $('#nav').classList.remove('open');
      $('#menu-button').setAttribute('aria-expanded', 'false');
      $('#menu-button').focus();
    }
  });
  $('#credential').focus();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start); else start();
