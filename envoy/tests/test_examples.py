"""Every example under examples/ is loadable: plugin JSON configs and the configs embedded in the
Kubernetes manifests go through a real Envoy's `--mode validate` (on_configure runs); the static
bootstrap validates with the built .wasm and runs end to end, ports substituted, in front of a
chaos upstream: retries, per-route overrides, the access log format it ships, and its hold of
keyed requests (replays and 422s that resetguard answers put no request head on the backend; the
same file with the hold disabled is the control). The Kubernetes examples' holds run the same way,
as their control planes would put them into Envoy (the Istio EnvoyFilter's filter before the
router; Envoy Gateway's requestBuffer after Wasm, and in Envoy Gateway's default order as the
control); no control plane runs here.
(`cli/tests/cli.rs` runs `resetguard validate` on every example too.)"""

import json
import re
import time

import yaml

import pytest

from harness import client, paths
from harness.envoy import Envoy, plugin_config_text, render_config, validate_text
from harness.upstream import ChaosUpstream
from helpers import counters_delta, wait_outcomes

EX = paths.EXAMPLES_DIR
JSON_FILES = sorted(EX.rglob("*.json"))
MANIFESTS = [EX / "istio" / "wasmplugin.yaml", EX / "envoy-gateway" / "envoyextensionpolicy.yaml"]


def _validate_plugin_config(config, run_dir, name):
    text = render_config("resetguard.yaml", PLUGIN_CONFIG=plugin_config_text(config))
    res = validate_text(text, run_dir, name)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2500:]


def test_examples_exist():
    names = {p.name for p in JSON_FILES}
    assert {"minimal.json", "strict.json", "idempotency.json"} <= names
    assert all(p.is_file() for p in MANIFESTS)
    assert (EX / "envoy" / "bootstrap.yaml").is_file()


@pytest.mark.parametrize("path", JSON_FILES, ids=[p.stem for p in JSON_FILES])
def test_json_example_loads_in_envoy(path, run_dir):
    config = json.loads(path.read_text())  # parseable JSON
    assert isinstance(config, dict)
    _validate_plugin_config(path.read_text(), run_dir, path.stem)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.parent.name for p in MANIFESTS])
def test_manifest_plugin_config_loads_in_envoy(path, run_dir):
    docs = [d for d in yaml.safe_load_all(path.read_text())
            if d["kind"] in ("WasmPlugin", "EnvoyExtensionPolicy")]
    assert len(docs) == 1, path
    doc = docs[0]
    spec = doc["spec"]
    if doc["kind"] == "WasmPlugin":
        assert doc["apiVersion"].startswith("extensions.istio.io/")
        config = spec["pluginConfig"]
    else:
        assert doc["kind"] == "EnvoyExtensionPolicy"
        assert doc["apiVersion"].startswith("gateway.envoyproxy.io/")
        config = spec["wasm"][0]["config"]
    _validate_plugin_config(config, run_dir, path.stem)


def test_static_bootstrap_example_validates(run_dir):
    text = (EX / "envoy" / "bootstrap.yaml").read_text()
    assert "/etc/envoy/resetguard.wasm" in text
    text = text.replace("/etc/envoy/resetguard.wasm", str(paths.require_wasm()))
    res = validate_text(text, run_dir, "bootstrap")
    assert res.returncode == 0, (res.stdout + res.stderr)[-2500:]


RESET = {"action": "reset_before_headers"}
OK = {"action": "respond", "status": 200, "body": "hello"}
SLOW = {"action": "respond", "status": 200, "body": "late", "delay_ms": 1500}


def _runnable_bootstrap(run_dir, upstream_port, variant=None):
    """The shipped bootstrap with loopback ports and the built .wasm: nothing else changes, unless
    `variant` (a name, and a function that edits the parsed bootstrap's HTTP connection manager)
    is given: then the edited bootstrap."""
    text = (EX / "envoy" / "bootstrap.yaml").read_text()
    swaps = [
        ("port_value: 9901", "port_value: 0"),
        ("{ address: 0.0.0.0, port_value: 10000 }", "{ address: 127.0.0.1, port_value: 0 }"),
        ("port_value: 8080", f"port_value: {upstream_port}"),
        ("filename: /etc/envoy/resetguard.wasm", f"filename: {paths.require_wasm()}"),
    ]
    for old, new in swaps:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    name = "bootstrap-example"
    if variant is not None:
        name, edit = variant
        config = yaml.safe_load(text)
        edit(config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
             ["typed_config"])
        text = yaml.safe_dump(config, sort_keys=False)
    path = run_dir / f"{name}.yaml"
    path.write_text(text)
    return path


def _access_lines(envoy, n, timeout=5.0):
    """The example logs to stdout, which the harness captures in envoy.log."""
    def lines():
        return [l for l in envoy.log_text().splitlines() if " route=" in l and l.startswith("[")]
    envoy.wait_for(lambda: len(lines()) >= n, timeout=timeout)
    return lines()


def _line_for(lines, method, path):
    found = [l for l in lines if f'"{method} {path}"' in l]
    assert len(found) == 1, lines
    return found[0]


def test_static_bootstrap_example_end_to_end(run_dir, upstream):
    e = Envoy(template=str(_runnable_bootstrap(run_dir, upstream.port)), run_dir=run_dir / "envoy",
              name="bootstrap-example")
    with e:
        before = e.filter_counters()
        # A reset GET on the default route is retried (with the route's back-off) and succeeds.
        upstream.plan("/items", [RESET, OK])
        r = client.request(e.port, "GET", "/items")
        assert (r.status, r.body) == (200, b"hello"), r
        assert upstream.path_attempts("/items") == 2
        # A POST reset after it was sent is not replayed: 503 after one attempt.
        upstream.plan("/orders", [RESET, OK])
        r = client.request(e.port, "POST", "/orders", body=b"{}")
        assert r.status == 503, r
        assert upstream.path_attempts("/orders") == 1
        # /uploads/ overrides max_retries to 1: two resets exhaust it (the default route's 2
        # retries would have reached the third attempt).
        upstream.plan("/uploads/a", [RESET, RESET, OK])
        r = client.request(e.port, "GET", "/uploads/a")
        assert r.status == 503, r
        assert upstream.path_attempts("/uploads/a") == 2
        # /events/ disables the filter: nothing armed, the reset reaches the client.
        upstream.plan("/events/a", [RESET, OK])
        r = client.request(e.port, "GET", "/events/a")
        assert r.status == 503, r
        assert upstream.path_attempts("/events/a") == 1
        # A client that leaves before the answer: the access log shows the 499 outcome.
        upstream.plan("/slow", [SLOW])
        client.aborting_request(e.port, "GET", "/slow", abort_after_ms=300)

        delta = counters_delta(before, wait_outcomes(e, before, 4, timeout=10))
        assert delta.get("resetguard.retry.armed_full") == 3, delta  # /items, /uploads/a, /slow
        assert delta.get("resetguard.outcome.upstream_reset") == 2, delta  # /orders, /uploads/a

        lines = _access_lines(e, 5, timeout=10)
        items = _line_for(lines, "GET", "/items")
        assert re.search(r" 200 - route=default attempts=2 outcome=- code=- ", items), items
        orders = _line_for(lines, "POST", "/orders")
        assert re.search(r" 503 UC route=default attempts=1 outcome=upstream_reset ", orders), orders
        uploads = _line_for(lines, "GET", "/uploads/a")
        assert "route=uploads attempts=2 outcome=upstream_reset" in uploads, uploads
        events = _line_for(lines, "GET", "/events/a")
        assert "route=events attempts=1 outcome=- code=-" in events, events
        slow = _line_for(lines, "GET", "/slow")
        assert re.search(r" DC route=default attempts=1 outcome=client_abort code=499 ", slow), slow


RESENDS = 20  # re-sends of completed keys: even ones the same body (replay), odd ones another (422)
HOLD_NAME = "resetguard.hold_keyed_requests"
BUFFER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"


def _filters(hcm) -> list:
    return hcm["http_filters"]


def _index(hcm, name) -> int:
    return next(i for i, f in enumerate(_filters(hcm)) if f["name"] == name)


def _hold_off(hcm):
    _filters(hcm)[_index(hcm, HOLD_NAME)]["disabled"] = True


def _istio_hold(hcm):
    """The hold as examples/istio's EnvoyFilter inserts it: its patch value before the router."""
    docs = list(yaml.safe_load_all((EX / "istio" / "wasmplugin.yaml").read_text()))
    (patch,) = [p for d in docs if d["kind"] == "EnvoyFilter" for p in d["spec"]["configPatches"]]
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == \
        "envoy.filters.http.router"
    del _filters(hcm)[_index(hcm, HOLD_NAME)]
    _filters(hcm).insert(_index(hcm, "envoy.filters.http.router"), patch["patch"]["value"])


def _gateway_hold(after_wasm: bool):
    """What Envoy Gateway's translator emits for examples/envoy-gateway's requestBuffer
    (internal/xds/translator/request_buffer.go): envoy.filters.http.buffer in the listener,
    disabled, and BufferPerRoute on the HTTPRoute's routes (here a /payments/ route); after the
    Wasm filter with the example's EnvoyProxy filterOrder, ahead of it by default."""
    docs = list(yaml.safe_load_all((EX / "envoy-gateway" / "envoyextensionpolicy.yaml").read_text()))
    (limit,) = [d["spec"]["requestBuffer"]["limit"] for d in docs
                if d["kind"] == "BackendTrafficPolicy" and "requestBuffer" in d["spec"]]
    (order,) = [d["spec"]["filterOrder"] for d in docs if d["kind"] == "EnvoyProxy"]
    assert order == [{"name": "envoy.filters.http.buffer", "after": "envoy.filters.http.wasm"}]
    assert limit == "2Mi"
    max_bytes = 2 * 1024 * 1024

    def edit(hcm):
        del _filters(hcm)[_index(hcm, HOLD_NAME)]
        buffer = {"name": "envoy.filters.http.buffer", "disabled": True,
                  "typed_config": {"@type": BUFFER_TYPE, "max_request_bytes": max_bytes}}
        _filters(hcm).insert(_index(hcm, "envoy.filters.http.wasm") + (1 if after_wasm else 0),
                             buffer)
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(len(routes) - 1, {
            "name": "payments", "match": {"prefix": "/payments/"},
            "route": {"cluster": "backend", "timeout": "15s"},
            "typed_per_filter_config": {"envoy.filters.http.buffer": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
                "buffer": {"max_request_bytes": max_bytes}}}})
    return edit


def _keyed_resends(run_dir, upstream, variant=None) -> dict:
    """Completed keyed POSTs on /payments/, then their re-sends over one keep-alive connection:
    what of the re-sends reached the backend, as (request heads, heads then cut) per kind."""
    name = variant[0] if variant else "bootstrap-example"
    e = Envoy(template=str(_runnable_bootstrap(run_dir, upstream.port, variant)),
              run_dir=run_dir / name, name=name)
    with e:
        c = client.KeepAliveClient(e.port, timeout=10)
        try:
            keys = [f"{name}-{i}" for i in range(RESENDS)]

            def post(i, key, body, tag):
                return c.request("POST", f"/payments/{i}", {
                    "Idempotency-Key": key, "authorization": "Bearer example",
                    "content-type": "application/json", "x-scenario-request": tag}, body)
            # Without a key the edge answers 400 at the headers: never at the backend.
            r = c.request("POST", "/payments/nokey", {"x-scenario-request": "nokey"}, b"{}")
            assert r.status == 400, r
            first = [post(i, k, b'{"amount":10}', "first") for i, k in enumerate(keys)]
            assert [r.status for r in first] == [200] * RESENDS, first
            assert upstream.attempts("first") == RESENDS
            again = [post(i, k, b'{"amount":10}' if i % 2 == 0 else b'{"amount":99}',
                          "replay" if i % 2 == 0 else "mismatch") for i, k in enumerate(keys)]
        finally:
            c.close()
        replays, mismatches = again[0::2], again[1::2]
        assert all(r.status == 200 and r.header("idempotent-replayed") == "true"
                   and r.body == b"ok" for r in replays), replays
        assert all(r.status == 422 for r in mismatches), mismatches
        time.sleep(0.3)  # the proxy's closes of cut backend connections follow its answers
        return {tag: (upstream.heads(tag), upstream.cuts(tag))
                for tag in ("nokey", "replay", "mismatch")}


NOTHING = {"nokey": (0, 0), "replay": (0, 0), "mismatch": (0, 0)}


def _reached(run) -> int:
    return run["replay"][0] + run["mismatch"][0]


def test_static_bootstrap_example_keeps_answered_keyed_requests_off_the_backend(run_dir):
    """The example's hold (a buffer filter for requests with an Idempotency-Key, between
    resetguard and the router): replays and 422s that resetguard answers put 0 request heads on
    the backend. The same file with the hold disabled is the control: there the router has
    already sent the request line and headers when resetguard answers."""
    with ChaosUpstream(name="example-hold-on") as up:
        on = _keyed_resends(run_dir, up)
    with ChaosUpstream(name="example-hold-off") as up:
        off = _keyed_resends(run_dir, up, ("bootstrap-example-hold-off", _hold_off))
    print(f"\n[example bootstrap] {RESENDS} re-sends of completed keys ({RESENDS // 2} replays, "
          f"{RESENDS // 2} x 422), (heads, cuts) at the backend: with the hold {on}, "
          f"without {off}")
    assert on == NOTHING, on
    assert off["nokey"] == (0, 0), off  # answered at the headers: never needed the hold
    assert _reached(off) > 0, off


def test_the_kubernetes_examples_holds_keep_answered_keyed_requests_off_the_backend(run_dir):
    """The holds of the Kubernetes examples, as their control planes would put them into Envoy
    (not run against Istio or Envoy Gateway here): the Istio EnvoyFilter's filter before the
    router, and what Envoy Gateway emits for the example's requestBuffer, with the example's
    filterOrder (after Wasm: 0 heads) and in Envoy Gateway's default order (buffer ahead of Wasm:
    the re-sends still reach the backend)."""
    runs = {}
    for name, edit in [("istio-envoyfilter", _istio_hold),
                       ("gateway-filter-order", _gateway_hold(after_wasm=True)),
                       ("gateway-default-order", _gateway_hold(after_wasm=False))]:
        with ChaosUpstream(name=name) as up:
            runs[name] = _keyed_resends(run_dir, up, (name, edit))
    print(f"\n[kubernetes example holds] (heads, cuts) at the backend for {RESENDS} re-sends: "
          f"{runs}")
    assert runs["istio-envoyfilter"] == NOTHING, runs
    assert runs["gateway-filter-order"] == NOTHING, runs
    assert _reached(runs["gateway-default-order"]) > 0, runs


def test_readme_metrics_reference_matches_envoys_names(envoy):
    """The README's counter table gives both names; Envoy is the authority on each."""
    readme = (paths.ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Metrics\n"):]
    section = section[:section.index("\n## ", 5)]
    rows = re.findall(r"^\| `(resetguard\.[a-z_.]+)` \| `(resetguard_[a-z_]+)` \|", section, re.M)
    assert len(rows) >= 30, rows
    prometheus = envoy.prometheus()
    exported = set(re.findall(r"^(resetguard_[a-z_]+)\{\} \d+$", prometheus, re.M))
    assert exported == {p for _, p in rows}
    stats = set(envoy.stats("resetguard"))
    assert {f"wasmcustom.{n}" for n, _ in rows} <= stats
    assert "envoy_wasm_resetguard_vm_reload" in prometheus  # Envoy's own, named in the README
