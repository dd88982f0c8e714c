"""Runs a scenario of the shared corpus (scenarios/README.md) through a real Envoy.

Interpretation notes (where the format leaves room):
- `upstream_attempts` counts attempts by the `x-scenario-request: <scenario>/<id>` tag the
  harness adds; `refuse` routes the request to a cluster on a port that refuses connects (counted
  by Envoy as upstream_cx_connect_fail; the chaos upstream sees 0 attempts).
- `absent_headers` must be absent from the response the client got; names starting `x-envoy-`
  must also be absent from the request the upstream received (retry controls must not leak).
- `outcome` is the resetguard.outcome.* counter that this request incremented.
- `max_log_level`: no [wasm] line above that level in Envoy's log during the scenario.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from . import client
from .envoy import Envoy, plugin_config_text, render_config, validate_text
from .upstream import ChaosUpstream, DeadPort

OUTCOME_PREFIX = "resetguard.outcome."


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def applies_to_envoy(scenario: dict) -> bool:
    return "envoy" in scenario.get("hosts", ["envoy", "kong", "apisix"])


def _delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


class ScenarioFailure(AssertionError):
    pass


def _check(cond, msg):
    if not cond:
        raise ScenarioFailure(msg)


def run(scenario: dict, run_dir: Path) -> list:
    """Runs one scenario; raises ScenarioFailure (an AssertionError) listing every mismatch.
    Returns notes (strings) for the report."""
    name = scenario["name"]
    config = scenario.get("config", {})
    if "expect_config_rejected" in scenario:
        return _run_rejected(scenario, run_dir)
    up = ChaosUpstream(name=name).start()
    dead = DeadPort()
    envoy = Envoy(plugin_config=config, upstream_port=up.port,
                  dead_port=dead.port, run_dir=run_dir, name=name)
    failures: list = []
    try:
        envoy.start()
        mark = envoy.log_mark()
        before_all = envoy.filter_counters()
        for step in scenario.get("requests", []):
            if "parallel" in step:
                _run_parallel(scenario, step["parallel"], envoy, up, failures)
            else:
                _run_one_measured(scenario, step, envoy, up, failures)
        if "expect_metrics" in scenario:
            want = scenario["expect_metrics"]
            envoy.wait_for(lambda: _metrics_match(envoy, before_all, want), timeout=3)
            got = _delta(before_all, envoy.filter_counters())
            for k, v in want.items():
                if got.get(k, 0) != v:
                    failures.append(f"metric {k}: expected +{v}, Envoy counted +{got.get(k, 0)}")
        level = scenario.get("max_log_level")
        if level:
            bad = envoy.wasm_lines_above(level, since=mark)
            if bad:
                failures.append(f"filter logged above {level}: {bad[:3]}")
    finally:
        envoy.stop()
        up.stop()
        dead.close()
    if failures:
        raise ScenarioFailure(f"scenario {name} (real Envoy) disagrees:\n  - " + "\n  - ".join(failures)
                              + f"\n  (logs: {run_dir})")
    return []


def _metrics_match(envoy, before, want):
    got = _delta(before, envoy.filter_counters())
    return all(got.get(k, 0) == v for k, v in want.items())


def _run_rejected(scenario: dict, run_dir: Path) -> list:
    path = scenario["expect_config_rejected"].get("path")
    text = render_config("resetguard.yaml", PLUGIN_CONFIG=plugin_config_text(scenario.get("config")))
    res = validate_text(text, run_dir, scenario["name"])
    out = res.stdout + res.stderr
    _check(res.returncode != 0, f"scenario {scenario['name']}: Envoy accepted a config the scenario "
                                f"expects to be rejected; log tail:\n{out[-1500:]}")
    errors = [l for l in out.splitlines() if "[wasm]" in l and ("[error]" in l or "[critical]" in l)]
    if path:
        _check(any(path in l for l in errors),
               f"scenario {scenario['name']}: no filter error line names {path!r}; error lines: "
               f"{errors[:3]}")
    return []


def _tag(scenario, req):
    return f"{scenario['name']}/{req['id']}"


def _prepare(scenario, req, up):
    tag = _tag(scenario, req)
    actions = req.get("upstream") or [{"action": "respond", "status": 200, "body": "ok"}]
    headers = dict(req.get("headers") or {})
    headers["x-scenario-request"] = tag
    if any(a.get("action") == "refuse" for a in actions):
        headers["x-resetguard-test-target"] = "dead"
    else:
        up.plan(tag, actions)
    return tag, headers, actions


def _send(scenario, req, envoy, up):
    tag, headers, actions = _prepare(scenario, req, up)
    method = req.get("method", "GET")
    body = req.get("body")
    body = body.encode() if isinstance(body, str) else body
    abort = (req.get("client") or {}).get("abort_after_ms")
    if abort is not None:
        client.aborting_request(envoy.port, method, req.get("path", "/"), headers, body or b"",
                                abort_after_ms=int(abort))
        # Let the upstream's planned delays pass so a late (wrong) retry would be seen.
        longest = max([a.get("delay_ms") or 0 for a in actions] + [0])
        time.sleep(min(10.0, longest / 1000 + 0.3))
        return tag, None
    return tag, client.request(envoy.port, method, req.get("path", "/"), headers,
                               body if body is not None else None)


def _check_response(scenario, req, tag, resp, up, failures):
    exp = req.get("expect") or {}
    rid = f"{scenario['name']}/{req['id']}"
    if resp is not None:
        if "status" in exp and resp.status != exp["status"]:
            failures.append(f"{rid}: status {resp.status} (error={resp.error}), expected {exp['status']}")
        for k, v in (exp.get("headers") or {}).items():
            if resp.header(k) != v:
                failures.append(f"{rid}: response header {k}={resp.header(k)!r}, expected {v!r}")
        for k in exp.get("absent_headers") or []:
            if resp.header(k) is not None:
                failures.append(f"{rid}: response header {k} present ({resp.header(k)!r})")
            if k.lower().startswith("x-envoy-"):
                for seen in up.requests_for(tag):
                    if k.lower() in seen.headers:
                        failures.append(f"{rid}: upstream received {k}")
        if "body_contains" in exp and exp["body_contains"].encode() not in resp.body:
            failures.append(f"{rid}: body {resp.body[:200]!r} lacks {exp['body_contains']!r}")
    if "upstream_attempts" in exp:
        got = up.attempts(tag)
        if got != exp["upstream_attempts"]:
            failures.append(f"{rid}: upstream saw {got} attempts, expected {exp['upstream_attempts']}")


def _wait_outcomes(envoy, before, n):
    def done():
        d = _delta(before, envoy.filter_counters())
        return sum(v for k, v in d.items() if k.startswith(OUTCOME_PREFIX)) >= n
    envoy.wait_for(done, timeout=5)
    return {k[len(OUTCOME_PREFIX):]: v for k, v in _delta(before, envoy.filter_counters()).items()
            if k.startswith(OUTCOME_PREFIX)}


def _run_one_measured(scenario, req, envoy, up, failures):
    before = envoy.filter_counters()
    tag, resp = _send(scenario, req, envoy, up)
    outcomes = _wait_outcomes(envoy, before, 1)
    _check_response(scenario, req, tag, resp, up, failures)
    want = (req.get("expect") or {}).get("outcome")
    if want is not None and outcomes != {want: 1}:
        failures.append(f"{_tag(scenario, req)}: outcome counters moved {outcomes}, expected {want}")


def _run_parallel(scenario, reqs, envoy, up, failures):
    before = envoy.filter_counters()
    results = [None] * len(reqs)

    def go(i, req):
        # A later start makes the order of a race part of the scenario, not of thread timing.
        time.sleep((req.get("start_after_ms") or 0) / 1000)
        results[i] = _send(scenario, req, envoy, up)

    threads = [threading.Thread(target=go, args=(i, r)) for i, r in enumerate(reqs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    outcomes = _wait_outcomes(envoy, before, len(reqs))
    want: dict = {}
    for req, res in zip(reqs, results):
        if res is None:
            failures.append(f"{_tag(scenario, req)}: request did not finish")
            continue
        _check_response(scenario, req, res[0], res[1], up, failures)
        o = (req.get("expect") or {}).get("outcome")
        if o:
            want[o] = want.get(o, 0) + 1
    if want and any(outcomes.get(k, 0) != v for k, v in want.items()):
        failures.append(f"parallel group: outcome counters moved {outcomes}, expected {want}")
