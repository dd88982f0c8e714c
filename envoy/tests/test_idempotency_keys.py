"""The real-Envoy proofs of the Idempotency-Key contract (Envoy --concurrency 2).

Names of config fields, headers and problem types are data below, so a contract rename is a
one-line change.
"""

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from harness import client, paths
from harness.results import record

# -- the contract, as data --------------------------------------------------------------------------
KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "idempotent-replayed"
PROBLEM_TYPE = "application/problem+json"
STATUS_MISSING, STATUS_IN_FLIGHT, STATUS_MISMATCH = 400, 409, 422
STATUS_STORE_FULL = 503  # the filter's when_full=Reject answer
STORE_FULL_COUNTER = "resetguard.idempotency.store_full"
LOCK_TIMEOUT_MS = 10_000
MAX_ENTRIES = 20_000
# Memory bound we hold the store to: max_entries x per-entry budget + fixed slack over baseline.
PER_ENTRY_BUDGET_BYTES = 4096
RSS_SLACK_BYTES = 64 * 1024 * 1024
DISTINCT_KEYS = 100_000


def idem_config(**overrides):
    section = {"mode": "enforce", "required_methods": ["POST"], "header": KEY_HEADER,
               "ttl_seconds": 86400, "lock_timeout_ms": LOCK_TIMEOUT_MS, "max_entries": MAX_ENTRIES,
               "retry_keyed_requests": False, "scope_headers": ["authorization"]}
    section.update(overrides)
    return {"idempotency": section}


@pytest.fixture
def keyed_envoy(envoy_factory, upstream, dead_port):
    def start(**overrides):
        return envoy_factory(plugin_config=idem_config(**overrides), upstream_port=upstream.port,
                             dead_port=dead_port, concurrency=2)
    return start


def _key():
    return f"k-{uuid.uuid4().hex}"


def _post(envoy, path, key, body=b'{"amount":10}', auth="Bearer alice", extra=None):
    headers = {"authorization": auth, "content-type": "application/json"}
    if key is not None:
        headers[KEY_HEADER] = key
    headers.update(extra or {})
    return client.request(envoy.port, "POST", path, headers, body, timeout=10)


def _is_problem(r, status):
    return r.status == status and (r.header("content-type") or "").startswith(PROBLEM_TYPE)


def test_20_concurrent_posts_one_key_execute_once(keyed_envoy, upstream):
    envoy = keyed_envoy()
    upstream.plan("/pay-slow", [{"action": "respond", "status": 201, "body": '{"paid":true}',
                                 "headers": {"content-type": "application/json"}, "delay_ms": 1000}])
    key = _key()
    results = [None] * 20
    barrier = threading.Barrier(20)

    def go(i):
        barrier.wait(timeout=10)
        results[i] = _post(envoy, "/pay-slow", key)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert upstream.key_attempts(key) == 1, [(r.status, r.headers) for r in results]
    originals = [r for r in results if r.status == 201 and r.header(REPLAY_HEADER) is None]
    replays = [r for r in results if r.status == 201 and r.header(REPLAY_HEADER) == "true"]
    conflicts = [r for r in results if _is_problem(r, STATUS_IN_FLIGHT)]
    assert len(originals) == 1, [(r.status, r.headers) for r in results]
    assert len(originals) + len(replays) + len(conflicts) == 20, [(r.status, r.error) for r in results]
    assert all(r.header("retry-after") for r in conflicts)
    assert all(r.body == b'{"paid":true}' for r in replays)
    print(f"\n[idempotency] 20 concurrent POSTs, one key: 1 execution, {len(replays)} replays, "
          f"{len(conflicts)} x {STATUS_IN_FLIGHT}")


def test_retry_after_completion_is_replayed(keyed_envoy, upstream):
    envoy = keyed_envoy()
    upstream.plan("/pay", [{"action": "respond", "status": 201, "body": "receipt-1",
                            "headers": {"x-receipt": "r1"}}])
    key = _key()
    first = _post(envoy, "/pay", key)
    assert first.status == 201 and first.header(REPLAY_HEADER) is None, first
    second = _post(envoy, "/pay", key)
    assert second.status == 201 and second.body == b"receipt-1", second
    assert second.header(REPLAY_HEADER) == "true"
    assert second.header("x-receipt") == "r1"
    assert upstream.key_attempts(key) == 1


def test_same_key_other_body_is_422(keyed_envoy, upstream):
    envoy = keyed_envoy()
    key = _key()
    assert _post(envoy, "/pay", key, body=b'{"amount":10}').status == 200
    r = _post(envoy, "/pay", key, body=b'{"amount":99}')
    assert _is_problem(r, STATUS_MISMATCH), r
    assert json.loads(r.body).get("type"), r.body
    assert upstream.key_attempts(key) == 1


def test_same_key_other_authorization_executes_separately(keyed_envoy, upstream):
    envoy = keyed_envoy()
    upstream.plan("/pay", [{"action": "respond", "status": 200, "body": "for-whoever"}])
    key = _key()
    a = _post(envoy, "/pay", key, auth="Bearer alice")
    b = _post(envoy, "/pay", key, auth="Bearer bob")
    assert a.status == 200 and b.status == 200
    assert b.header(REPLAY_HEADER) is None
    assert upstream.key_attempts(key) == 2
    assert [r.headers.get("authorization") for r in upstream.requests if r.key == key] == \
        ["Bearer alice", "Bearer bob"]


def test_missing_key_on_post_is_400(keyed_envoy, upstream):
    envoy = keyed_envoy()
    r = _post(envoy, "/pay-nokey", None)
    assert _is_problem(r, STATUS_MISSING), r
    assert upstream.path_attempts("/pay-nokey") == 0
    g = client.request(envoy.port, "GET", "/pay-nokey")  # GET needs no key
    assert g.status == 200


@pytest.mark.parametrize("retry_keyed, attempts, status",
                         [(False, 1, 503), (True, 2, 201)], ids=["retry-off", "retry-on"])
def test_keyed_post_reset_retried_only_when_configured(keyed_envoy, upstream, retry_keyed,
                                                       attempts, status):
    envoy = keyed_envoy(retry_keyed_requests=retry_keyed)
    key = _key()
    upstream.plan("/pay-reset", [{"action": "reset_before_headers"},
                                 {"action": "respond", "status": 201, "body": "ok"}])
    r = _post(envoy, "/pay-reset", key)
    assert r.status == status, r
    assert upstream.key_attempts(key) == attempts
    if not retry_keyed:
        # The reset came after the request was sent (Envoy's own 503): it may have been applied,
        # so the key completes and the re-send is told so, never run a second time.
        again = _post(envoy, "/pay-reset", key)
        assert again.status == 409, again
        problem = json.loads(again.body)
        assert problem["type"] == "urn:resetguard:problem:idempotency-outcome-unknown", problem
        assert "upstream_status" not in problem, problem  # the 503 was Envoy's, not the upstream's
        assert upstream.key_attempts(key) == 1


def test_100k_distinct_keys_memory_stays_bounded(keyed_envoy, upstream):
    envoy = keyed_envoy()
    upstream.keep_requests = 0  # do not hold 100k request objects in the test process
    warm = _post(envoy, "/mem", _key())
    assert warm.status == 200
    rss_before = envoy.rss_kib()
    counters_before = envoy.filter_counters()
    t0 = time.monotonic()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "harness.loadgen", "--port", str(envoy.port),
         "--count", str(DISTINCT_KEYS // 2), "--connections", "4", "--method", "POST",
         "--path", "/mem", "--key-prefix", f"mem-{uuid.uuid4().hex[:8]}-", "--key-offset",
         str(i * DISTINCT_KEYS), "--body", "x", "--header", "authorization: Bearer alice",
         "--deadline-s", "240"], cwd=str(paths.ENVOY_DIR), stdout=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=300)
            outs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rss_after = envoy.rss_kib()
    sent = sum(o["sent"] for o in outs)
    statuses = {}
    for o in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    growth = (rss_after - rss_before) * 1024
    bound = MAX_ENTRIES * PER_ENTRY_BUDGET_BYTES + RSS_SLACK_BYTES
    figures = {"distinct_keys": sent, "store_full_status": STATUS_STORE_FULL, "statuses": statuses, "rss_before_kib": rss_before,
               "rss_after_kib": rss_after, "growth_mib": round(growth / 2**20, 1),
               "bound_mib": round(bound / 2**20, 1), "max_entries": MAX_ENTRIES,
               "seconds": round(time.monotonic() - t0, 1), "admin_memory": envoy.memory()}
    record("idempotency.100k_keys_memory", figures)
    print(f"\n[idempotency] 100k distinct keys: {json.dumps(figures)}")
    assert sent == DISTINCT_KEYS and sum(o["errors"] for o in outs) == 0, outs
    assert envoy.alive()
    assert growth <= bound, figures
    # Beyond max_entries the store is full: the documented answer, and every one counted.
    full = statuses.get(str(STATUS_STORE_FULL), 0)
    assert set(statuses) <= {"200", str(STATUS_STORE_FULL)}, statuses
    assert statuses.get("200", 0) >= MAX_ENTRIES * 0.9, statuses
    counted = envoy.filter_counters().get(STORE_FULL_COUNTER, 0) - counters_before.get(STORE_FULL_COUNTER, 0)
    assert counted == full, (counted, statuses)
