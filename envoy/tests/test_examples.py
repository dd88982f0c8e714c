"""Every example under examples/ is loadable: plugin JSON configs and the configs embedded in the
Kubernetes manifests go through a real Envoy's `--mode validate` (on_configure runs); the static
bootstrap validates with the built .wasm and runs end to end, ports substituted, in front of a
chaos upstream: retries, per-route overrides and the access log format it ships.
(`cli/tests/cli.rs` runs `resetguard validate` on every example too.)"""

import json
import re
import time

import yaml

import pytest

from harness import client, paths
from harness.envoy import Envoy, plugin_config_text, render_config, validate_text
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


def _runnable_bootstrap(run_dir, upstream_port):
    """The shipped bootstrap with loopback ports and the built .wasm: nothing else changes."""
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
    path = run_dir / "bootstrap-example.yaml"
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
