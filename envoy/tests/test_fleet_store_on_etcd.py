"""The fleet-wide idempotency store on etcd v3, end to end (project issue 15): two real Envoy 1.40
processes (`--concurrency 2` each, envoy/configs/resetguard-etcd.yaml: the keyed-request hold and
an Envoy cluster `etcd` listing every member) share one 3-member etcd cluster on loopback
(harness/etcd.py), in front of the chaos upstream, which counts executions per key.

  * 40 concurrent POSTs of one key spread over both proxies: exactly 1 upstream execution, the
    rest 409 in flight (or the replay, once it settled); no other request head reaches the
    upstream.
  * A completed key re-sent through the other proxy: replayed byte for byte (status line, header
    list in order with repeats, body; modulo what Envoy owns on every response), the upstream
    count unchanged; another payload: 422; another client's credentials: executed on its own. A
    response near etcd's limit (1,000,000 bytes) replays through the other proxy too.
  * The etcd leader SIGKILLed mid-burst (150 keys, each POSTed, then re-sent through both
    proxies, clients honouring Retry-After): no key runs twice; the failures are counted and
    their time window printed.
  * 2 of 3 members killed: every keyed POST answered as `on_unavailable` says (reject, pass and
    local, on two extra proxies for the last two) within the callout timeouts, measured; GETs
    unaffected; Envoy up; the members back: service resumes by itself, measured.
  * The added latency of a keyed POST through etcd against the local store (a small sequential
    sample; bench/ does the real comparison).
  * What etcd holds: only `<prefix>k/<base64url of a 16-byte SHA-256 identity>` keys and records
    (checked against the identity recomputed here); no raw key, credential or scope value.

At the end: what a deployment's operator meets first: a health-checked etcd cluster (usable to
callouts only after its first check round) lets Envoy start, `envoy --mode validate` accepts an
etcd store configuration, and `on_unavailable: reject` answers the documented
`store-unavailable`.

Figures go to envoy/.run/results.json (`fleet_store_on_etcd`); run with -s to see them.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import re
import socket
import statistics
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import pytest

from harness import paths
from harness.envoy import Envoy, EnvoyError, render_config, validate_text
from harness.etcd import Etcd
from harness.results import record
from harness.upstream import ChaosUpstream

HOST = "orders.example"  # every proxy sees the same :authority, as behind one load balancer
KEY_PREFIX = "/resetguard/"
TIMEOUT_MS = 300
# Below the default so that a claim nobody settles frees within the test (its in-flight lease
# lives lock_timeout_ms to lock_timeout_ms + a tenth); the template's route timeout is 5 s.
LOCK_TIMEOUT_MS = 6000
PROBLEM = "urn:resetguard:problem:idempotency-"
FIGURES: dict = {}
# Every raw key and credential this file sent: none may appear in etcd.
SECRETS: set = set()
_serial = itertools.count(1)


def plugin_config(on_unavailable: str = "reject", backend: str = "etcd") -> dict:
    idem = {"path_prefixes": ["/orders/"], "lock_timeout_ms": LOCK_TIMEOUT_MS,
            "max_response_body_bytes": 1048576}
    if backend == "etcd":
        idem["store"] = {"backend": "etcd", "cluster": "etcd", "prefix": KEY_PREFIX,
                         "timeout_ms": TIMEOUT_MS, "on_unavailable": on_unavailable}
    return {"idempotency": idem}


def fig(name: str, value) -> None:
    FIGURES[name] = value
    record("fleet_store_on_etcd", FIGURES)
    print(f"\n[fleet-etcd] {name}: {json.dumps(value, sort_keys=True)}")


# -- the upstream ------------------------------------------------------------------------------
# Per key prefix: how long the upstream works on a request, and how big its answer is.
DELAY_MS = {"race-": 600, "burst-": 40, "lat-": 0}
BIG_BODY = 1_000_000


def behaviour(req, _attempt):
    """201 with a body unique to this execution (a second run would show), two set-cookies, a
    location; `big-` keys get a 1,000,000-byte body."""
    key = req.key or ""
    if req.method != "POST":
        return {"action": "respond", "status": 200, "body": "item"}
    n = next(_serial)
    delay = next((d for p, d in DELAY_MS.items() if key.startswith(p)), 5 if key else 0)
    body = json.dumps({"order": n, "state": "created"})
    if key.startswith("big-"):
        body = body + " " * (BIG_BODY - len(body))
    return {"action": "respond", "status": 201, "delay_ms": delay, "body": body,
            "headers": [["Content-Type", "application/json"], ["Set-Cookie", "a=1; Path=/"],
                        ["Location", f"/orders/{n}"], ["Set-Cookie", "b=2; Path=/"]]}


# -- the client --------------------------------------------------------------------------------
@dataclass
class Answer:
    status: Optional[int] = None
    reason: str = ""
    headers: list = field(default_factory=list)  # [(lower-case name, value)] in order
    body: bytes = b""
    error: Optional[str] = None
    seconds: float = 0.0
    at: float = 0.0  # monotonic time the answer came

    def header(self, name: str) -> Optional[str]:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def problem(self) -> str:
        try:
            return json.loads(self.body).get("type", "").removeprefix(PROBLEM)
        except (ValueError, AttributeError):
            return ""

    @property
    def kind(self) -> str:
        """executed | replayed | in-flight | 422 | 503:<problem> | 409:<problem> | <status> |
        error"""
        if self.error is not None:
            return "error"
        if self.status == 201:
            return "replayed" if self.header("idempotent-replayed") == "true" else "executed"
        if self.status == 409 and self.problem == "key-in-flight":
            return "in-flight"
        if self.status in (409, 503):
            return f"{self.status}:{self.problem}"
        return str(self.status)


class Conn:
    """One keep-alive HTTP/1.1 connection to a proxy (reconnects after an error or a close)."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port, self.timeout = port, timeout
        self.c: Optional[http.client.HTTPConnection] = None

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None

    def send(self, method: str, path: str, headers: dict, body: Optional[bytes]) -> Answer:
        a = Answer()
        t0 = time.monotonic()
        try:
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.c.request(method, path, body=body, headers={"Host": HOST, **headers})
            r = self.c.getresponse()
            a.status, a.reason = r.status, r.reason
            a.headers = [(n.lower(), v) for n, v in r.getheaders()]
            a.body = r.read()
            if r.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            a.error = f"{type(e).__name__}: {e}"
            self.close()
        a.at = time.monotonic()
        a.seconds = a.at - t0
        return a


def keyed(key: str, who: str = "alice", body: bytes = b'{"qty":1}') -> dict:
    cred = f"Bearer {who}-secret-token-7Qx"
    SECRETS.update({key, cred, f"{who}-secret-token-7Qx"})
    return {"authorization": cred, "idempotency-key": key, "content-type": "application/json"}


def post(port: int, key: str, who: str = "alice", body: bytes = b'{"qty":1}',
         conn: Optional[Conn] = None) -> Answer:
    own = conn is None
    conn = conn or Conn(port)
    try:
        return conn.send("POST", f"/orders/{key}", keyed(key, who, body), body)
    finally:
        if own:
            conn.close()


def quantiles(seconds: list) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {}
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "max_ms": round(ms[-1], 2), "min_ms": round(ms[0], 2)}


# -- the fleet ---------------------------------------------------------------------------------
class Fleet:
    def __init__(self):
        self.run = paths.RUN_DIR / "tests" / f"fleet-etcd-{int(time.time() * 1000) % 10**8}"
        self.etcd = Etcd(3, run_dir=self.run / "etcd")
        self.upstream = ChaosUpstream(default=behaviour, name="fleet-upstream")
        self.proxies: list = []
        self.a = self.b = None

    def start(self) -> "Fleet":
        self.etcd.start()
        self.upstream.start()
        self.a = self.proxy("proxy-a")
        self.b = self.proxy("proxy-b")
        return self

    def proxy(self, name: str, on_unavailable: str = "reject", concurrency: int = 2,
              backend: str = "etcd", template: str = "resetguard-etcd.yaml") -> Envoy:
        e = Envoy(template=template, plugin_config=plugin_config(on_unavailable, backend),
                  upstream_port=self.upstream.port, concurrency=concurrency, name=name,
                  run_dir=self.run / name, template_values=self.etcd.envoy_values())
        self.proxies.append(e)
        e.start()
        if backend == "etcd":
            wait_leases(e, concurrency)
        return e

    def stop(self):
        for e in self.proxies:
            e.stop()
        self.upstream.stop()
        self.etcd.stop()

    def heal(self):
        """Every member up and healthy, both proxies holding leases again."""
        if len(self.etcd.alive_members()) < self.etcd.size:
            self.etcd.restart(timeout=30)
        self.etcd.wait_healthy(timeout=30)
        for e in (self.a, self.b):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if post(e.port, f"heal-{next(_serial)}").kind == "executed":
                    break
                time.sleep(0.1)


ETCD_CLUSTER_STATS = ("upstream_cx_connect_fail", "upstream_rq_timeout", "upstream_rq_503",
                      "upstream_rq_500", "upstream_rq_completed",
                      "outlier_detection.ejections_enforced_total")


def etcd_cluster_stats(e: Envoy) -> dict:
    """What Envoy's cluster `etcd` saw (the filter's callouts to etcd)."""
    stats = e.stats(r"^cluster\.etcd\.")
    return {n: stats.get(f"cluster.etcd.{n}", 0) for n in ETCD_CLUSTER_STATS}


def wait_leases(e: Envoy, concurrency: int, timeout: float = 10.0) -> None:
    """Until every root context (main thread and each worker) was granted both leases."""
    want = 2 * (concurrency + 1)
    e.wait_for(lambda: e.filter_counters().get("resetguard.store.leases_granted", 0) >= want,
               timeout=timeout, interval=0.1)


def settled(e: Envoy, n: int, timeout: float = 5.0) -> None:
    """Until `n` keys were stored by this proxy (the root context settles on its 50 ms tick)."""
    e.wait_for(lambda: e.filter_counters().get("resetguard.idempotency.stored", 0) >= n,
               timeout=timeout, interval=0.05)


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    try:
        yield f.start()
    finally:
        f.stop()


# -- same key, both proxies, at once -----------------------------------------------------------
def test_concurrent_same_key_posts_over_two_proxies_execute_once(fleet):
    key, n = "race-k1", 40
    ports = [fleet.a.port, fleet.b.port]
    barrier = threading.Barrier(n)

    def one(i):
        conn = Conn(ports[i % 2])
        try:
            conn.send("GET", "/warm", {}, None)  # connected before the race starts
            barrier.wait(timeout=10)
            return i % 2, conn.send("POST", f"/orders/{key}", keyed(key), b'{"qty":1}')
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=n) as pool:
        answers = list(pool.map(one, range(n)))
    kinds = {}
    for side, a in answers:
        kinds.setdefault("ab"[side], {}).setdefault(a.kind, 0)
        kinds["ab"[side]][a.kind] += 1
    executions = fleet.upstream.key_executions(key)
    heads = fleet.upstream.key_heads(key)
    in_flight = [a for _, a in answers if a.kind == "in-flight"]
    fig("concurrent_same_key", {"posts": n, "by_proxy": kinds, "upstream_executions": executions,
                                "upstream_heads": heads})
    assert executions == 1 and heads == 1, kinds
    assert sum(1 for _, a in answers if a.kind == "executed") == 1, kinds
    assert all(a.kind in ("executed", "in-flight", "replayed") for _, a in answers), kinds
    assert in_flight and all(a.header("retry-after") == "1" for a in in_flight)
    assert set(kinds) == {"a", "b"} and all("in-flight" in k or "replayed" in k
                                            for k in kinds.values()), kinds


# -- a retry through the other proxy -----------------------------------------------------------
ENVOY_OWNED = {"date", "server", "content-length", "x-envoy-upstream-service-time",
               "idempotent-replayed", "connection", "keep-alive"}


def wire_view(a: Answer) -> tuple:
    return (a.status, a.reason, [(n, v) for n, v in a.headers if n not in ENVOY_OWNED], a.body)


def test_a_retry_through_the_other_proxy_is_replayed_byte_for_byte(fleet):
    key = "replay-k1"
    stored_before = fleet.a.filter_counters().get("resetguard.idempotency.stored", 0)
    first = post(fleet.a.port, key)
    assert first.kind == "executed", first
    # The settlement leaves on proxy A's next root tick (50 ms): until it landed, proxy B finds
    # the claim in flight (409, Retry-After: 1). Re-sent every 10 ms until replayed:
    polls, replay = [], None
    conn = Conn(fleet.b.port)
    while time.monotonic() - first.at < 3:
        r = post(fleet.b.port, key, conn=conn)
        polls.append((round((r.at - first.at) * 1000, 1), r.kind))
        if r.kind != "in-flight":
            replay = r
            break
        time.sleep(0.01)
    assert replay is not None and replay.kind == "replayed", polls
    settle_ms = polls[-1][0]
    in_flight_polls = sum(1 for _, k in polls if k == "in-flight")
    assert fleet.upstream.key_executions(key) == 1
    # Byte for byte, modulo what Envoy owns on every response.
    assert wire_view(replay) == wire_view(first), (wire_view(first), wire_view(replay))
    assert int(replay.header("content-length")) == len(replay.body)
    # Again later, and through proxy A too: still the same answer, never run again.
    for port in (fleet.a.port, fleet.b.port):
        again = post(port, key)
        assert again.kind == "replayed" and wire_view(again) == wire_view(first), again
    # Another payload: 422 from either proxy; another client's credentials: its own key.
    other = post(fleet.b.port, key, body=b'{"qty":2}')
    assert other.status == 422 and other.problem == "key-payload-mismatch", other
    bob = post(fleet.b.port, key, who="bob")
    assert bob.kind == "executed", bob
    assert fleet.upstream.key_executions(key) == 2 and bob.body != first.body
    assert fleet.upstream.key_heads(key) == 2, "the replays and the 422 never reached the upstream"
    settled(fleet.a, stored_before + 1)
    fig("replay_through_other_proxy", {
        "settlement_visible_on_other_proxy_ms": settle_ms, "in_flight_409s_before": in_flight_polls,
        "first_answer_ms": round(first.seconds * 1000, 2),
        "replay_answer_ms": round(replay.seconds * 1000, 2),
        "upstream_executions": {"alice": 1, "bob": 1}})


def test_a_response_near_the_etcd_limit_is_replayed_through_the_other_proxy(fleet):
    key = "big-k1"
    first = post(fleet.a.port, key)
    assert first.kind == "executed" and len(first.body) == BIG_BODY, first.kind
    deadline, replay = time.monotonic() + 5, None
    while time.monotonic() < deadline:
        replay = post(fleet.b.port, key)
        if replay.kind != "in-flight":
            break
        time.sleep(0.05)
    stored = fleet.etcd.get(key_of(HOST, "POST", f"/orders/{key}", key,
                                   "Bearer alice-secret-token-7Qx"))
    fig("near_limit_response", {"body_bytes": BIG_BODY, "replay": replay.kind,
                                "replay_ms": round(replay.seconds * 1000, 1),
                                "etcd_value_bytes": len(stored["value"]) if stored else None})
    assert replay.kind == "replayed" and replay.body == first.body, replay.kind
    assert fleet.upstream.key_executions(key) == 1


# -- the leader SIGKILLed mid-burst ------------------------------------------------------------
BURST_KEYS = 150
BURST_RATE = 40  # keys started per second
KILL_AFTER_S = 1.2
FLOW_DEADLINE_S = 25.0


def until_answered(conns: list, key: str, phase: str, turn: int, deadline: float, log: list,
                   lock: threading.Lock, alternate: bool) -> tuple:
    """Sends the key's POST until it is answered 201 (executed or replayed): each 409 in flight
    or 503 is waited out for its Retry-After (an error for 0.2 s), then sent again, through the
    other proxy when `alternate` (a client behind a load balancer). Returns (turn, answer)."""
    a = Answer()
    while time.monotonic() < deadline:
        a = conns[turn % 2].send("POST", f"/orders/{key}", keyed(key), b'{"qty":1}')
        with lock:
            log.append((key, phase, turn % 2, a))
        if a.kind in ("executed", "replayed"):
            break
        wait = float(a.header("retry-after") or 0.2) if a.error is None else 0.2
        time.sleep(min(wait, 1.0))
        turn += 1 if alternate else 0
    return turn, a


def key_flow(key: str, ports: list, start_at: float, log: list, lock: threading.Lock,
             finals: dict) -> None:
    """A client: the POST through ports[0] until answered (alternating proxies on each retry),
    then the same POST re-sent through the other proxy and the first again, each until
    answered."""
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    conns = [Conn(p) for p in ports]
    deadline = start_at + FLOW_DEADLINE_S
    try:
        turn, first = until_answered(conns, key, "first", 0, deadline, log, lock, True)
        if first.kind not in ("executed", "replayed"):
            return
        out = [first]
        for side in (1, 0):
            _, a = until_answered(conns, key, "resend", turn + side, deadline, log, lock, False)
            out.append(a)
        finals[key] = out
    finally:
        for c in conns:
            c.close()


def test_leader_sigkill_mid_burst_runs_no_key_twice(fleet):
    fleet.heal()
    keys = [f"burst-{i:03d}" for i in range(BURST_KEYS)]
    log: list = []
    finals: dict = {}
    lock = threading.Lock()
    before = {e.name: e.filter_counters() for e in (fleet.a, fleet.b)}
    cluster_before = {e.name: etcd_cluster_stats(e) for e in (fleet.a, fleet.b)}
    t0 = time.monotonic() + 0.2
    ports = [fleet.a.port, fleet.b.port]
    with ThreadPoolExecutor(max_workers=BURST_KEYS) as pool:
        futures = [pool.submit(key_flow, k, ports[i % 2:] + ports[:i % 2],
                               t0 + i / BURST_RATE, log, lock, finals)
                   for i, k in enumerate(keys)]
        time.sleep(max(0.0, t0 + KILL_AFTER_S - time.monotonic()))
        leader = fleet.etcd.leader()
        killed_at = time.monotonic()
        fleet.etcd.kill(leader)
        new_leader = fleet.etcd.leader(timeout=20)
        elected_s = time.monotonic() - killed_at
        for f in futures:
            f.result(timeout=FLOW_DEADLINE_S + 15)
    time.sleep(0.3)
    executions = {k: fleet.upstream.key_executions(k) for k in keys}
    twice = {k: n for k, n in executions.items() if n > 1}
    never = [k for k, n in executions.items() if n == 0]
    answers = [a for _, _, _, a in log]
    by_kind: dict = {}
    for _, phase, _, a in log:
        by_kind.setdefault(phase, {}).setdefault(a.kind, 0)
        by_kind[phase][a.kind] += 1
    failures = [a for a in answers if a.kind not in ("executed", "replayed")]
    refused = [a for a in failures if a.status == 503]
    in_flight = [a for a in failures if a.kind == "in-flight"]

    def window(items):
        if not items:
            return None
        return [round(min(a.at - killed_at for a in items), 2),
                round(max(a.at - killed_at for a in items), 2)]

    def counters(e):
        d = e.filter_counters()
        return {k.removeprefix("resetguard."): d.get(k, 0) - before[e.name].get(k, 0)
                for k in d if (k.startswith("resetguard.store.") or k in (
                    "resetguard.idempotency.lost", "resetguard.idempotency.claimed",
                    "resetguard.idempotency.replays", "resetguard.idempotency.in_flight_conflicts"))
                and d.get(k, 0) != before[e.name].get(k, 0)}

    # A key whose claim etcd committed while the proxy had to answer 503 stays in flight until
    # its lease frees it; how long such keys took to run:
    first_ok = {}
    for k, phase, _, a in log:
        if phase == "first" and a.kind in ("executed", "replayed"):
            first_ok[k] = a.at - killed_at
    started = {k: t0 + i / BURST_RATE - killed_at for i, k in enumerate(keys)}
    slowest = sorted(((round(first_ok.get(k, 99) - started[k], 2), k) for k in keys),
                     reverse=True)[:5]
    fig("leader_kill_mid_burst", {
        "keys": BURST_KEYS, "killed": leader.name, "new_leader": new_leader.name,
        "elected_after_s": round(elected_s, 2),
        "answers": by_kind, "upstream_executions_per_key": {
            str(n): sum(1 for v in executions.values() if v == n)
            for n in sorted(set(executions.values()))},
        "failed_answers": len(failures), "503s": len(refused),
        "503_window_s_after_kill": window(refused),
        "409_in_flight": len(in_flight),
        "409_in_flight_window_s_after_kill": window(in_flight),
        "409_in_flight_before_the_kill": sum(1 for a in in_flight if a.at < killed_at),
        "keys_that_waited_longest_s": slowest,
        "counters": {e.name: counters(e) for e in (fleet.a, fleet.b)},
        "envoy_etcd_cluster": {e.name: {k: v - cluster_before[e.name][k]
                                        for k, v in etcd_cluster_stats(e).items()}
                               for e in (fleet.a, fleet.b)},
        "client_errors": [a.error for a in answers if a.error][:5]})
    assert not twice, f"keys executed twice: {twice}"
    assert not never, f"keys never executed within {FLOW_DEADLINE_S}s: {never}"
    assert all(a.kind in ("executed", "replayed", "in-flight") or a.status == 503
               for a in answers), by_kind
    assert by_kind.get("resend", {}).get("executed", 0) == 0, by_kind
    # Every key answered, and both of its re-sends replayed the very response it got.
    assert set(finals) == set(keys), sorted(set(keys) - set(finals))
    wrong = [k for k, (first, *again) in finals.items()
             if any(a.kind != "replayed" or a.body != first.body for a in again)]
    assert not wrong, wrong[:5]
    fleet.heal()


# -- quorum lost --------------------------------------------------------------------------------
OUTAGE_S = 3.0
# A claim is at most two callouts (the claim, then the read-back of its unknown outcome), each
# bounded by timeout_ms; the margin is Envoy's and the loaded machine's.
ANSWER_BOUND_S = 2 * TIMEOUT_MS / 1000 + 0.4


def test_quorum_loss_answers_per_on_unavailable_and_recovers_by_itself(fleet):
    fleet.heal()
    extra = {"pass": fleet.proxy("proxy-pass", "pass", concurrency=1),
             "local": fleet.proxy("proxy-local", "local", concurrency=1)}
    sides = {"reject-a": fleet.a, "reject-b": fleet.b, **extra}
    killed = fleet.etcd.lose_quorum()
    lost_at = time.monotonic()
    log: dict = {name: [] for name in sides}
    gets: list = []
    serial = itertools.count()

    def keyed_loop(name, e):
        conn = Conn(e.port)
        while time.monotonic() - lost_at < OUTAGE_S:
            k = f"ql-{name}-{next(serial)}"
            a = post(e.port, k, conn=conn)
            log[name].append((round(a.at - lost_at, 3), k, a))
            time.sleep(0.05)
        conn.close()

    def get_loop():
        conns = [Conn(fleet.a.port), Conn(fleet.b.port)]
        i = 0
        while time.monotonic() - lost_at < OUTAGE_S:
            gets.append(conns[i % 2].send("GET", f"/items/{i}", {}, None))
            i += 1
            time.sleep(0.02)

    with ThreadPoolExecutor(max_workers=len(sides) + 1) as pool:
        fs = [pool.submit(keyed_loop, n, e) for n, e in sides.items()]
        fs.append(pool.submit(get_loop))
        for f in fs:
            f.result(timeout=OUTAGE_S + 30)
    # A re-send during the outage: `local` replays it from its own store, `pass` runs it again.
    resend = {}
    for name in ("local", "pass"):
        k = log[name][-1][1]
        again = post(sides[name].port, k)
        resend[name] = {"answer": again.kind,
                        "upstream_executions": fleet.upstream.key_executions(k)}
    up = {name: e.alive() and e.admin_get("/ready")[1].strip() == "LIVE"
          for name, e in sides.items()}
    summary = {}
    for name, entries in log.items():
        kinds: dict = {}
        for _, _, a in entries:
            kinds[a.kind] = kinds.get(a.kind, 0) + 1
        first_s = [a.seconds for t, _, a in entries if t < 1.0]
        later_s = [a.seconds for t, _, a in entries if t >= 1.0]
        summary[name] = {"answers": kinds,
                         "answer_time_all": quantiles([a.seconds for *_, a in entries]),
                         "answer_time_first_second": quantiles(first_s),
                         "answer_time_after_first_second": quantiles(later_s)}
    get_kinds: dict = {}
    for g in gets:
        get_kinds[g.status if g.error is None else "error"] = \
            get_kinds.get(g.status if g.error is None else "error", 0) + 1

    # Back: the members restart with their data; how long until each proxy claims again.
    restart_at = time.monotonic()
    fleet.etcd.restart(*killed, wait=False)
    healthy_s = None
    resumed: dict = {}
    probes = {"reject-a": fleet.a, "reject-b": fleet.b, **extra}
    conns = {n: Conn(e.port) for n, e in probes.items()}
    while time.monotonic() - restart_at < 30 and len(resumed) < len(probes):
        if healthy_s is None and any(m.healthy(timeout=0.2) for m in fleet.etcd.alive_members()):
            healthy_s = round(time.monotonic() - restart_at, 2)
        for n, e in probes.items():
            if n in resumed:
                continue
            k = f"back-{n}-{next(serial)}"
            a = post(e.port, k, conn=conns[n])
            # reject: the first 201 is a claim in etcd; pass and local answer 201 all along,
            # resumed once the key they ran is in etcd.
            if a.kind == "executed" and (n.startswith("reject") or stored_in_etcd(fleet, k)):
                resumed[n] = round(a.at - restart_at, 2)
        time.sleep(0.1)
    for c in conns.values():
        c.close()
    # A key the local fallback completed during the outage, re-sent through the same proxy now
    # that etcd is back (etcd never heard of it):
    k_local = log["local"][-1][1]
    after = post(extra["local"].port, k_local)
    resend["local_after_recovery"] = {"answer": after.kind,
                                      "upstream_executions": fleet.upstream.key_executions(k_local)}
    fig("quorum_lost", {
        "killed": [m.name for m in killed], "timeout_ms": TIMEOUT_MS, "outage_s": OUTAGE_S,
        "keyed_posts": summary, "gets": {"answers": get_kinds,
                                          "answer_time": quantiles([g.seconds for g in gets])},
        "envoy_up": up, "resend": resend,
        "recovery": {"etcd_healthy_after_restart_s": healthy_s,
                     "first_claim_after_restart_s": resumed,
                     "first_claim_after_etcd_healthy_s": {
                         n: round(t - healthy_s, 2) for n, t in resumed.items()
                         if healthy_s is not None}}})
    assert all(up.values()), up
    assert set(get_kinds) == {200}, get_kinds
    for name in ("reject-a", "reject-b"):
        assert set(summary[name]["answers"]) == {"503:store-unavailable"}, summary[name]
    assert set(summary["pass"]["answers"]) == {"executed"}, summary["pass"]
    assert set(summary["local"]["answers"]) == {"executed"}, summary["local"]
    for name, entries in log.items():
        slow = [(t, round(a.seconds, 3)) for t, _, a in entries if a.seconds > ANSWER_BOUND_S]
        assert not slow, f"{name}: answers slower than {ANSWER_BOUND_S}s: {slow}"
    assert resend["local"]["answer"] == "replayed", resend
    assert set(resumed) == set(probes), f"not resumed within 30 s: {resumed}"
    for e in extra.values():
        e.stop()


def stored_in_etcd(fleet: Fleet, key: str) -> bool:
    """Whether the key the proxy just executed was claimed in etcd (not in a fallback)."""
    name = key_of(HOST, "POST", f"/orders/{key}", key, "Bearer alice-secret-token-7Qx")
    try:
        return fleet.etcd.get(name) is not None
    except Exception:  # noqa: BLE001 - etcd still recovering
        return False


# -- the added latency --------------------------------------------------------------------------
LATENCY_SAMPLE = 200


def test_added_latency_of_a_keyed_post_etcd_against_the_local_store(fleet):
    fleet.heal()
    local = fleet.proxy("proxy-local-store", backend="local", template="resetguard.yaml")
    try:
        def sample(e, make, n=LATENCY_SAMPLE):
            conn = Conn(e.port)
            try:
                conn.send("GET", "/warm", {}, None)
                out = []
                for i in range(n):
                    method, path, headers, body = make(i)
                    a = conn.send(method, path, headers, body)
                    assert a.error is None and a.status in (200, 201), a
                    out.append(a.seconds)
                return out
            finally:
                conn.close()

        tag = next(_serial)
        def first_key(side):
            return lambda i: ("POST", f"/orders/lat-{side}-{tag}-{i}",
                              keyed(f"lat-{side}-{tag}-{i}"), b'{"qty":1}')
        def unkeyed(i):
            return "POST", f"/plain/{i}", {"content-type": "application/json"}, b'{"qty":1}'
        rows = {
            "unkeyed POST (no store)": quantiles(sample(fleet.a, unkeyed)),
            "keyed POST, etcd store (first execution)": quantiles(sample(fleet.a, first_key("e"))),
            "keyed POST, local store (first execution)": quantiles(sample(local, first_key("l"))),
        }
        settled(fleet.a, 1)
        time.sleep(0.2)
        # The same keys again: replays (through the other proxy for etcd).
        rows["replay, etcd store (other proxy)"] = quantiles(sample(fleet.b, first_key("e")))
        rows["replay, local store"] = quantiles(sample(local, first_key("l")))
        added = {
            "first_execution_median_ms": round(
                rows["keyed POST, etcd store (first execution)"]["median_ms"]
                - rows["keyed POST, local store (first execution)"]["median_ms"], 2),
            "first_execution_p99_ms": round(
                rows["keyed POST, etcd store (first execution)"]["p99_ms"]
                - rows["keyed POST, local store (first execution)"]["p99_ms"], 2),
        }
        # The filter's own histogram of etcd round trips (claims and completions of proxy a),
        # once Envoy's stats flush (5 s by default) merged it.
        round_trips = store_round_trips(fleet.a, at_least=2 * LATENCY_SAMPLE)
        first_etcd = rows["keyed POST, etcd store (first execution)"]
        assert round_trips["count"] >= 2 * LATENCY_SAMPLE, round_trips
        # A round trip is part of a request: the bucket holding its median is no later than the
        # requests' p99 (the buckets are Envoy's: 0.5, 1, 5, 10, 25, 50 ms, ...).
        assert round_trips["p50_at_most_ms"] <= max(first_etcd["p99_ms"], 5), (round_trips,
                                                                               first_etcd)
        fig("latency_etcd_vs_local", {"sequential_sample": LATENCY_SAMPLE, "rows": rows,
                                      "etcd_added": added, "etcd_members": 3,
                                      "store_round_trip_histogram": round_trips})
    finally:
        local.stop()


def store_round_trips(e: Envoy, at_least: int, wait_s: float = 8.0) -> dict:
    """`resetguard.store.round_trip_ms` as Prometheus exports it: count, mean, cumulative
    buckets (ms). Waits for Envoy's stats flush to merge the workers' histograms."""
    deadline = time.monotonic() + wait_s
    while True:
        text = e.prometheus()
        count = re.search(r"^resetguard_store_round_trip_ms_count\{\} (\d+)$", text, re.M)
        total = re.search(r"^resetguard_store_round_trip_ms_sum\{\} ([\d.e+]+)$", text, re.M)
        if (count and int(count.group(1)) >= at_least) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert count and total, "no resetguard_store_round_trip_ms in /stats?format=prometheus"
    buckets = sorted((float(le), int(c)) for le, c in re.findall(
        r'^resetguard_store_round_trip_ms_bucket\{le="([^"+]+)"\} (\d+)$', text, re.M))
    n = int(count.group(1))
    return {"count": n, "mean_ms": round(float(total.group(1)) / max(n, 1), 2),
            "p50_at_most_ms": next((le for le, c in buckets if c * 2 >= n), float("inf")),
            "cumulative_by_le_ms": {le: c for le, c in buckets if le <= 100}}


# -- what etcd holds ----------------------------------------------------------------------------
def key_of(authority: str, method: str, path: str, key: str, *scope_values: str) -> str:
    """The etcd key the filter writes for a request (core/src/idempotency/scope.rs, identity:
    SHA-256 over length-prefixed fields, the first 16 bytes; core/src/etcd/ops key_of)."""
    h = hashlib.sha256()

    def field_(data: bytes):
        h.update(struct.pack("<Q", len(data)))
        h.update(data)

    field_(b"resetguard identity v1")
    field_(struct.pack("<Q", len(scope_values)))  # one scope header: authorization
    for v in scope_values:
        field_(v.encode())
    for f in (authority, method, path, key):
        field_(f.encode())
    ident = h.digest()[:16]
    return KEY_PREFIX + "k/" + base64.urlsafe_b64encode(ident).decode().rstrip("=")


def test_etcd_holds_no_raw_key_or_scope_value(fleet):
    fleet.heal()
    kvs = fleet.etcd.kvs(KEY_PREFIX, prefix=True)
    # Every key of the whole keyspace ('\0' .. end), not only under the prefix.
    whole = fleet.etcd.post("/v3/kv/range", {"key": base64.b64encode(b"\0").decode(),
                                             "range_end": base64.b64encode(b"\0").decode()})
    assert whole.status == 200, whole
    names = [base64.b64decode(kv["key"]) for kv in whole.get("kvs", [])]
    values = [base64.b64decode(kv.get("value", "")) for kv in whole.get("kvs", [])]
    assert len(kvs) >= 150 and len(names) == len(kvs), (len(kvs), len(names))
    shape = re.compile(rb"^/resetguard/k/[A-Za-z0-9_-]{22}$")
    assert all(shape.match(n) for n in names), [n for n in names if not shape.match(n)][:5]
    assert all(v.startswith(b"RGE1") for v in values)
    secrets = sorted(SECRETS)
    leaks = [(s, n) for s in secrets for n, v in zip(names, values)
             if s.encode() in n or s.encode() in v]
    # The identity is what this file computes from the request: SHA-256, no secret.
    expected = key_of(HOST, "POST", "/orders/replay-k1", "replay-k1",
                      "Bearer alice-secret-token-7Qx")
    lease_ids = {int(kv.get("lease", 0)) for kv in whole.get("kvs", [])}
    fig("etcd_contents", {"keys": len(names), "raw_values_checked": len(secrets),
                          "leaks": len(leaks), "example_key": expected,
                          "distinct_leases": len(lease_ids),
                          "value_bytes": {"median": statistics.median(len(v) for v in values),
                                          "max": max(len(v) for v in values)}})
    assert not leaks, leaks[:5]
    assert expected.encode() in names
    assert key_of(HOST, "POST", "/orders/replay-k1", "replay-k1",
                  "Bearer bob-secret-token-7Qx").encode() in names


# -- what an operator meets first ---------------------------------------------------------------
def test_a_health_checked_etcd_cluster_lets_envoy_start(fleet):
    e = Envoy(template="resetguard-etcd.yaml", plugin_config=plugin_config(),
              upstream_port=fleet.upstream.port, concurrency=1, name="proxy-hc",
              run_dir=fleet.run / "proxy-hc",
              template_values=fleet.etcd.envoy_values(health_checks=True))
    fleet.proxies.append(e)
    e.start(timeout=30)
    wait_leases(e, 1)
    assert post(e.port, f"hc-{next(_serial)}").kind == "executed"
    assert e.stats("cluster.etcd.health_check.success$").get(
        "cluster.etcd.health_check.success", 0) > 0


def test_envoy_validate_accepts_an_etcd_store_configuration(fleet):
    text = render_config("resetguard-etcd.yaml",
                         PLUGIN_CONFIG=json.dumps(plugin_config()),
                         UPSTREAM_PORT=fleet.upstream.port, ACCESS_LOG_PATH="/dev/null",
                         **fleet.etcd.envoy_values())
    res = validate_text(text, fleet.run, "validate-etcd")
    out = res.stdout + res.stderr
    assert res.returncode == 0, [l for l in out.splitlines() if "resetguard" in l][-3:]


def test_reject_answers_the_documented_store_unavailable_problem(fleet):
    # An etcd cluster whose only member is a port nobody listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    e = Envoy(template="resetguard-etcd.yaml", plugin_config=plugin_config(),
              upstream_port=fleet.upstream.port, concurrency=1, name="proxy-no-etcd",
              run_dir=fleet.run / "proxy-no-etcd",
              template_values={"ETCD_ENDPOINTS": "[{endpoint: {address: {socket_address: "
                               "{address: 127.0.0.1, port_value: %d}}}}]" % dead})
    fleet.proxies.append(e)
    e.start()
    a = post(e.port, f"noetcd-{next(_serial)}")
    assert a.status == 503 and a.header("retry-after") == "1", a
    assert a.problem == "store-unavailable", a.problem
