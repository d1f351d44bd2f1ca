// lb's status page: polls /history once a second and redraws the table, the
// sparklines, the certificates and the list of changes in place (no reload).
// Weight, mode and algorithm controls call the admin API with a bearer token
// asked for once and kept in this tab's sessionStorage only. No external
// assets: the page works offline under a strict Content-Security-Policy (no
// inline code, no eval).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = 'lb-admin-token';
  const rows = new Map();
  let refreshes = 0;
  let timer = null;
  let cleared = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }

  function say(text, isError) {
    const m = $('message');
    m.textContent = text;
    m.className = isError ? 'error' : '';
  }

  // --- the admin token: asked for when a control is used, kept in the tab ---
  function askToken() {
    return new Promise((resolve) => {
      const box = $('token-box');
      const input = $('token-input');
      box.hidden = false;
      input.value = '';
      input.focus();
      const done = (v) => {
        box.hidden = true;
        $('token-ok').onclick = $('token-cancel').onclick = input.onkeydown = null;
        resolve(v);
      };
      $('token-ok').onclick = () => done(input.value.trim() || null);
      $('token-cancel').onclick = () => done(null);
      input.onkeydown = (e) => {
        if (e.key === 'Enter') done(input.value.trim() || null);
        if (e.key === 'Escape') done(null);
      };
    });
  }

  async function admin(method, path, body, what) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    for (let attempt = 0; attempt < 2; attempt++) {
      if (!token) {
        token = await askToken();
        if (!token) {
          say(what + ': cancelled', false);
          return null;
        }
      }
      const r = await fetch(path, {
        method,
        cache: 'no-store',
        headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (r.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        token = null;
        say('the admin token was refused; enter it again', true);
        continue;
      }
      const v = await r.json().catch(() => ({}));
      if (!r.ok) {
        say(what + ': ' + (v.error || 'HTTP ' + r.status), true);
        return null;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      say(what + ': done', false);
      schedule(0);
      return v;
    }
    return null;
  }

  // --- one table row per backend, created once, updated in place ---
  function sparkline(series, w = 150, h = 28) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('width', w);
    svg.setAttribute('height', h);
    const frame = document.createElementNS(NS, 'rect');
    frame.setAttribute('class', 'frame');
    frame.setAttribute('width', w);
    frame.setAttribute('height', h);
    svg.appendChild(frame);
    const line = (values, cls) => {
      const max = Math.max(1e-9, ...values);
      const n = values.length;
      const pts = values.map((v, i) => {
        const x = n > 1 ? (w * i) / (n - 1) : 0;
        return x.toFixed(1) + ',' + (h - 2 - ((h - 4) * v) / max).toFixed(1);
      });
      const p = document.createElementNS(NS, 'polyline');
      p.setAttribute('class', cls);
      p.setAttribute('points', pts.join(' '));
      svg.appendChild(p);
      return max;
    };
    const t = document.createElementNS(NS, 'title');
    if (series.queue) {
      if (series.queue.length > 1) t.textContent = 'most queued ' + line(series.queue, 'rps');
    } else if (series.rps.length > 1) {
      const top = line(series.rps, 'rps');
      const worst = line(series.p99_ms, 'p99');
      t.textContent = 'peak ' + top.toFixed(1) + ' req/s, worst p99 ' + worst.toFixed(1) + ' ms';
    }
    svg.appendChild(t);
    return svg;
  }

  function control(kind, name, input) {
    const b = el('button', kind + '-set', 'set');
    b.type = 'button';
    input.oninput = input.onchange = () => { input.dataset.dirty = '1'; };
    b.onclick = async () => {
      const value = kind === 'weight' ? Number(input.value) : input.value;
      const ok = kind === 'weight'
        ? await admin('PUT', '/admin/weights', { [name]: value }, name + ' weight → ' + value)
        : await admin('PUT', '/admin/backends/' + encodeURIComponent(name) + '/mode',
          { mode: value }, name + ' mode → ' + value);
      if (ok) delete input.dataset.dirty;
    };
    return b;
  }

  function makeRow(name) {
    const tr = el('tr');
    tr.dataset.backend = name;
    const cell = (field) => {
      const td = el('td');
      td.dataset.field = field;
      tr.appendChild(td);
      return td;
    };
    const r = { tr, cells: {} };
    const nameCell = cell('name');
    r.ramp = el('span', 'ramp');
    r.ramp.title = 'slow start: its share of its weight, growing to 100 %';
    nameCell.append(el('span', '', name), ' ', r.ramp, r.addr = el('div', 'addr'));
    for (const f of ['health', 'circuit']) {
      const td = cell(f);
      r.cells[f] = el('span');
      r[f + 'Since'] = el('div', 'since');
      td.append(r.cells[f], r[f + 'Since']);
    }
    const modeCell = cell('mode');
    r.cells.mode = el('span');
    r.modeInput = el('select', 'mode');
    for (const m of ['active', 'drain', 'maintenance']) r.modeInput.appendChild(el('option', '', m));
    modeCell.append(r.cells.mode, ' ', r.modeInput, control('mode', name, r.modeInput));
    const weightCell = cell('weight');
    r.cells.weight = el('span');
    r.weightInput = el('input', 'weight');
    r.weightInput.type = 'number';
    r.weightInput.min = '0';
    r.weightInput.max = '1000';
    weightCell.append(r.cells.weight, ' ', r.weightInput, control('weight', name, r.weightInput));
    for (const f of ['effective_weight', 'in_flight', 'rps', 'error_rate', 'p50_ms', 'p99_ms']) {
      r.cells[f] = cell(f);
      r.cells[f].classList.add('num');
    }
    r.spark = cell('spark');
    return r;
  }

  function update(r, b, now) {
    const c = r.cells;
    r.addr.textContent = b.group ? b.addr + ' · group ' + b.group : b.addr;
    for (const f of ['health', 'circuit', 'mode']) {
      c[f].textContent = b[f];
      c[f].className = b[f];
    }
    r.healthSince.textContent = 'for ' + ago(now - b.health_since_ms);
    r.healthSince.title = 'since ' + new Date(b.health_since_ms).toLocaleString();
    r.circuitSince.textContent = 'for ' + ago(now - b.circuit_since_ms);
    r.circuitSince.title = 'since ' + new Date(b.circuit_since_ms).toLocaleString();
    r.tr.className = b.health === 'down' ? 'is-down' : '';
    // Slow start (`balancer.slow_start`): the share it gets while it ramps.
    const ramping = b.slow_start_ratio < 1;
    r.ramp.hidden = !ramping;
    r.ramp.textContent = ramping ? 'ramping ' + Math.floor(100 * b.slow_start_ratio) + ' %' : '';
    c.weight.textContent = b.weight;
    if (!r.weightInput.dataset.dirty && document.activeElement !== r.weightInput) {
      r.weightInput.value = b.weight;
    }
    if (!r.modeInput.dataset.dirty && document.activeElement !== r.modeInput) {
      r.modeInput.value = b.mode;
    }
    c.effective_weight.textContent = b.effective_weight;
    c.in_flight.textContent = b.max_in_flight ? b.in_flight + ' / ' + b.max_in_flight : b.in_flight;
    c.rps.textContent = b.rps.toFixed(1);
    c.error_rate.textContent = (100 * b.error_rate).toFixed(2) + ' %';
    c.p50_ms.textContent = b.p50_ms === null ? '–' : b.p50_ms.toFixed(1);
    c.p99_ms.textContent = b.p99_ms === null ? '–' : b.p99_ms.toFixed(1);
    r.spark.replaceChildren(sparkline(b.series));
  }

  function render(v) {
    const body = $('rows');
    if (!cleared) {
      body.replaceChildren(); // the server's first rendering
      cleared = true;
    }
    const names = new Set();
    for (const b of v.backends) {
      names.add(b.name);
      let r = rows.get(b.name);
      if (!r) {
        r = makeRow(b.name);
        rows.set(b.name, r);
      }
      body.appendChild(r.tr); // keeps config order
      update(r, b, v.now_ms);
    }
    for (const [name, r] of rows) {
      if (!names.has(name)) {
        r.tr.remove();
        rows.delete(name);
      }
    }
    $('algorithm').textContent = v.algorithm;
    $('count').textContent = v.backends.length;
    $('queued').textContent = v.queue.depth;
    $('queue-spark').replaceChildren(sparkline({ queue: v.queue.series }, 80, 16));
    const sel = $('algorithm-input');
    if (!sel.dataset.dirty && document.activeElement !== sel) sel.value = v.algorithm;
    const list = $('events');
    list.replaceChildren();
    for (const e of v.events) {
      const li = el('li');
      li.append(el('time', '', clock(e.t_ms)), ' ', el('span', 'kind', e.kind), ' ',
        el('b', '', e.backend), ' ', el('span', e.from, e.from), ' → ', el('span', e.to, e.to));
      list.appendChild(li);
    }
    if (!v.events.length) list.appendChild(el('li', 'muted', 'none yet'));
  }

  function mib(b) {
    return b === null ? '–' : (b / 1048576).toFixed(1) + ' MiB';
  }

  // The [pool] (when there is one): a summary line and one row per member.
  function renderPool(p) {
    $('pool').hidden = false;
    const r = p.rollout ? ` · rollout ${p.rollout.state} ${p.rollout.done}/${p.rollout.total}` : '';
    $('pool-summary').textContent = `${p.provider} · size ${p.size} (${p.min_size}..=${p.max_size})` +
      ` · started ${p.started_total} · replaced ${p.replaced_total}` +
      ` · recycled ${p.recycled_total.age} age, ${p.recycled_total.memory} memory` +
      ` · scaled up ${p.scaled_up_total}, down ${p.scaled_down_total}${r}`;
    const body = $('pool-rows');
    body.replaceChildren();
    for (const m of p.members) {
      const tr = el('tr');
      const name = el('td', '', m.name);
      name.appendChild(el('div', 'addr', m.addr));
      tr.append(name, el('td', m.state, m.state), el('td', '', m.age_s + ' s'),
        el('td', '', mib(m.memory_bytes)), el('td', '', String(m.in_flight)),
        el('td', '', String(m.requests_total)));
      body.appendChild(tr);
    }
  }

  function days(n) {
    if (n < 0) return 'expired';
    return n === 1 ? '1 day' : n + ' days';
  }

  // With [tls]: each certificate served and its days left (null without).
  function renderCerts(certs) {
    $('certs').hidden = !certs;
    const body = $('cert-rows');
    body.replaceChildren();
    for (const c of certs || []) {
      const tr = el('tr', c.expiring ? 'expiring' : '');
      const names = el('td', '', c.names.join(', '));
      names.appendChild(el('div', 'addr', c.issuer));
      tr.append(names, el('td', '', c.not_after), el('td', 'num days', days(c.days_left)),
        el('td', '', c.source));
      body.appendChild(tr);
    }
  }

  async function refresh() {
    try {
      const r = await fetch('/history', { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const v = await r.json();
      render(v);
      if (v.pool) renderPool(v.pool);
      renderCerts(v.certificates);
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      $('updated').textContent = 'updated ' + clock(v.now_ms);
      $('updated').className = 'muted';
    } catch (e) {
      $('updated').textContent = 'lb unreachable (' + e.message + '), retrying';
      $('updated').className = 'down';
    }
    schedule(1000);
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(refresh, ms);
  }

  const algo = $('algorithm-input');
  algo.onchange = () => { algo.dataset.dirty = '1'; };
  $('algorithm-set').onclick = async () => {
    const ok = await admin('PUT', '/admin/algorithm', { algorithm: algo.value },
      'algorithm → ' + algo.value);
    if (ok) delete algo.dataset.dirty;
  };
  schedule(0);
})();
