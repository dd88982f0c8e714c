"""A keyed POST is never executed twice by default, and is run exactly once when it provably never
reached the upstream (project issue 18), against the real Envoy (--concurrency 2).

The plugin configuration is the defaults plus the quick config's key scope
(`idempotency.path_prefixes`): `unknown_outcome` is its default, `"complete"`.

  * 50 keyed POSTs the upstream processes and then resets without answering ("socket hang up
    after the work was done"): Envoy answers 503 after one attempt (a sent POST is not retried);
    each re-sent with its key gets 409 `outcome-unknown` without `upstream_status` (the 503 was
    Envoy's), never reaches the upstream (0 request heads) and is never executed a second time.
  * 50 keyed POSTs to a port that refuses connects: the router retries the connect failure
    itself (3 connects), the client gets 503, the key is released; the client re-sends on the
    working route and it runs exactly once (and a further re-send is a replay).
  * 50 keyed POSTs to an HTTP/2 upstream that refuses the stream (REFUSED_STREAM): 25 refused once
    and retried by the router (200 after 2 attempts), 25 refused on every attempt (503, key
    released) and re-sent by the client; each runs exactly once.
"""

import json
import time
import uuid

import pytest

from harness import client
from harness.h2 import ChaosH2Upstream
from harness.results import record
from helpers import counters_delta

KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "idempotent-replayed"
PREFIX = "/payments/"
PLUGIN_CONFIG = {"idempotency": {"path_prefixes": [PREFIX]}}
OUTCOME_UNKNOWN = "urn:resetguard:problem:idempotency-outcome-unknown"
N = 50
EXECUTE_THEN_RESET = {"action": "execute_then_reset"}
CREATED = {"action": "respond", "status": 201, "body": '{"paid":true}',
           "headers": {"content-type": "application/json"}}
REFUSE = {"action": "refuse_stream"}
MAX_ATTEMPTS = 3  # the filter's default retry.max_retries (2) + 1


def _post(port, i, key, tag, extra=None):
    headers = {"authorization": "Bearer alice", "content-type": "application/json",
               KEY_HEADER: key, "x-scenario-request": tag}
    headers.update(extra or {})
    return client.request(port, "POST", f"{PREFIX}charge-{i}", headers,
                          body=f'{{"amount":{i}}}', timeout=10)


def _problem(r):
    try:
        return json.loads(r.body)
    except ValueError:
        return {}


def _stat(envoy, name):
    return envoy.stats(name.replace(".", r"\.") + "$").get(name, 0)


def _settle(envoy, before, counter, n, timeout=5.0):
    """Waits until `counter` moved by n (a claim settles in on_log, after the response)."""
    envoy.wait_for(lambda: envoy.filter_counters().get(counter, 0) - before.get(counter, 0) >= n,
                   timeout=timeout)
    return envoy.filter_counters()


@pytest.fixture
def h2_upstream():
    up = ChaosH2Upstream().start()
    yield up
    up.stop()


def test_keyed_retry_is_safe_by_default(envoy_factory, upstream, dead_port, h2_upstream):
    t0 = time.monotonic()
    envoy = envoy_factory(plugin_config=PLUGIN_CONFIG, upstream_port=upstream.port,
                          dead_port=dead_port, concurrency=2)
    run = uuid.uuid4().hex[:8]
    figures = {}

    # -- 1. processed, then reset before any answer: never run a second time ---------------------
    before = envoy.filter_counters()
    keys = [f"exec-reset-{run}-{i}" for i in range(N)]
    first = []
    for i, key in enumerate(keys):
        upstream.plan(f"first-{key}", [EXECUTE_THEN_RESET, CREATED])
        first.append(_post(envoy.port, i, key, f"first-{key}"))
    assert all(r.status == 503 for r in first), [(r.status, r.error) for r in first
                                                 if r.status != 503]
    # One attempt each: a POST that was sent is not retried.
    assert [upstream.key_attempts(k) for k in keys] == [1] * N
    assert [upstream.key_executions(k) for k in keys] == [1] * N
    _settle(envoy, before, "resetguard.idempotency.stored", N)

    resent = []
    for i, key in enumerate(keys):
        upstream.plan(f"resend-{key}", [CREATED])
        resent.append(_post(envoy.port, i, key, f"resend-{key}"))
    second_executions = sum(upstream.key_executions(k) - 1 for k in keys)
    resend_heads = sum(upstream.heads(f"resend-{k}") for k in keys)
    problems = [_problem(r) for r in resent]
    outcome_unknown = sum(1 for r, p in zip(resent, problems)
                          if r.status == 409 and p.get("type") == OUTCOME_UNKNOWN
                          and "upstream_status" not in p and r.header(REPLAY_HEADER) is None)
    delta = counters_delta(before, envoy.filter_counters())
    figures["processed_then_reset"] = {
        "posts": N, "first_statuses": sorted({r.status for r in first}),
        "upstream_executions_first": sum(upstream.key_executions(k) for k in keys),
        "resends": N, "resend_409_outcome_unknown_without_upstream_status": outcome_unknown,
        "second_executions": second_executions, "resend_upstream_heads": resend_heads,
        "counters": {k: v for k, v in delta.items() if k.startswith("resetguard.idempotency.")}}
    assert second_executions == 0, figures
    assert resend_heads == 0, figures
    assert outcome_unknown == N, [(r.status, p) for r, p in zip(resent, problems)][:5]
    assert delta.get("resetguard.idempotency.not_replayable") == N, delta
    assert delta.get("resetguard.idempotency.released", 0) == 0, delta

    # -- 2. connect refused: the router retries it, the client re-sends, it runs once ------------
    before = envoy.filter_counters()
    connect_fail_before = _stat(envoy, "cluster.dead.upstream_cx_connect_fail")
    retry_before = _stat(envoy, "cluster.dead.upstream_rq_retry")
    keys = [f"dead-{run}-{i}" for i in range(N)]
    refused = [_post(envoy.port, i, key, f"dead-{key}", {"x-resetguard-test-target": "dead"})
               for i, key in enumerate(keys)]
    assert all(r.status == 503 for r in refused), [(r.status, r.error) for r in refused]
    _settle(envoy, before, "resetguard.idempotency.released", N)
    connect_fails = _stat(envoy, "cluster.dead.upstream_cx_connect_fail") - connect_fail_before
    router_retries = _stat(envoy, "cluster.dead.upstream_rq_retry") - retry_before
    for key in keys:
        upstream.plan(f"dead-resend-{key}", [CREATED])
    resent = [_post(envoy.port, i, key, f"dead-resend-{key}") for i, key in enumerate(keys)]
    _settle(envoy, before, "resetguard.idempotency.stored", N)
    replays = [_post(envoy.port, i, key, f"dead-replay-{key}") for i, key in enumerate(keys)]
    executions = [upstream.key_executions(k) for k in keys]
    delta = counters_delta(before, envoy.filter_counters())
    figures["connect_refused"] = {
        "posts": N, "client_statuses": sorted({r.status for r in refused}),
        "connect_failures": connect_fails, "router_retries": router_retries,
        "resent_201": sum(1 for r in resent if r.status == 201 and r.header(REPLAY_HEADER) is None),
        "replayed": sum(1 for r in replays
                        if r.status == 201 and r.header(REPLAY_HEADER) == "true"),
        "run_exactly_once": executions.count(1), "executions": sum(executions),
        "counters": {k: v for k, v in delta.items() if k.startswith("resetguard.idempotency.")}}
    assert connect_fails == N * MAX_ATTEMPTS and router_retries == N * (MAX_ATTEMPTS - 1), figures
    assert figures["connect_refused"]["resent_201"] == N, [(r.status, r.body) for r in resent]
    assert figures["connect_refused"]["replayed"] == N, [(r.status, r.headers) for r in replays]
    assert executions == [1] * N, figures
    assert sum(upstream.heads(f"dead-replay-{k}") for k in keys) == 0
    assert delta.get("resetguard.idempotency.released") == N, delta

    # -- 3. HTTP/2 REFUSED_STREAM: retried by the router, or re-sent by the client ---------------
    h2 = envoy_factory(template="resetguard-h2.yaml", plugin_config=PLUGIN_CONFIG,
                       upstream_port=h2_upstream.port, dead_port=dead_port, concurrency=2,
                       name="h2")
    before = h2.filter_counters()
    retry_before = _stat(h2, "cluster.upstream.upstream_rq_retry")
    keys = [f"h2-{run}-{i}" for i in range(N)]
    once, always = keys[: N // 2], keys[N // 2:]
    for key in once:
        h2_upstream.plan(f"h2-{key}", [REFUSE, CREATED])
    for key in always:
        h2_upstream.plan(f"h2-{key}", [REFUSE])
        h2_upstream.plan(f"h2-resend-{key}", [CREATED])
    got = {key: _post(h2.port, i, key, f"h2-{key}") for i, key in enumerate(keys)}
    router_saved = sum(1 for k in once if got[k].status == 201)
    refused_thrice = sum(1 for k in always if got[k].status == 503
                         and h2_upstream.attempts(f"h2-{k}") == MAX_ATTEMPTS)
    _settle(h2, before, "resetguard.idempotency.released", len(always))
    resent = {k: _post(h2.port, keys.index(k), k, f"h2-resend-{k}") for k in always}
    executions = [h2_upstream.key_executions(k) for k in keys]
    delta = counters_delta(before, h2.filter_counters())
    figures["h2_refused_stream"] = {
        "posts": N, "refused_once_router_retried_201": router_saved,
        "refused_every_attempt_503": refused_thrice,
        "router_retries": _stat(h2, "cluster.upstream.upstream_rq_retry") - retry_before,
        "client_resent_201": sum(1 for r in resent.values() if r.status == 201),
        "refused_streams_sent": sum(1 for _, c in h2_upstream.resets_sent if c == "REFUSED_STREAM"),
        "run_exactly_once": executions.count(1), "executions": sum(executions),
        "counters": {k: v for k, v in delta.items() if k.startswith("resetguard.idempotency.")}}
    assert router_saved == len(once), [(got[k].status, got[k].error) for k in once]
    assert [h2_upstream.attempts(f"h2-{k}") for k in once] == [2] * len(once)
    assert refused_thrice == len(always), [(got[k].status, got[k].error) for k in always]
    assert figures["h2_refused_stream"]["client_resent_201"] == len(always), figures
    assert executions == [1] * N, figures
    assert delta.get("resetguard.idempotency.released") == len(always), delta

    figures["seconds"] = round(time.monotonic() - t0, 1)
    record("keyed_retry_is_safe_by_default", figures)
    print("\n[keyed retry is safe by default] " + json.dumps(
        {k: {kk: vv for kk, vv in v.items() if kk != "counters"} if isinstance(v, dict) else v
         for k, v in figures.items()}))
    assert figures["seconds"] < 60, figures
