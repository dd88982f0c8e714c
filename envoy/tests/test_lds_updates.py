"""Live configuration updates through file-based dynamic LDS (configs/resetguard-lds.yaml, the
listener resource configs/lds/ingress-listener.yaml, published atomically by harness/lds.py).

What Envoy 1.40 does with a listener update whose resetguard configuration is invalid (measured):
the filter's on_configure returns false in the base VM on the main thread; Envoy logs the filter's
error line, then its own `[error][wasm] Wasm VM failed Failed to configure base Wasm plugin` and
`[critical][wasm] Plugin resetguard failed to load` / `Plugin configured to fail closed failed to
load` lines, rejects the update (`listener_manager.lds.update_rejected` +1, `lds: listener
'ingress' config rejected: Unable to create Wasm plugin resetguard`) and keeps the old listener:
no listener is modified, the old filter configuration keeps serving. The VM is shared by vm_id
(same code), so `resetguard.config.rejected` incremented by the rejecting plugin is visible in
/stats. A good update is applied in place (`listener_manager.listener_in_place_updated` +1) on the
same bound port; new connections get the new configuration at once.
"""

from harness import client
from harness.envoy import validate_text
from harness.lds import LdsEnvoy, render_listener, static_bootstrap_with_listener
from harness.results import record
from helpers import counters_delta, wait_access_log

RESET = {"action": "reset_before_headers"}
OK = {"action": "respond", "status": 200, "body": "hello"}


def test_listener_resource_validates(run_dir):
    """`--mode validate` does not read LDS files, so the shipped listener resource is checked as a
    static listener of the same bootstrap (the Wasm VM loads and on_configure runs)."""
    good = static_bootstrap_with_listener(render_listener({"retry": {"max_retries": 2}}))
    res = validate_text(good, run_dir, "lds-listener")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    bad = static_bootstrap_with_listener(render_listener({"retry": {"max_retries": 11}}))
    res = validate_text(bad, run_dir, "lds-listener-bad")
    assert res.returncode != 0 and "retry.max_retries" in res.stdout + res.stderr


def _reset_once_get(envoy, upstream, tag):
    upstream.plan(tag, [RESET, OK])
    r = client.request(envoy.port, "GET", "/items/1", {"x-scenario-request": tag})
    return r, upstream.attempts(tag)


def test_lds_bad_update_is_rejected_and_a_good_one_takes_effect(upstream, dead_port, run_dir):
    envoy = LdsEnvoy(plugin_config={"retry": {"max_retries": 2}}, upstream_port=upstream.port,
                     dead_port=dead_port, run_dir=run_dir / "lds-envoy")
    try:
        envoy.start()
        port = envoy.port
        r, attempts = _reset_once_get(envoy, upstream, "initial")
        assert (r.status, attempts) == (200, 2), r

        # 1. A bad plugin configuration: rejected, the old one keeps serving.
        before, mark = envoy.filter_counters(), envoy.log_mark()
        lds = envoy.update({"retry": {"max_retries": 11}})
        assert lds["listener_manager.lds.update_rejected"] == 1, lds
        assert lds["listener_manager.lds.update_success"] == 0, lds
        assert lds["listener_manager.listener_modified"] == 0, lds
        assert envoy.alive() and envoy.refresh_port() == port
        r, attempts = _reset_once_get(envoy, upstream, "after-bad")
        assert (r.status, attempts) == (200, 2), r
        filter_errors = [l for l in envoy.wasm_log_lines(mark, "error")
                         if "resetguard: invalid plugin configuration" in l]
        assert len(filter_errors) == 1, envoy.wasm_log_lines(mark, "error")
        assert "`retry.max_retries`" in filter_errors[0] and "got 11" in filter_errors[0]
        log = envoy.log_text()[mark:]
        assert "lds: listener 'ingress' config rejected" in log
        delta = counters_delta(before, envoy.filter_counters())
        assert delta.get("resetguard.config.rejected") == 1, delta

        # 2. A good update with max_retries 0: applied in place, and it takes effect.
        mark = envoy.log_mark()
        lds2 = envoy.update({"retry": {"max_retries": 0}})
        assert lds2["listener_manager.lds.update_success"] == 1, lds2
        assert lds2["listener_manager.lds.update_rejected"] == 0, lds2
        assert lds2["listener_manager.listener_in_place_updated"] == 1, lds2
        assert envoy.refresh_port() == port
        r, attempts = _reset_once_get(envoy, upstream, "after-good")
        assert (r.status, attempts) == (503, 1), r
        assert "configured: max_retries=0" in envoy.log_text()[mark:]
        assert envoy.wasm_lines_above("info", since=mark) == []
        lines = wait_access_log(envoy, 3)
        assert [l.split(" method=")[0] for l in lines[-3:]] == \
            ["200 - -", "200 - -", "503 UC upstream_reset"], lines
        record("lds_updates", {"bad_update": lds, "good_update": lds2,
                               "reset_once_get": {"initial": [200, 2], "after_bad": [200, 2],
                                                  "after_good_max0": [503, 1]},
                               "config_rejected_delta": delta.get("resetguard.config.rejected")})
    finally:
        envoy.stop()
