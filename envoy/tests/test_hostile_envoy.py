"""Hostile requests through a real Envoy with resetguard (SECURITY.md): raw HTTP/1.1 bytes with
huge and repeated headers, non-UTF-8 (obs-text) values, 10 KB / empty / quoted / malformed keys,
client retry headers, bodies chunked in odd pieces and sent slowly, and clients that leave
mid-request. The mock host's driver (host-tests/tests/suite/hostile.rs) covers far more cases and
host faults; this proves the same module survives Envoy's own codec and ABI:

- no VM failure, reload or trap (wasm.* stats unchanged, no trap/panic line in Envoy's log);
- every answer is Envoy's (400/413/431 from its codec, 503 only if the upstream fails) or the
  filter's (400/409/413/422 problem+json with a matching `status`), or the upstream's 200;
- no key executes twice upstream, no keyless POST reaches it, no client retry header reaches it.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time

from harness import paths

SEED = 0x5EC
CASES = 300
BAD_LOG = re.compile(r"\[critical\]|panic|wasm trap|unreachable|Uncaught|RuntimeError", re.I)
PLUGIN_CONFIG = {"idempotency": {"mode": "enforce"}}
ALLOWED = {200, 400, 409, 413, 422, 431}
RETRY_HEADERS = {"x-envoy-retry-on", "x-envoy-max-retries", "x-envoy-retriable-status-codes",
                 "x-envoy-upstream-rq-per-try-timeout-ms"}


def _case(rng: random.Random, i: int, sent_keys: list) -> tuple[bytes, list, bool]:
    """One raw request: (bytes, the pieces to send them in, whether the client leaves early)."""
    method = rng.choice(["POST", "POST", "POST", "POST", "GET", "PUT"])
    path = f"/hostile/{i}"
    auth = rng.choice([b"Bearer a", b"Bearer b"])
    headers = [(b"host", b"example.com")]
    shape = rng.randrange(10)
    if shape == 0:
        headers.append((b"idempotency-key", b"k" * 10 * 1024))
    elif shape == 1:
        headers.append((b"idempotency-key", b'""'))
    elif shape == 2:
        headers.append((b"idempotency-key", b"k-\xc3\x28-" + str(i).encode()))
    elif shape == 3:
        headers += [(b"idempotency-key", b"a"), (b"idempotency-key", b"b")]
    elif shape == 4 and sent_keys:
        # A re-send of an earlier keyed request (same path): a replay, or a 422 for another body.
        # Half of them from the other client: a separate execution, never the first one's replay.
        path, key, first_auth = rng.choice(sent_keys)
        method = "POST"
        auth = first_auth if rng.random() < 0.7 else rng.choice([b"Bearer a", b"Bearer b"])
        headers.append((b"idempotency-key", key))
    elif shape != 5:
        key = b'"' + f"h-{SEED}-{i}".encode() + b'"' if rng.random() < 0.5 else f"h-{SEED}-{i}".encode()
        sent_keys.append((path, key.strip(b'"'), auth))
        headers.append((b"idempotency-key", key))
    for _ in range(rng.randrange(4)):
        extra = rng.randrange(6)
        if extra == 0:
            headers += [(b"x-envoy-retry-on", b"5xx,reset"), (b"x-envoy-max-retries", b"10")]
        elif extra == 1:
            headers.append((b"x-huge", b"h" * rng.choice([8_000, 30_000, 70_000])))
        elif extra == 2:
            headers += [(b"x-repeated", str(n).encode()) for n in range(200)]
        elif extra == 3:
            headers.append((b"x-obs-text", bytes(rng.randrange(0x80, 0x100) for _ in range(40))))
        elif extra == 4:
            headers.append((b"x-envoy-retriable-status-codes", b"200"))
        else:
            headers.append((b"content-type", b"application/json"))
    body = rng.choice([b"", b'{"n":1}', b'{"n":2}', b"z" * rng.randrange(1, 5000)])
    chunked = rng.random() < 0.5
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
        pieces, rest = [], body
        while rest:
            n = rng.randrange(1, len(rest) + 1)
            pieces.append(b"%x\r\n" % n + rest[:n] + b"\r\n")
            rest = rest[n:]
        payload = b"".join(pieces) + b"0\r\n\r\n"
    else:
        headers.append((b"content-length", str(len(body)).encode()))
        payload = body
    headers.append((b"authorization", auth))
    head = f"{method} {path} HTTP/1.1\r\n".encode()
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    raw = head + payload
    cuts = sorted(rng.sample(range(1, len(raw)), min(3, len(raw) - 1))) if rng.random() < 0.3 else []
    leaves = rng.random() < 0.08
    return raw, cuts, leaves


def _send(port: int, raw: bytes, cuts: list, leaves: bool) -> tuple:
    """Sends `raw` in pieces; returns (status, headers, body) or None if the client left."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        at = 0
        for cut in cuts + [len(raw)]:
            if leaves and cut == len(raw):
                s.sendall(raw[at:max(at, len(raw) // 2)])
                return None
            s.sendall(raw[at:cut])
            at = cut
            time.sleep(0.002)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return (0, {}, data)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        length = int(headers.get("content-length", "0") or 0)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return (status, headers, body)
    finally:
        s.close()


def test_hostile_raw_requests_get_only_contract_answers_from_a_real_envoy(envoy_factory, upstream):
    e = envoy_factory(plugin_config=PLUGIN_CONFIG, upstream_port=upstream.port, concurrency=2)
    wasm_before = {k: v for k, v in e.stats("wasm").items() if not k.startswith("wasmcustom.")}
    mark = e.log_mark()
    rng = random.Random(SEED)
    sent_keys: list = []
    statuses: dict = {}
    problems = []
    for i in range(CASES):
        raw, cuts, leaves = _case(rng, i, sent_keys)
        got = _send(e.port, raw, cuts, leaves)
        if got is None:
            statuses["left"] = statuses.get("left", 0) + 1
            continue
        status, headers, body = got
        statuses[status] = statuses.get(status, 0) + 1
        if status not in ALLOWED:
            problems.append((i, status, body[:200]))
        if headers.get("content-type", "").startswith("application/problem+json"):
            doc = json.loads(body)
            if doc.get("status") != status or not doc.get("type", "").startswith("urn:resetguard:"):
                problems.append((i, "problem body", doc))
    time.sleep(0.5)
    wasm_after = {k: v for k, v in e.stats("wasm").items() if not k.startswith("wasmcustom.")}
    bad = [line for line in e.log_text()[mark:].splitlines() if BAD_LOG.search(line)]
    posts_by_key: dict = {}  # a key is scoped to its client and path: count per all three
    for r in upstream.requests:
        if r.method == "POST" and r.key:
            scoped = (r.headers.get("authorization"), r.path, r.key)
            posts_by_key[scoped] = posts_by_key.get(scoped, 0) + 1
    executed_twice = {k: n for k, n in posts_by_key.items() if n > 1}
    keyless_posts = [r.path for r in upstream.requests if r.method == "POST" and r.key is None]
    retry_headers = [(r.path, n) for r in upstream.requests for n, _ in r.raw_headers
                     if n.lower() in RETRY_HEADERS]
    figures = {"statuses": statuses, "upstream_requests": len(upstream.requests),
               "filter": {k: v for k, v in e.filter_counters().items() if v}}
    (paths.RUN_DIR / "hostile_envoy.json").write_text(json.dumps(figures, indent=2, default=str))
    print(f"\n[hostile envoy] {CASES} raw requests: {statuses}; upstream saw {len(upstream.requests)}")
    assert e.alive()
    assert wasm_after == wasm_before, (wasm_before, wasm_after)
    assert bad == [], bad
    assert problems == [], problems
    assert executed_twice == {}, executed_twice
    assert keyless_posts == [], keyless_posts
    assert retry_headers == [], retry_headers
    # The generator reached the filter's answers, Envoy's codec limits and the upstream.
    filt = figures["filter"]
    assert statuses.get(200, 0) > 20 and statuses.get(400, 0) > 20, statuses
    assert filt.get("resetguard.idempotency.replays", 0) > 0, filt
    assert filt.get("resetguard.idempotency.payload_mismatches", 0) > 0, filt
