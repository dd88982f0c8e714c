// The playground page: the editor, the request form, and what the checker answers. The checker
// is a Web Worker running the playground's .wasm (worker.js); this thread never parses a
// configuration itself, so a large or hostile input cannot freeze the page. A call that takes
// longer than TIMEOUT_MS, or that traps (a Rust panic), ends that worker: the page says so and
// starts a fresh one.

const $ = (id) => document.getElementById(id);
const TIMEOUT_MS = 10000;
const DEBOUNCE_MS = 200;
const LINE_HEIGHT = 18;
// Replaced by the module's own limit once it is loaded (about().max_input_bytes).
let maxInputBytes = 1024 * 1024;

// A request that shows something worth seeing, per shipped example (by file name).
const SUGGESTED = {
  'minimal.json': { method: 'GET', path: '/items/1', headers: 'x-envoy-retry-on: 5xx' },
  'strict.json': { method: 'GET', path: '/items/1', headers: '' },
  'idempotency.json': { method: 'POST', path: '/payments/42', headers: 'authorization: Bearer abc\ncontent-length: 18' },
  'bootstrap.yaml': { method: 'PUT', path: '/uploads/a', headers: 'content-length: 1024', route: 'uploads' },
  'wasmplugin.yaml': {
    method: 'POST', path: '/payments/42',
    headers: 'authorization: Bearer abc\nIdempotency-Key: "order-42"\ncontent-length: 18\nx-envoy-retry-on: 5xx',
  },
  'envoyextensionpolicy.yaml': { method: 'POST', path: '/orders', headers: 'content-length: 7' },
};

class CheckerError extends Error {}

/// The worker, one call at a time; replaced after a trap or a timeout.
class Checker {
  constructor({ onReady, onFail }) {
    this.onReady = onReady;
    this.onFail = onFail;
    this.seq = 0;
    this.restarts = 0;
    this.spawn();
  }

  spawn() {
    this.pending = new Map();
    this.ready = false;
    this.worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    this.worker.onmessage = (e) => this.receive(e.data);
    this.worker.onerror = (e) => {
      e.preventDefault();
      this.onFail(`the checker could not start: ${e.message || 'a worker error'}`);
    };
  }

  receive(msg) {
    if ('ready' in msg) {
      if (msg.ready) {
        this.ready = true;
        this.onReady(msg, this.restarts);
      } else {
        this.onFail(msg.error);
      }
      return;
    }
    const call = this.pending.get(msg.id);
    if (!call) return;
    this.pending.delete(msg.id);
    clearTimeout(call.timer);
    if (msg.ok) {
      call.resolve(msg.result);
    } else {
      call.reject(new CheckerError(msg.error));
      if (msg.fatal) this.restart(msg.error);
    }
  }

  call(op, payload = {}, transfer = []) {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new CheckerError(`the check took longer than ${TIMEOUT_MS / 1000} s and was stopped`));
        this.restart('a call timed out');
      }, TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.worker.postMessage({ id, op, ...payload }, transfer);
    });
  }

  restart(why) {
    this.worker.terminate();
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(new CheckerError(`the checker was restarted (${why})`));
    }
    this.restarts += 1;
    this.lastRestart = why;
    this.spawn();
  }
}

// ---- small DOM helpers ------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const code = (text) => el('code', {}, text);
const where = (line, path) => (line ? `line ${line}: ${path}` : path);

function utf8Length(text) {
  if (text.length * 3 <= maxInputBytes) return text.length; // cannot be over the limit
  return new TextEncoder().encode(text).length;
}

// ---- state ------------------------------------------------------------------------------------

const state = {
  presets: [],
  validation: null,
  decision: null,
  configDirty: true,
  requestDirty: true,
  busy: false,
  timer: null,
  waiters: [],
  // A file that is not UTF-8: checked from its bytes, not loaded into the editor.
  bytes: null,
  // Milliseconds the last validate and explain took, rendering included.
  took: {},
};

const checker = new Checker({
  onReady(msg, restarts) {
    maxInputBytes = msg.about.max_input_bytes;
    $('version').textContent = `${msg.about.version}, module ${msg.wasmBytes.toLocaleString('en')} bytes`;
    $('engine').dataset.state = 'ready';
    $('engine').textContent = restarts
      ? `checker restarted (${checker.lastRestart}); ready`
      : `checker ready: resetguard-core and resetguard validate/explain in WebAssembly (${msg.wasmBytes.toLocaleString('en')} bytes)`;
    if (!state.presets.length) loadPresets(msg.presets);
    // After a restart the input that failed is not checked again until it changes (it could
    // fail the same way, forever); schedule(0) only settles the waiters then.
    if (!restarts) {
      state.configDirty = true;
      state.requestDirty = true;
    }
    schedule(0);
  },
  onFail(error) {
    $('engine').dataset.state = 'failed';
    $('engine').textContent = error;
  },
});

function loadPresets(presets) {
  state.presets = presets;
  const select = $('preset');
  for (const p of presets) select.append(el('option', { value: p.path }, p.path));
  const first = presets.find((p) => p.path.endsWith('/bootstrap.yaml')) || presets[0];
  if (first && !$('config').value) choosePreset(first.path);
}

function choosePreset(path) {
  const preset = state.presets.find((p) => p.path === path);
  if (!preset) return;
  $('preset').value = path;
  $('config').value = preset.text;
  state.bytes = null;
  const file = path.split('/').pop();
  $('name').value = path;
  const suggested = SUGGESTED[file];
  if (suggested) {
    $('method').value = suggested.method;
    $('path').value = suggested.path;
    $('headers').value = suggested.headers;
    state.wantRoute = suggested.route || '';
  } else {
    state.wantRoute = '';
  }
  $('override').value = '';
  configChanged(0);
}

// ---- scheduling: the latest input wins; one call in flight ------------------------------------

function schedule(delay = DEBOUNCE_MS) {
  clearTimeout(state.timer);
  state.timer = setTimeout(() => {
    state.timer = null;
    refresh();
  }, delay);
}

function configChanged(delay) {
  state.configDirty = true;
  state.requestDirty = true;
  renderGutter();
  schedule(delay);
}

function requestChanged() {
  state.requestDirty = true;
  schedule();
}

async function refresh() {
  if (state.busy || !checker.ready) return;
  state.busy = true;
  try {
    while (state.configDirty || state.requestDirty) {
      if (state.configDirty) {
        state.configDirty = false;
        const t0 = performance.now();
        await validateNow();
        state.took.validate = Math.round(performance.now() - t0);
      }
      if (state.requestDirty) {
        state.requestDirty = false;
        const t0 = performance.now();
        await explainNow();
        state.took.explain = Math.round(performance.now() - t0);
      }
    }
  } finally {
    state.busy = false;
  }
  if (!state.timer && checker.ready) {
    for (const w of state.waiters.splice(0)) w();
  }
}

/// Resolves once every change so far has been checked and shown (for the tests).
function settled() {
  return new Promise((resolve) => {
    if (!state.busy && !state.timer && checker.ready && !state.configDirty && !state.requestDirty) {
      resolve();
    } else {
      state.waiters.push(resolve);
    }
  });
}

// ---- validate ---------------------------------------------------------------------------------

function configName() {
  return $('name').value.trim() || 'config';
}

async function validateNow() {
  const name = configName();
  const text = $('config').value;
  const slow = setTimeout(() => setStatus('working', 'checking…'), 150);
  let result;
  try {
    if (state.bytes) {
      const copy = state.bytes.slice(0);
      result = await checker.call('validateBytes', { name, bytes: copy }, [copy]);
    } else {
      const bytes = utf8Length(text);
      if (bytes > maxInputBytes) {
        // Not even sent to the worker: the module would say the same.
        const message = `${name}: ${bytes} bytes is more than the playground checks ` +
          `(${maxInputBytes} bytes); check it with \`resetguard validate FILE\`, which has no limit`;
        result = {
          status: 'unusable', exit_code: 2, summary: message, configs: [], routes: [], skipped: [],
          findings: [{ severity: 'error', document: 0, line: null, path: '$', message }],
          text: { stdout: '', stderr: `error: ${message}\n` },
        };
      } else {
        result = await checker.call('validate', { name, text });
      }
    }
  } catch (e) {
    result = {
      status: 'failed', exit_code: null, summary: `${e.message}; the page is still usable`,
      findings: [], configs: [], routes: [], skipped: [], text: { stdout: '', stderr: e.message },
    };
  } finally {
    clearTimeout(slow);
  }
  state.validation = result;
  renderValidation(result);
}

function setStatus(status, text) {
  const box = $('status');
  box.dataset.status = status;
  box.textContent = text;
}

function renderValidation(result) {
  const configs = result.configs.length;
  const errors = result.findings.filter((f) => f.severity === 'error').length;
  const status = {
    ok: `✓ valid: ${configs} resetguard configuration${configs === 1 ? '' : 's'}` +
      (result.routes.length ? `, ${result.routes.length} route${result.routes.length === 1 ? '' : 's'} with settings` : ''),
    invalid: `✗ invalid: ${errors} error${errors === 1 ? '' : 's'}`,
    unusable: `✗ ${result.summary}`,
    failed: `✗ ${result.summary}`,
  }[result.status] || result.summary;
  setStatus(result.status, status);

  const table = $('findings');
  const body = table.querySelector('tbody');
  body.replaceChildren();
  const shown = result.findings.slice(0, 500);
  for (const f of shown) {
    const row = el('tr', { class: `finding ${f.severity}`, 'data-line': f.line ?? '', 'data-path': f.path, 'data-severity': f.severity },
      el('td', { class: `sev-${f.severity}` }, f.severity),
      el('td', { class: 'line' }, f.line ?? '–'),
      el('td', { class: 'path' }, f.path),
      el('td', { class: 'message' }, f.message));
    if (f.line) row.addEventListener('click', () => goToLine(f.line));
    body.append(row);
  }
  if (result.findings.length > shown.length) {
    body.append(el('tr', {}, el('td', { colspan: 4 }, `… and ${result.findings.length - shown.length} more`)));
  }
  table.hidden = result.findings.length === 0;

  renderPolicies(result);
  $('cli-validate').textContent = (result.text.stdout || '') + (result.text.stderr || '');
  renderGutter();
  updateRoutes(result);
}

function retryCell(retry) {
  if (!retry.armed) return el('span', { class: 'tag off' }, 'nothing armed');
  const extra = retry.router_headers
    .filter(([n]) => n !== 'x-envoy-retry-on' && n !== 'x-envoy-max-retries')
    .map(([n, v]) => `${n}: ${v}`);
  return [
    retry.retry_on.join(', '),
    extra.length ? el('div', { class: 'muted' }, extra.join('; ')) : null,
  ];
}

function keyCell(key) {
  if (!key) return '—';
  const paths = key.every_path ? 'every path' : key.paths.join(', ');
  const what = key.required ? 'required' : 'reported if missing (report mode)';
  return [
    `${key.header} ${what} on ${paths}, scoped by ${key.scope_headers.join(', ') || 'nothing'}`,
    key.keyed_retry ? el('div', { class: 'muted' }, `with a valid key: ${key.keyed_retry.retry_on.join(', ')}`) : null,
  ];
}

/// The methods table, then keys, client aborts and access logs (on a route: only those that
/// differ from the plugin configuration `base`), then every setting.
function policyView(policy, settings, base) {
  const same = (part) => base && JSON.stringify(base[part]) === JSON.stringify(policy[part]);
  const rows = policy.methods.map((m) => el('tr', { class: 'method-row' },
    el('td', {}, m.methods.join(', ')),
    el('td', {}, el('span', { class: `tag ${m.class === 'idempotent' ? 'idempotent' : 'unsafe'}`, title: m.summary }, m.class)),
    el('td', { class: 'retry-on' }, retryCell(m.retry)),
    el('td', {}, m.retry.armed ? m.retry.max_retries : 0),
    el('td', { class: 'key' }, keyCell(m.key))));
  const table = el('table', { class: 'methods' },
    el('thead', {}, el('tr', {}, ['methods', 'class', 'retried on', 'max', 'Idempotency-Key'].map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
  const keys = policy.keys;
  const keyText = keys.enabled
    ? `${keys.methods.join(', ')} on ${keys.every_path ? 'every path' : keys.paths.join(', ')}: ` +
      `${keys.header} ${keys.mode === 'enforce' ? 'required (enforce)' : 'reported if missing (report)'}, ` +
      `scoped by ${keys.scope_headers.join(', ') || 'nothing'}; a full store: ${keys.when_full}; ` +
      `a request whose outcome is unknown: ${keys.unknown_outcome}`
    : 'not checked (no idempotency section)';
  const dl = el('dl', {},
    !same('client_router_controls') && [
      el('dt', {}, 'client router controls'),
      el('dd', { class: 'controls' }, policy.client_router_controls === 'stripped'
        ? 'stripped (x-envoy-retry-on, x-envoy-max-retries, … sent by clients never reach the router)'
        : 'kept: a request carrying one gets nothing armed (retry.trust_client_retry_headers)')],
    !same('keys') && [el('dt', {}, 'idempotency keys'), el('dd', { class: 'keys' }, keyText)],
    !same('aborts') && [
      el('dt', {}, 'client aborts'),
      el('dd', { class: 'aborts' }, `log_level ${policy.aborts.log_level}: ${policy.aborts.log}`),
      el('dt', {}, 'access logs'),
      el('dd', { class: 'access-log' }, policy.aborts.access_log),
      el('dt', {}, 'counted as'),
      el('dd', {}, policy.aborts.counters.map(code).reduce((acc, c, i) => (i ? [...acc, ', ', c] : [c]), []))]);
  const asBase = base && same('client_router_controls') && same('keys') && same('aborts')
    && el('p', { class: 'muted' }, 'client router controls, keys, client aborts and access logs: as in the plugin configuration');
  const all = el('details', {}, el('summary', {}, 'every setting, defaults included'),
    el('pre', {}, JSON.stringify(settings, null, 2)));
  return [table, asBase || dl, all];
}

// Cards shown at most (each kind); the rest are counted, and all are in the CLI's own output.
const MAX_CARDS = 40;

function renderPolicies(result) {
  const box = $('policies');
  box.replaceChildren();
  const more = (n, what) => n > MAX_CARDS && box.append(el('p', { class: 'muted more' },
    `… and ${(n - MAX_CARDS).toLocaleString('en')} more ${what} (all of them are in the CLI's own output below)`));
  for (const c of result.configs.slice(0, MAX_CARDS)) {
    const card = el('div', { class: 'card policy', 'data-config': c.index, 'data-valid': String(c.valid) },
      el('h3', {}, c.label),
      el('div', { class: 'where' }, where(c.line, c.path)));
    if (c.valid) {
      card.append(...policyView(c.policy, c.settings));
    } else {
      card.append(el('p', { class: 'sev-error' }, 'invalid: the filter would refuse this configuration (errors above)'));
    }
    box.append(card);
  }
  more(result.configs.length, 'configurations');
  for (const r of result.routes.slice(0, MAX_CARDS)) {
    const card = el('div', { class: 'card route', 'data-route': r.name ?? '' },
      el('h3', {}, `route ${r.name ? `"${r.name}"` : '(unnamed)'}`),
      el('div', { class: 'where' }, where(r.line, r.path)));
    if (r.turned_off) {
      card.append(el('p', { class: 'effect' }, el('span', { class: 'tag off' }, 'off'),
        " resetguard turned off on this route (Envoy's per-route FilterConfig disabled: true)"));
    }
    if (r.override) {
      card.append(el('p', {}, 'override: ', code(JSON.stringify(r.override))));
    }
    for (const e of r.effects) {
      if (e.kind === 'disabled') {
        card.append(el('p', { class: 'effect', 'data-kind': 'disabled' }, el('span', { class: 'tag off' }, 'disabled'),
          ' resetguard disabled on this route (override disabled: true): requests pass untouched'));
      } else if (e.kind === 'same') {
        card.append(el('p', { class: 'effect', 'data-kind': 'same' }, 'effective policy: the same as the plugin configuration'));
      } else {
        const base = result.configs[e.config]?.policy;
        card.append(el('p', { class: 'effect', 'data-kind': 'policy' }, 'effective policy on this route:'),
          ...policyView(e.policy, e.settings, base));
      }
    }
    box.append(card);
  }
  more(result.routes.length, 'routes');
  for (const s of result.skipped.slice(0, MAX_CARDS)) {
    box.append(el('p', { class: 'muted skipped' }, `skipped ${s.what} at ${s.path}`));
  }
}

function updateRoutes(result) {
  const select = $('route');
  const want = state.wantRoute ?? select.value;
  state.wantRoute = undefined;
  const named = result.routes.filter((r) => r.name).map((r) => r.name);
  select.replaceChildren(el('option', { value: '' }, 'the plugin configuration (no route)'),
    ...named.map((n) => el('option', { value: n }, `route "${n}"`)));
  select.value = named.includes(want) ? want : '';
}

// ---- the editor's line numbers ------------------------------------------------------------------

function renderGutter() {
  const text = $('config').value;
  const gutter = $('gutter');
  if (text.length > maxInputBytes) {
    gutter.textContent = '';
    return;
  }
  let lines = 1;
  for (let i = text.indexOf('\n'); i !== -1; i = text.indexOf('\n', i + 1)) lines += 1;
  const marks = new Map();
  for (const f of state.validation?.findings || []) {
    if (!f.line) continue;
    const cls = f.severity === 'error' ? 'bad' : 'warn';
    if (marks.get(f.line) !== 'bad') marks.set(f.line, cls);
  }
  const parts = [];
  for (let n = 1; n <= lines; n++) {
    const cls = marks.get(n);
    parts.push(cls ? `<span class="${cls}">${n}</span>` : String(n));
  }
  gutter.innerHTML = parts.join('\n') + '\n';
  gutter.scrollTop = $('config').scrollTop;
}

function goToLine(line) {
  const area = $('config');
  const text = area.value;
  let start = 0;
  for (let n = 1; n < line && start !== -1; n++) start = text.indexOf('\n', start) + 1 || -1;
  if (start < 0) return;
  const end = text.indexOf('\n', start);
  area.focus();
  area.setSelectionRange(start, end === -1 ? text.length : end);
  area.scrollTop = Math.max(0, (line - 4) * LINE_HEIGHT);
}

// ---- explain ------------------------------------------------------------------------------------

async function explainNow() {
  const box = $('decision');
  const v = state.validation;
  if (!v || state.bytes || v.status === 'unusable' || v.status === 'failed') {
    box.dataset.state = 'error';
    box.replaceChildren(el('p', {}, 'No usable configuration to decide with (see the left).'));
    $('cli-explain').textContent = '';
    state.decision = null;
    return;
  }
  const request = {
    method: $('method').value,
    path: $('path').value,
    headers: $('headers').value,
    route: $('route').value || null,
    override: $('override').value || null,
  };
  let result;
  try {
    result = await checker.call('explain', { name: configName(), text: $('config').value, request });
  } catch (e) {
    result = { ok: false, error: `${e.message}; the page is still usable` };
  }
  state.decision = result;
  renderDecision(result);
}

function list(items, empty) {
  if (!items.length) return el('span', { class: 'muted' }, empty);
  return el('ul', {}, items.map((i) => el('li', {}, code(i))));
}

function renderDecision(d) {
  const box = $('decision');
  $('cli-explain').textContent = d.text || '';
  if (!d.ok) {
    box.dataset.state = 'error';
    box.replaceChildren(el('p', { id: 'd-error' }, d.error));
    return;
  }
  box.dataset.state = d.disabled ? 'disabled' : 'decided';
  const rows = [
    ['policy', el('span', { id: 'd-source' }, d.source)],
  ];
  if (d.disabled) {
    rows.push(['decision', el('span', { id: 'd-disabled' },
      'resetguard is disabled on this route (disabled: true): the request passes untouched; nothing is armed, stripped or counted')]);
  } else {
    const reply = d.local_reply;
    let replyView;
    if (reply && reply.status) {
      replyView = [
        el('div', { class: 'reply' }, `${reply.status} ${reply.content_type}` +
          (reply.retry_after_s ? `, Retry-After: ${reply.retry_after_s}` : '') + ` — ${reply.title}`),
        el('div', {}, code(reply.type)),
        el('div', {}, reply.detail, ' The request never reaches the upstream.'),
        el('pre', { class: 'body' }, JSON.stringify(reply.body, null, 2)),
      ];
    } else if (reply && reply.report_mode) {
      replyView = `none (report mode): the request passes; enforce mode would answer ${reply.would_have}`;
    } else {
      replyView = el('span', { class: 'muted' }, 'none: the request goes on to the upstream');
    }
    const key = d.key;
    const keyView = [el('div', { class: `verdict verdict-${key.verdict}` }, `${key.verdict.replace('_', ' ')}: ${key.detail}`)];
    if (key.scope) {
      const scope = key.scope.headers.map((h) => `${h.name} (${h.values} value${h.values === 1 ? '' : 's'})`);
      keyView.push(el('div', { class: 'muted' }, `bound to a keyed hash of ${scope.join(', ')}, :authority ${key.scope.authority}, ` +
        `:method ${key.scope.method}, :path ${key.scope.path}` +
        (key.scope.anonymous ? ' (none of the scope headers is present: the anonymous scope, shared by every such client)' : '')));
    }
    if (key.store) keyView.push(el('div', { class: 'muted' }, key.store));
    if (key.body_buffered) keyView.push(el('div', { class: 'muted' }, `body buffered and fingerprinted (up to ${key.body_buffered} bytes) before the store is asked`));
    rows.push(
      ['retry', el('span', { id: 'd-retry' }, el('span', { class: `tag ${d.retry.class === 'not idempotent' ? 'unsafe' : 'idempotent'}` }, d.retry.class))],
      ['router headers set', el('div', { id: 'd-router', 'data-arming': d.arming },
        list(d.router_headers.map(([n, v]) => `${n}: ${v}`), d.router_headers_note),
        d.router_headers.length ? el('div', { class: 'muted' }, d.router_headers_note) : null)],
      ['client headers stripped', el('div', { id: 'd-stripped' },
        list(d.stripped, d.kept.length ? `none; kept (trusted): ${d.kept.join(', ')}` : 'none'))],
      ['idempotency key', el('div', { id: 'd-key', 'data-verdict': key.verdict }, keyView)],
      ['local reply', el('div', { id: 'd-reply', 'data-status': reply?.status ?? '' }, replyView)],
      ['counted', el('div', { id: 'd-counted' }, d.counters.map(code).reduce((acc, c, i) => (i ? [...acc, ', ', c] : [c]), []))],
    );
  }
  box.replaceChildren(el('dl', {}, rows.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])));
}

// ---- wiring -------------------------------------------------------------------------------------

// A paste (or a drop) that would take the editor past the limit is not inserted: Chromium needs
// most of a second just to lay out a few MB in a textarea, and the checker would refuse it anyway.
$('config').addEventListener('beforeinput', (e) => {
  const inserted = e.data ?? e.dataTransfer?.getData('text/plain') ?? '';
  if (inserted.length < 1024) return;
  const area = e.target;
  const kept = area.value.length - (area.selectionEnd - area.selectionStart);
  const bytes = utf8Length(inserted);
  if (bytes + kept <= maxInputBytes) return;
  e.preventDefault();
  const note = $('input-note');
  note.dataset.state = 'refused';
  note.textContent = `Not inserted: that is ${bytes.toLocaleString('en')} bytes, more than the ` +
    `playground checks (${maxInputBytes.toLocaleString('en')} bytes). Check a file that large with ` +
    '`resetguard validate FILE`, which has no limit.';
});

$('config').addEventListener('input', () => {
  delete $('input-note').dataset.state;
  $('input-note').textContent = '';
  state.bytes = null;
  $('preset').value = '';
  configChanged();
});
$('config').addEventListener('scroll', () => { $('gutter').scrollTop = $('config').scrollTop; });
$('name').addEventListener('input', () => configChanged());
$('preset').addEventListener('change', (e) => { if (e.target.value) choosePreset(e.target.value); });
for (const id of ['method', 'path', 'headers', 'route', 'override']) {
  $(id).addEventListener('input', requestChanged);
  $(id).addEventListener('change', requestChanged);
}
$('request').addEventListener('submit', (e) => { e.preventDefault(); requestChanged(); });

$('file').addEventListener('change', async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  state.configDirty = true; // settled() waits for this file
  const bytes = await file.arrayBuffer();
  $('name').value = file.name;
  $('preset').value = '';
  let text = null;
  if (bytes.byteLength <= maxInputBytes) {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      text = null;
    }
  }
  if (text !== null) {
    state.bytes = null;
    $('config').value = text;
    $('input-note').textContent = `opened ${file.name} (${bytes.byteLength.toLocaleString('en')} bytes)`;
  } else {
    // Checked from its bytes (so the message is the CLI's), not put into the editor.
    state.bytes = bytes;
    $('config').value = '';
    $('input-note').textContent = `${file.name} (${bytes.byteLength.toLocaleString('en')} bytes) was checked as a file and not loaded into the editor`;
  }
  e.target.value = '';
  configChanged(0);
});

// For the tests, and for anyone curious in the console.
window.playground = {
  settled,
  state,
  checker,
  choosePreset,
  selftestPanic: () => checker.call('panic').catch((e) => e.message),
};
