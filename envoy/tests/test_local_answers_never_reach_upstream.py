"""A keyed request that resetguard answers itself never reaches the upstream: no request line, no
headers, no connection the proxy then closes or resets (Envoy 1.40, --concurrency 2, pooled
keep-alive upstream connections).

resetguard lets a keyed request's headers go on while it buffers and fingerprints the body (a
proxy-wasm pause at the headers would withhold the body from the filter too), so without help the
router opens the upstream request as soon as the headers pass and a replay or a 422 decided in the
body callback cuts it. configs/resetguard.yaml holds keyed requests in a buffer filter between
resetguard and the router (`resetguard.hold_keyed_requests`); each test here also runs with that
hold turned off (`Envoy(hold_keyed_requests=False)`) and asserts what it prevents, so the proof
cannot pass vacuously. The chaos upstream counts request heads (request line + headers arrived,
whatever happened to the body) and cuts (a head whose connection the proxy closed or reset before
the request was complete) apart from complete requests: harness/upstream.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.client import KeepAliveClient
from harness.results import record
from harness.upstream import ChaosUpstream

KEY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "idempotent-replayed"
PROBLEM_TYPE = "application/problem+json"
PREFIX = "/keyed/"
RESENDS = 200  # half with the same payload (replay), half with another one (422)
IN_FLIGHT_KEYS, DUPLICATES_PER_KEY = 20, 10  # 200 in-flight duplicates (409)
CLIENT_CONNECTIONS = 8
SLOW_MS = 3000  # the in-flight originals: long enough for all their duplicates to be answered
BODY, OTHER_BODY = b'{"amount":10}', b'{"amount":99}'
MAX_BODY = 1048576  # resetguard's default idempotency.max_request_body_bytes
MODES = [True, False]
MODE_IDS = ["hold-on", "hold-off"]


@pytest.fixture
def fresh_upstream():
    started = []

    def start():
        up = ChaosUpstream(name=f"never-{len(started)}").start()
        started.append(up)
        return up
    yield start
    for up in started:
        up.stop()


class Clients:
    """CLIENT_CONNECTIONS keep-alive connections, used from as many threads."""

    def __init__(self, port: int):
        self.port = port
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(CLIENT_CONNECTIONS)

    def _client(self) -> KeepAliveClient:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = KeepAliveClient(self.port, timeout=15)
            with self._lock:
                self._all.append(c)
        return c

    def post(self, path: str, key, body: bytes, tag: str):
        headers = {"authorization": "Bearer alice", "content-type": "application/json",
                   "x-scenario-request": tag}
        if key is not None:
            headers[KEY_HEADER] = key
        return self._client().request("POST", path, headers, body)

    def get(self, path: str):
        return self._client().request("GET", path, {})

    def map(self, fn, items) -> list:
        return list(self.pool.map(fn, items))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for c in self._all:
            c.close()


def _statuses(responses) -> dict:
    out: dict = {}
    for r in responses:
        k = r.status if r.error is None else r.error
        out[k] = out.get(k, 0) + 1
    return out


def _is_problem(r, status) -> bool:
    return r.status == status and (r.header("content-type") or "").startswith(PROBLEM_TYPE)


def _since(up, before: dict) -> dict:
    return {k: v - before[k] for k, v in up.reached().items()}


def _settle(up, timeout: float = 1.0) -> None:
    """Lets the proxy's closes of cut upstream connections arrive (they follow its answers)."""
    deadline = time.monotonic() + timeout
    last = up.reached()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = up.reached()
        if now == last:
            return
        last = now


def _workers(envoy) -> dict:
    """Downstream connections per Envoy worker (both must have served)."""
    stats = envoy.stats(r"^listener\.127\.0\.0\.1_\d+\.worker_\d+\.downstream_cx_total$")
    return {name.split(".")[-2]: v for name, v in stats.items()}


def _keyed_run(envoy_factory, up, hold: bool) -> dict:
    envoy = envoy_factory(plugin_config={"idempotency": {"path_prefixes": [PREFIX]}},
                          upstream_port=up.port, concurrency=2, hold_keyed_requests=hold)
    up.plan(f"{PREFIX}pay", [{"action": "respond", "status": 201, "body": '{"paid":true}',
                              "headers": {"content-type": "application/json"}}])
    up.plan(f"{PREFIX}slow", [{"action": "respond", "status": 201, "body": "slow",
                               "delay_ms": SLOW_MS}])
    clients = Clients(envoy.port)
    try:
        # Pooled upstream connections: warm the pools of both workers.
        warm = clients.map(lambda _: clients.get("/warm"), range(4 * CLIENT_CONNECTIONS))
        assert _statuses(warm) == {200: 4 * CLIENT_CONNECTIONS}
        keys = [f"k-{uuid.uuid4().hex}" for _ in range(RESENDS)]
        first = clients.map(lambda k: clients.post(f"{PREFIX}pay", k, BODY, "first"), keys)
        assert _statuses(first) == {201: RESENDS}
        assert up.heads("first") == up.attempts("first") == RESENDS
        _settle(up)
        before = up.reached()

        # Re-sends of completed keys: even ones with the same payload (replay), odd ones not (422).
        def resend(ik):
            i, key = ik
            return clients.post(f"{PREFIX}pay", key, BODY if i % 2 == 0 else OTHER_BODY,
                                "replay" if i % 2 == 0 else "mismatch")
        again = clients.map(resend, list(enumerate(keys)))
        replays, mismatches = again[0::2], again[1::2]
        assert all(r.status == 201 and r.header(REPLAY_HEADER) == "true"
                   and r.body == b'{"paid":true}' for r in replays), _statuses(replays)
        assert all(_is_problem(r, 422) for r in mismatches), _statuses(mismatches)
        _settle(up)
        resend_totals = _since(up, before)

        # In-flight duplicates: the originals wait at the upstream while their duplicates arrive.
        before = up.reached()
        dkeys = [f"d-{uuid.uuid4().hex}" for _ in range(IN_FLIGHT_KEYS)]
        with ThreadPoolExecutor(IN_FLIGHT_KEYS) as originals:
            pending = [originals.submit(
                lambda k: KeepAliveClient(envoy.port, timeout=SLOW_MS / 1000 + 15).request(
                    "POST", f"{PREFIX}slow", {KEY_HEADER: k, "authorization": "Bearer alice",
                                              "x-scenario-request": "original"}, BODY), k)
                for k in dkeys]
            deadline = time.monotonic() + 10
            while up.attempts("original") < IN_FLIGHT_KEYS and time.monotonic() < deadline:
                time.sleep(0.02)
            assert up.attempts("original") == IN_FLIGHT_KEYS
            t0 = time.monotonic()
            dups = clients.map(lambda k: clients.post(f"{PREFIX}slow", k, BODY, "duplicate"),
                               [k for k in dkeys for _ in range(DUPLICATES_PER_KEY)])
            dup_seconds = time.monotonic() - t0
            assert all(_is_problem(r, 409) and r.header("retry-after") for r in dups), \
                (_statuses(dups), f"{dup_seconds:.1f}s for the duplicates, originals {SLOW_MS} ms")
            assert _statuses([f.result() for f in pending]) == {201: IN_FLIGHT_KEYS}
        _settle(up)
        dup_totals = _since(up, before)
        workers = _workers(envoy)
        return {
            "hold": hold,
            "replay": {"sent": len(replays), "heads": up.heads("replay"),
                       "cuts": up.cuts("replay")},
            "mismatch_422": {"sent": len(mismatches), "heads": up.heads("mismatch"),
                             "cuts": up.cuts("mismatch")},
            "in_flight_409": {"sent": len(dups), "heads": up.heads("duplicate"),
                              "cuts": up.cuts("duplicate")},
            "resend_phase": resend_totals,
            "in_flight_phase": dup_totals,
            "upstream_connections_opened": up.connections,
            "downstream_connections_per_worker": workers,
        }
    finally:
        clients.close()


def test_replays_422s_and_409s_never_reach_the_upstream(envoy_factory, fresh_upstream):
    on = _keyed_run(envoy_factory, fresh_upstream(), hold=True)
    off = _keyed_run(envoy_factory, fresh_upstream(), hold=False)
    reached = {m["hold"]: m["replay"]["heads"] + m["mismatch_422"]["heads"] for m in (on, off)}
    cut = {m["hold"]: m["replay"]["cuts"] + m["mismatch_422"]["cuts"] for m in (on, off)}
    record("local_answers.never_reach_upstream", {"hold_on": on, "hold_off": off})
    print(f"\n[local answers] {RESENDS} re-sends of completed keys ({RESENDS // 2} replays, "
          f"{RESENDS // 2} x 422) and {IN_FLIGHT_KEYS * DUPLICATES_PER_KEY} in-flight duplicates "
          f"(409), Envoy --concurrency 2, pooled upstream:\n"
          f"  with the hold:    {reached[True]} request heads and {cut[True]} cut connections "
          f"upstream for the re-sends, {on['in_flight_409']['heads']} for the duplicates; "
          f"phase totals {on['resend_phase']} / {on['in_flight_phase']}\n"
          f"  without the hold: {reached[False]} request heads and {cut[False]} cut connections "
          f"upstream for the re-sends ({off['replay']['heads']} replays, "
          f"{off['mismatch_422']['heads']} x 422), {off['in_flight_409']['heads']} for the "
          f"duplicates; phase totals {off['resend_phase']} / {off['in_flight_phase']}")
    for m in (on, off):  # both workers served (keys completed on one are replayed on the other)
        workers = m["downstream_connections_per_worker"]
        assert len(workers) == 2 and min(workers.values()) > 0, workers

    # With the hold: nothing of any locally answered request reached the upstream.
    assert on["replay"]["heads"] == on["mismatch_422"]["heads"] == 0, on
    assert on["in_flight_409"]["heads"] == 0, on
    for phase in ("resend_phase", "in_flight_phase"):
        totals = on[phase]
        assert totals["cuts"] == totals["partial_heads"] == 0, (phase, on)
        assert totals["proxy_closes"] == totals["proxy_resets"] == 0, (phase, on)
        assert totals["idle_closes"] == totals["idle_resets"] == 0, (phase, on)
    assert on["resend_phase"]["heads"] == 0, on
    assert on["in_flight_phase"]["heads"] == IN_FLIGHT_KEYS, on  # only the originals

    # Without it, the same traffic reaches the upstream: request heads, then closed connections.
    assert reached[False] > 0 and cut[False] > 0, off
    assert off["resend_phase"]["proxy_closes"] + off["resend_phase"]["proxy_resets"] > 0, off
    # A duplicate of a request in flight is answered at the headers (a store peek): it never
    # depended on the hold.
    assert off["in_flight_409"]["heads"] == 0, off


def _raw(port: int, path: str, headers: dict, *, body: bytes = b"", declared=None,
         chunks=None) -> tuple:
    """One request on its own connection, written by hand (a declared length that no body
    follows, or a chunked body). Returns (status, content-type) or (None, error)."""
    lines = [f"POST {path} HTTP/1.1", "host: localhost"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append("transfer-encoding: chunked" if chunks is not None
                 else f"content-length: {len(body) if declared is None else declared}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        try:
            for c in chunks or ():
                s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            if chunks is not None:
                s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # Envoy answered and closed while the body was still going
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                got = s.recv(65536)
                if not got:
                    break
                buf += got
        except OSError as e:
            return None, type(e).__name__
    head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    if not head or not head[0].startswith("HTTP/1.1 "):
        return None, f"no response: {buf[:80]!r}"
    ctype = next((line.split(":", 1)[1].strip() for line in head[1:]
                  if line.lower().startswith("content-type:")), "")
    return int(head[0].split()[1]), ctype


@pytest.mark.parametrize("hold", MODES, ids=MODE_IDS)
def test_refusals_never_reach_the_upstream(envoy_factory, fresh_upstream, hold):
    """400 (missing key), 413 (declared Content-Length over the limit; a chunked body over it) and
    503 (store full) never reach the upstream with the hold. The ones resetguard decides at the
    headers never did; a chunked body over the limit is refused mid-body, which the hold is
    needed for (without it the upstream gets the headers and part of the body, then a cut)."""
    up = fresh_upstream()
    # One shard of 8 entries: 8 completed keys fill the store.
    envoy = envoy_factory(plugin_config={"idempotency": {"path_prefixes": [PREFIX],
                                                         "max_entries": 8, "shards": 1}},
                          upstream_port=up.port, concurrency=2, hold_keyed_requests=hold)
    clients = Clients(envoy.port)
    try:
        assert _statuses(clients.map(lambda _: clients.get("/warm"), range(16))) == {200: 16}
        _settle(up)
        before = up.reached()
        missing = clients.map(lambda _: clients.post(f"{PREFIX}nokey", None, BODY, "missing"),
                              range(20))
        declared = [_raw(envoy.port, f"{PREFIX}big", {KEY_HEADER: f"b-{i}",
                                                        "x-scenario-request": "declared-413"},
                         declared=2 * MAX_BODY) for i in range(10)]
        chunk = b"x" * 65536
        chunked = [_raw(envoy.port, f"{PREFIX}bigc", {KEY_HEADER: f"c-{uuid.uuid4().hex}",
                                                       "x-scenario-request": "chunked-413"},
                        chunks=[chunk] * 24) for _ in range(10)]  # 1.5 MiB, no length declared
        _settle(up)
        refusals = _since(up, before)
        # Then the store: 8 completed keys fill it, every new key gets 503 store-full.
        fill = clients.map(lambda k: clients.post(f"{PREFIX}fill", k, BODY, "fill"),
                           [f"f-{uuid.uuid4().hex}" for _ in range(8)])
        assert _statuses(fill) == {200: 8}
        _settle(up)
        before = up.reached()
        full = clients.map(lambda k: clients.post(f"{PREFIX}new", k, BODY, "store-full"),
                           [f"n-{uuid.uuid4().hex}" for _ in range(20)])
        _settle(up)
        store_full = _since(up, before)
        totals = {k: refusals[k] + store_full[k] for k in refusals}
    finally:
        clients.close()
    assert all(_is_problem(r, 503) and r.header("retry-after") for r in full), _statuses(full)
    assert all(_is_problem(r, 400) for r in missing), _statuses(missing)
    assert declared == [(413, PROBLEM_TYPE)] * 10, declared
    assert all(status == 413 for status, _ in chunked), chunked
    figures = {tag: {"heads": up.heads(tag), "cuts": up.cuts(tag)}
               for tag in ("store-full", "missing", "declared-413", "chunked-413")}
    figures["totals"] = totals
    figures["chunked_413_content_types"] = sorted({ct for _, ct in chunked})
    record(f"local_answers.refusals.{'hold_on' if hold else 'hold_off'}", figures)
    print(f"\n[local answers] refusals, hold {'on' if hold else 'off'}: {json.dumps(figures)}")
    # Decided at the headers: never at the upstream, with or without the hold.
    for tag in ("store-full", "missing", "declared-413"):
        assert figures[tag] == {"heads": 0, "cuts": 0}, (tag, figures)
    if hold:
        assert figures["chunked-413"] == {"heads": 0, "cuts": 0}, figures
        assert figures["chunked_413_content_types"] == [PROBLEM_TYPE], figures
        assert totals["heads"] == totals["cuts"] == totals["partial_heads"] == 0, figures
        assert totals["proxy_closes"] == totals["proxy_resets"] == 0, figures
    else:
        # Refused mid-body: the upstream had the headers and part of the body, then a cut.
        assert figures["chunked-413"]["heads"] > 0 and figures["chunked-413"]["cuts"] > 0, figures
