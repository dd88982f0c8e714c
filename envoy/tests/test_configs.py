"""Every shipped bootstrap under envoy/configs passes `envoy --mode validate` (which loads the
Wasm VM and runs the filter's on_configure), and the filter's metrics are where we say they are."""

import pytest

from harness import client, paths
from harness.envoy import render_config, validate_text

CONFIGS = sorted(p.name for p in paths.CONFIG_DIR.glob("*.yaml"))


def test_configs_exist():
    assert {"resetguard.yaml", "no-filter.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_validates(name, run_dir):
    text = render_config(name, PLUGIN_CONFIG='{"retry":{"max_retries":2}}', UPSTREAM_PORT=8080,
                         DEAD_PORT=8081, ACCESS_LOG_PATH="/dev/stdout")
    res = validate_text(text, run_dir, name.removesuffix(".yaml"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "configuration" in (res.stdout + res.stderr) and "OK" in (res.stdout + res.stderr)


def test_validate_rejects_a_bad_plugin_config(run_dir):
    """Fail-closed: an invalid plugin config makes validate fail and the filter names the field."""
    text = render_config("resetguard.yaml", PLUGIN_CONFIG='{"retry":{"max_retries":11}}')
    res = validate_text(text, run_dir, "bad")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-2000:]
    assert "retry.max_retries" in out, out[-2000:]


def test_metric_naming_in_stats_and_prometheus(envoy, upstream):
    """Envoy 1.40 shows proxy-wasm metrics as `wasmcustom.<name>` in /stats and as
    `<name with . -> _>` (no envoy_ prefix, no wasmcustom) in /stats?format=prometheus."""
    r = client.request(envoy.port, "GET", "/x")
    assert r.status == 200
    envoy.wait_for(lambda: envoy.stats("wasmcustom.resetguard.outcome.completed$").get(
        "wasmcustom.resetguard.outcome.completed", 0) >= 1)
    stats = envoy.stats("resetguard")
    assert stats.get("wasmcustom.resetguard.requests.idempotent") == 1, stats
    assert "resetguard.requests.idempotent" not in stats
    prom = envoy.prometheus()
    assert "# TYPE resetguard_requests_idempotent counter" in prom
    assert "resetguard_requests_idempotent{} 1" in prom
    assert "wasmcustom" not in prom
