// The playground in a real browser: Debian's chromium (never a downloaded one), driven by
// playwright-core. Serves the built site (playground/build) on 127.0.0.1, then: every shipped
// example as a preset (its effective policy and a request's decision), an invalid config (errors
// with line and field path), YAML 1.1 `on:`, and hostile input (5 MB, deep nesting, binary junk,
// a Rust panic) that must end in a message on a page that stays responsive.
//
//   PLAYGROUND_SITE   the built site (default: target/playground/site)
//   PLAYGROUND_OUT    screenshots (default: playground/tests/output)
//   PLAYGROUND_UPDATE_SCREENSHOT=1   also writes the README's playground/screenshot.png
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const site = path.resolve(process.env.PLAYGROUND_SITE
  || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, 'target'), 'playground/site'));
const out = path.resolve(process.env.PLAYGROUND_OUT || path.join(here, 'output'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
};

let server;
let origin;
let browser;
let profile;
let page;
const pageErrors = [];

function serve() {
  return new Promise((resolve) => {
    server = http.createServer((req, res) => {
      const url = new URL(req.url, 'http://x');
      const rel = decodeURIComponent(url.pathname === '/' ? '/index.html' : url.pathname);
      const file = path.join(site, path.normalize(rel));
      if (!file.startsWith(site) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
        res.writeHead(404).end('not found');
        return;
      }
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
      fs.createReadStream(file).pipe(res);
    });
    server.listen(0, '127.0.0.1', () => {
      origin = `http://127.0.0.1:${server.address().port}`;
      resolve();
    });
  });
}

before(async () => {
  assert.ok(fs.existsSync(path.join(site, 'index.html')), `no built site at ${site}: run playground/build`);
  fs.mkdirSync(out, { recursive: true });
  await serve();
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'resetguard-playground-chromium-'));
  // A persistent context on a fresh, empty profile directory: the flags the machine needs
  // (no background networking, component updates, sync or QUIC: its network is closed).
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1600, height: 1000 },
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  await page.goto(`${origin}/`);
  await page.waitForSelector('#engine[data-state="ready"]', { timeout: 30000 });
  await settled();
});

after(async () => {
  await browser?.close();
  server?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
});

const settled = () => page.evaluate(() => window.playground.settled());

async function choose(preset) {
  await page.selectOption('#preset', preset);
  await settled();
}

async function setConfig(text, name = 'config.yaml') {
  await page.fill('#name', name);
  await page.fill('#config', text);
  await settled();
}

async function setRequest({ method, path: p, headers = '', route = '' }) {
  await page.fill('#method', method);
  await page.fill('#path', p);
  await page.fill('#headers', headers);
  await page.selectOption('#route', route);
  await settled();
}

const status = () => page.getAttribute('#status', 'data-status');
const text = (selector) => page.locator(selector).innerText();
const findings = () => page.$$eval('#findings tr.finding', (rows) => rows.map((r) => ({
  severity: r.dataset.severity,
  line: r.dataset.line ? Number(r.dataset.line) : null,
  path: r.dataset.path,
  message: r.querySelector('.message').textContent,
})));
const methodRows = (scope) => page.$$eval(`${scope} table.methods tbody tr`, (rows) => rows.map((r) =>
  [...r.children].map((c) => c.innerText.trim())));

/// Main-thread round trips while the worker is busy: the page must answer within `limit` ms.
async function assertResponsive(limit = 500) {
  for (let i = 0; i < 5; i++) {
    const t0 = Date.now();
    await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(1))));
    const took = Date.now() - t0;
    assert.ok(took < limit, `the page took ${took} ms to answer`);
  }
}

const shot = (name) => page.screenshot({ path: path.join(out, `${name}.png`), fullPage: true });

function lineOf(haystack, needle) {
  const index = haystack.split('\n').findIndex((l) => l.includes(needle));
  assert.ok(index >= 0, `no line with ${needle}`);
  return index + 1;
}

test('every shipped example is a preset', async () => {
  const shipped = [];
  for (const dir of ['config', 'envoy', 'istio', 'envoy-gateway']) {
    for (const f of fs.readdirSync(path.join(repo, 'examples', dir))) {
      if (/\.(json|ya?ml)$/.test(f)) shipped.push(`examples/${dir}/${f}`);
    }
  }
  const options = await page.$$eval('#preset option', (os) => os.map((o) => o.value).filter(Boolean));
  assert.deepEqual(options.sort(), shipped.sort());
  assert.match(await text('#version'), /module [\d,]+ bytes/);
});

test('examples/config/minimal.json: the defaults; a client retry header is stripped', async () => {
  await choose('examples/config/minimal.json');
  assert.equal(await status(), 'ok');
  const rows = await methodRows('.card.policy');
  assert.deepEqual(rows[0].slice(0, 4),
    ['GET, HEAD, OPTIONS, TRACE, PUT, DELETE', 'idempotent', 'reset, connect-failure, refused-stream', '2']);
  assert.equal(rows[1][0], 'POST, PATCH, any other method');
  assert.equal(rows[1][2], 'reset-before-request, connect-failure, refused-stream');
  assert.match(await text('.card.policy .aborts'), /log_level debug/);
  assert.match(await text('.card.policy .access-log'), /wasm\.resetguard_code \(499\)/);
  await setRequest({ method: 'GET', path: '/items/1', headers: 'x-envoy-retry-on: 5xx' });
  assert.match(await text('#d-router'), /x-envoy-retry-on: reset,connect-failure,refused-stream/);
  assert.match(await text('#d-stripped'), /x-envoy-retry-on/);
  assert.equal(await page.getAttribute('#d-key', 'data-verdict'), 'not_checked');
  assert.equal(await page.getAttribute('#d-reply', 'data-status'), '');
  await shot('minimal');
});

test('examples/config/strict.json: per-try timeout and retriable status codes', async () => {
  await choose('examples/config/strict.json');
  assert.equal(await status(), 'ok');
  const rows = await methodRows('.card.policy');
  assert.match(rows[0][2], /x-envoy-upstream-rq-per-try-timeout-ms: 2000/);
  assert.match(rows[0][2], /retriable-status-codes/);
  assert.match(rows[0][2], /x-envoy-retriable-status-codes: 502,503,504/);
  await setRequest({ method: 'DELETE', path: '/items/1' });
  assert.match(await text('#d-router'), /x-envoy-upstream-rq-per-try-timeout-ms: 2000/);
  await shot('strict');
});

test('examples/config/idempotency.json: a keyless POST is answered 400, a keyed one is deduped', async () => {
  await choose('examples/config/idempotency.json');
  assert.equal(await status(), 'ok');
  const rows = await methodRows('.card.policy');
  const post = rows.find((r) => r[0] === 'POST');
  assert.ok(post, JSON.stringify(rows));
  assert.match(post[4], /Idempotency-Key required on every path, scoped by authorization/i);
  await setRequest({ method: 'POST', path: '/payments/42', headers: 'authorization: Bearer abc\ncontent-length: 18' });
  assert.equal(await page.getAttribute('#d-key', 'data-verdict'), 'missing');
  assert.equal(await page.getAttribute('#d-reply', 'data-status'), '400');
  assert.match(await text('#d-reply'), /application\/problem\+json/);
  assert.match(await text('#d-reply'), /urn:resetguard:problem:idempotency-key-missing/);
  assert.equal(await page.getAttribute('#d-router', 'data-arming'), 'local_reply');
  await shot('idempotency-keyless');
  await setRequest({
    method: 'POST', path: '/payments/42',
    headers: 'authorization: Bearer abc\nIdempotency-Key: "order-42"\ncontent-length: 18\nx-envoy-max-retries: 9',
  });
  assert.equal(await page.getAttribute('#d-key', 'data-verdict'), 'valid');
  assert.match(await text('#d-key'), /order-42/);
  assert.match(await text('#d-key'), /authorization \(1 value\)/);
  assert.match(await text('#d-router'), /x-envoy-retry-on: reset-before-request,connect-failure,refused-stream/);
  assert.match(await text('#d-stripped'), /x-envoy-max-retries/);
  assert.equal(await page.getAttribute('#d-reply', 'data-status'), '');
});

test('examples/envoy/bootstrap.yaml: the filter and its routes', async () => {
  await choose('examples/envoy/bootstrap.yaml');
  assert.equal(await status(), 'ok');
  assert.match(await text('.card.policy h3'), /resetguard filter \(recognised by (root_id|name) "resetguard"\)/);
  assert.match(await text('.card.policy .where'), /^line \d+: static_resources\.listeners\[0\]/);
  const uploads = await methodRows('.card.route[data-route="uploads"]');
  assert.equal(uploads[0][3], '1', JSON.stringify(uploads));
  assert.match(await text('.card.route[data-route="events"]'), /disabled/);
  // The preset's suggested request: PUT on the uploads route.
  assert.equal(await page.inputValue('#route'), 'uploads');
  assert.match(await text('#d-router'), /x-envoy-max-retries: 1/);
  assert.match(await text('#d-source'), /route "uploads"/);
  await setRequest({ method: 'GET', path: '/events/a', route: 'events' });
  assert.equal(await page.getAttribute('#decision', 'data-state'), 'disabled');
  await setRequest({ method: 'PUT', path: '/uploads/a', headers: 'content-length: 1024', route: 'uploads' });
  await shot('bootstrap');
  if (process.env.PLAYGROUND_UPDATE_SCREENSHOT === '1') {
    await page.screenshot({ path: path.join(repo, 'playground/screenshot.png') });
  }
});

test('examples/istio/wasmplugin.yaml: keys on /payments/, a valid key', async () => {
  await choose('examples/istio/wasmplugin.yaml');
  assert.equal(await status(), 'ok');
  assert.match(await text('.card.policy h3'), /Istio WasmPlugin "resetguard"/);
  assert.match(await text('.card.policy .keys'), /POST on \/payments\/: idempotency-key required \(enforce\)/i);
  await setRequest({
    method: 'POST', path: '/payments/42',
    headers: 'authorization: Bearer abc\nIdempotency-Key: "order-42"\ncontent-length: 18',
  });
  assert.equal(await page.getAttribute('#d-key', 'data-verdict'), 'valid');
  await setRequest({ method: 'POST', path: '/orders/1', headers: 'authorization: Bearer abc' });
  assert.equal(await page.getAttribute('#d-key', 'data-verdict'), 'exempt');
  assert.match(await text('#d-key'), /under none of idempotency\.path_prefixes/);
  await shot('istio');
});

test('examples/envoy-gateway/envoyextensionpolicy.yaml: retries only, the other document skipped', async () => {
  await choose('examples/envoy-gateway/envoyextensionpolicy.yaml');
  assert.equal(await status(), 'ok');
  assert.match(await text('.card.policy h3'), /Envoy Gateway EnvoyExtensionPolicy "resetguard" wasm\[0\]/);
  assert.match(await text('.card.policy .where'), /spec\.wasm\[0\]\.config/);
  const rows = await methodRows('.card.policy');
  assert.match(rows[0][2], /x-envoy-upstream-rq-per-try-timeout-ms: 5000/);
  await setRequest({ method: 'POST', path: '/orders' });
  assert.match(await text('#d-retry'), /not idempotent/);
  assert.match(await text('#d-router'), /reset-before-request/);
  await shot('envoy-gateway');
});

test('an invalid config: every error with its line and field path', async () => {
  const config = [
    '{',
    '  "retry": {',
    '    "max_retries": 11,',
    '    "on": ["reset", "bogus"]',
    '  },',
    '  "client_abort": {"log_level": "loud"},',
    '  "retyr": {}',
    '}',
  ].join('\n');
  await setConfig(config, 'broken.json');
  assert.equal(await status(), 'invalid');
  assert.match(await text('#status'), /4 errors/);
  const got = (await findings()).map((f) => [f.severity, f.line, f.path]);
  assert.deepEqual(got, [
    ['error', 3, 'retry.max_retries'],
    ['error', 4, 'retry.on[1]'],
    ['error', 6, 'client_abort.log_level'],
    ['error', 7, 'retyr'],
  ]);
  assert.match((await findings())[0].message, /invalid plugin configuration: an integer from 0 to 10/);
  assert.equal(await page.locator('#gutter .bad').count(), 4);
  assert.equal(await page.getAttribute('.card.policy', 'data-valid'), 'false');
  // A click on an error selects its line in the editor.
  await page.click('#findings tr.finding[data-path="retyr"]');
  const selected = await page.evaluate(() => {
    const t = document.getElementById('config');
    return t.value.slice(t.selectionStart, t.selectionEnd);
  });
  assert.equal(selected, '  "retyr": {}');
  await shot('invalid');
});

test('an invalid route override in a bootstrap points at the route metadata', async () => {
  const bootstrap = fs.readFileSync(path.join(repo, 'examples/envoy/bootstrap.yaml'), 'utf8')
    .replace('retry: { max_retries: 1 }', 'retry: { max_retries: "one" }');
  await setConfig(bootstrap, 'bootstrap.yaml');
  assert.equal(await status(), 'invalid');
  const [f] = await findings();
  assert.equal(f.path, 'static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].metadata.filter_metadata.resetguard.retry.max_retries');
  assert.equal(f.line, lineOf(bootstrap, 'max_retries: "one"'));
});

test('YAML 1.1: a bare `on:` in a WasmPlugin is the boolean true, with a hint', async () => {
  const manifest = fs.readFileSync(path.join(repo, 'examples/istio/wasmplugin.yaml'), 'utf8')
    .replace(/^(\s+)"on":/m, '$1on:');
  await setConfig(manifest, 'wasmplugin.yaml');
  assert.equal(await status(), 'invalid');
  const all = await findings();
  const line = manifest.split('\n').findIndex((l) => /^\s+on:/.test(l)) + 1;
  assert.ok(all.some((f) => f.severity === 'error' && f.path === 'spec.pluginConfig.retry.true' && f.line === line
    && /no such setting/.test(f.message)), JSON.stringify(all));
  assert.ok(all.some((f) => f.severity === 'hint' && f.line === line && /boolean in YAML 1\.1/.test(f.message)));
  await shot('yaml11');
});

test('a 5 MB paste: a clear message, the page stays responsive', async () => {
  const big = `retry:\n  max_retries: 2\n# ${'x'.repeat(5 * 1024 * 1024)}\n`;
  await setConfig('{"retry": {"max_retries": 1}}', 'small.json');
  // A real paste: the system clipboard, then Ctrl+V in the editor.
  await browser.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
  await page.evaluate((t) => navigator.clipboard.writeText(t), big);
  await page.focus('#config');
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Control+V');
  await page.waitForSelector('#input-note[data-state="refused"]');
  await assertResponsive();
  assert.match(await text('#input-note'),
    /^Not inserted: that is 5,242,9\d\d bytes, more than the playground checks \(1,048,576 bytes\)/);
  assert.equal(await page.inputValue('#config'), '{"retry": {"max_retries": 1}}');
  // Put there by a script: the page refuses it with the same message (without a responsiveness
  // check: Chromium's own layout of 5 MB in a textarea takes about a second, which is why a paste
  // is refused before it is inserted).
  await page.evaluate((t) => {
    const area = document.getElementById('config');
    area.value = t;
    area.dispatchEvent(new Event('input'));
  }, big);
  await settled();
  assert.equal(await status(), 'unusable');
  assert.match(await text('#status'), /bytes is more than the playground checks \(1048576 bytes\)/);
  // A 5 MB file: the .wasm says so itself.
  await page.setInputFiles('#file', { name: 'big.yaml', mimeType: 'text/yaml', buffer: Buffer.from(big) });
  await settled();
  assert.equal(await status(), 'unusable');
  assert.match(await text('#status'), /big\.yaml: 52429\d\d bytes is more than the playground checks/);
  await assertResponsive();
  // A normal config right after is checked as usual.
  await setConfig('{"retry": {"max_retries": 1}}', 'small.json');
  assert.equal(await status(), 'ok');
});

test('a 1 MB bootstrap with thousands of routes: checked off the main thread', async () => {
  const base = fs.readFileSync(path.join(repo, 'examples/envoy/bootstrap.yaml'), 'utf8');
  const marker = '              routes:\n';
  const at = base.indexOf(marker) + marker.length;
  let routes = '';
  for (let n = 0; base.length + routes.length < 1000 * 1000; n++) {
    routes += `              - name: r${n}\n                match: { prefix: "/r${n}/" }\n` +
      '                route: { cluster: backend, timeout: 15s }\n' +
      `                metadata: { filter_metadata: { resetguard: { retry: { max_retries: ${n % 3} } } } }\n`;
  }
  const big = base.slice(0, at) + routes + base.slice(at);
  const count = (routes.match(/- name: r/g) || []).length;
  await page.fill('#name', 'big-bootstrap.yaml');
  await page.evaluate((t) => {
    const area = document.getElementById('config');
    area.value = t;
    area.dispatchEvent(new Event('input'));
  }, big);
  // The worker is parsing and checking about a second: the page answers meanwhile.
  await page.waitForTimeout(300);
  await assertResponsive(250);
  await settled();
  const took = await page.evaluate(() => window.playground.state.took);
  console.log(`${big.length} bytes, ${count} generated routes: validated in ${took.validate} ms, explained in ${took.explain} ms`);
  assert.equal(await status(), 'ok');
  const shown = Number((await text('#status')).match(/(\d+) routes with settings/)[1]);
  assert.ok(shown >= count, `${shown} routes shown, ${count} generated`);
  assert.equal(await page.locator('.card.route').count(), 40);
  assert.match(await text('#policies .more'), /and [\d,]+ more routes/);
  await assertResponsive(250);
});

test('deeply nested YAML and JSON: a message, no crash', async () => {
  // The line is where the nesting goes past the limit.
  const cases = [
    [`${'- '.repeat(100000)}x\n`, /nested deeper than 128 levels/, 1],
    [Array.from({ length: 400 }, (_, i) => `${' '.repeat(i)}a:`).join('\n'), /nested deeper than 128 levels/, 129],
    [`${'['.repeat(200000)}${']'.repeat(200000)}`, /recursion limit exceeded/, 1],
    [`${'{"a":'.repeat(100000)}1${'}'.repeat(100000)}`, /recursion limit exceeded/, 1],
  ];
  for (const [config, message, line] of cases) {
    await page.evaluate((t) => {
      const area = document.getElementById('config');
      area.value = t;
      area.dispatchEvent(new Event('input'));
    }, config);
    await assertResponsive();
    await settled();
    assert.equal(await status(), 'unusable');
    assert.match(await text('#status'), message);
    const [f] = await findings();
    assert.equal(f.line, line, JSON.stringify(f));
  }
  assert.equal(await page.evaluate(() => window.playground.checker.restarts), 0);
});

test('binary junk: pasted and opened as a file', async () => {
  let junk = '';
  let seed = 7;
  for (let i = 0; i < 4096; i++) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    junk += String.fromCharCode(seed % 256);
  }
  await setConfig(junk, 'junk.bin');
  // YAML reads most junk as one plain scalar, which is no plugin configuration.
  assert.equal(await status(), 'invalid');
  const [f] = await findings();
  assert.deepEqual([f.line, f.path], [1, '$']);
  assert.match(f.message, /^invalid plugin configuration: an object, got /);
  await setConfig('\u0000\u0001{[\u0002: \ufffd\u007f', 'junk.bin');
  assert.equal(await status(), 'unusable');
  assert.match(await text('#status'), /junk\.bin: no resetguard configuration found/);
  await setConfig('{"retry": \u0000\u0001\u0002', 'junk.bin');
  assert.equal(await status(), 'unusable');
  assert.match(await text('#status'), /junk\.bin: cannot parse: neither JSON \(.*\) nor YAML \(.*\)/);
  assert.equal((await findings())[0].line, 1);
  const bytes = Buffer.alloc(2048);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 151 + 17) % 256;
  await page.setInputFiles('#file', { name: 'junk.wasm', mimeType: 'application/octet-stream', buffer: bytes });
  await settled();
  assert.equal(await status(), 'unusable');
  assert.match(await text('#status'), /junk\.wasm: not UTF-8 text/);
  assert.match(await text('#input-note'), /not loaded into the editor/);
  // A good file after it.
  await page.setInputFiles('#file', {
    name: 'ok.json', mimeType: 'application/json', buffer: Buffer.from('{"retry": {"max_retries": 3}}'),
  });
  await settled();
  assert.equal(await status(), 'ok');
  assert.match(await text('.card.policy'), /reset, connect-failure, refused-stream\s+3/);
});

test('a Rust panic becomes a message; the checker is replaced and the page goes on', async () => {
  const message = await page.evaluate(() => window.playground.selftestPanic());
  assert.match(message, /^the checker panicked \(panicked at playground\/src\/lib\.rs:\d+:\d+:\s+selftest: a deliberate panic\)$/);
  await page.waitForFunction(() => window.playground.checker.ready && window.playground.checker.restarts === 1);
  await page.waitForSelector('#engine[data-state="ready"]');
  assert.match(await text('#engine'), /restarted/);
  await choose('examples/config/idempotency.json');
  assert.equal(await status(), 'ok');
  assert.equal(await page.getAttribute('#d-reply', 'data-status'), '400');
});

test('no uncaught errors on the page', () => {
  assert.deepEqual(pageErrors, []);
});
