"""A replay carries exactly the stored response: status, end-to-end headers (names, values, order,
repeats) and body, plus `Idempotent-Replayed: true` (project issue 18), on the real Envoy.

Each case sends one keyed POST that the upstream answers, then the same POST again, and compares
the two responses as they arrived on the wire (HTTP/1.1, raw socket): the status line byte for
byte, the header list in order, the body byte for byte.

The filter sends a replay with proxy-wasm `send_local_response`. What Envoy 1.40 does to such a
local reply, measured with a probe filter that calls it exactly as resetguard does (issue 18):

  F1  a non-empty body without `content-type` gets `content-type: text/plain`;
  F2  the sending filter's own `on_http_response_headers` runs for its local reply (once, seeing
      `:status`, its headers in order, Envoy's `content-length` and F1's `content-type`);
  F3  edits there reach the wire: remove, replace, add, and `proxy_set_header_map_pairs` (the
      whole list, in order); removing `date` / `server` there has no effect;
  F4  an empty body loses the `content-type` (and `content-length`) the filter passed; HTTP/1.1
      then appends `content-length: 0` at the end of the header block (not for 204);
  F5  `content-length` is set from the body, `transfer-encoding` dropped: a chunked upstream
      original is replayed with a `content-length`;
  F6  `date` is added when absent (a given one is kept), `server` is overwritten with `envoy`, on
      every response, proxied or local;
  F7  HTTP/1.1 lower-cases every header name, proxied or local; order and repeats (`set-cookie`
      twice) are kept;
  F8  the router adds `x-envoy-upstream-service-time` to proxied responses only.

The comparison leaves out only what Envoy controls on every response and what is hop-by-hop:

  * framing, `content-length` and `transfer-encoding` (F4, F5), checked apart: the replay's
    `content-length` is its body's length;
  * `connection` / `keep-alive` (hop-by-hop);
  * `date` when the upstream sent none (F6: the original and the replay each get the time they
    were sent); an upstream `date` is stored and must come back unchanged;
  * `server` (F6), checked `envoy` in both;
  * `x-envoy-upstream-service-time` (F8: the annotation of the original upstream trip; the filter
    never stores `x-envoy-*`), checked absent from the replay.

Everything else must be identical, including what Envoy changes in a local reply that the filter
can undo in its own response-headers callback (F2, F3), which is expected undone here: F1's added
`content-type` (the `no-content-type` case) and F4's removed one (`empty-body`), in its place.
The filter does that by setting the replay's response header map, in that callback, to the stored
`:status` and headers, `idempotent-replayed: true`, and Envoy's `content-length`
(`proxy_set_header_map_pairs`); until it does, those cases fail.

Header-name case is not a difference: both responses arrive lower-cased (F7).
"""

import socket
import uuid

import pytest

from harness.results import record

KEY_HEADER = "Idempotency-Key"
REPLAY = ("idempotent-replayed", "true")
PLUGIN_CONFIG = {"idempotency": {"path_prefixes": ["/fidelity/"]}}
STORED = "resetguard.idempotency.stored"

# Differences Envoy forces on every response, which the filter cannot (and should not) remove:
FRAMING = {"content-length", "transfer-encoding"}  # F4, F5: framing is per hop, Envoy's
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}
ROUTER_ANNOTATIONS = {"x-envoy-upstream-service-time"}  # F8: the original trip's, never stored
ENVOY_OWNED = {"server"}  # F6: overwritten with `envoy` after the filter chain (F3: no effect)
ENVOY_DATE = {"date"}  # F6: added after the filter chain when the upstream sent none

# The upstream's answers: (case id, action). Header lists are sent in this order and case.
CASES = [
    ("no-content-type", {"status": 200, "body": "receipt 42, no content-type",
                         "headers": [["X-Receipt", "r-42"]]}),
    ("set-cookie-twice", {"status": 200, "body": '{"ok":true}',
                          "headers": [["Content-Type", "application/json"],
                                      ["Set-Cookie", "session=abc; Path=/; HttpOnly"],
                                      ["X-Between", "1"],
                                      ["Set-Cookie", "theme=dark; Path=/"]]}),
    ("empty-body", {"status": 200, "body": "",
                    "headers": [["Content-Type", "application/json"], ["X-Empty", "yes"]]}),
    ("chunked-body", {"status": 200, "body": "chunk one, chunk two, chunk three", "chunked": True,
                      "chunk_size": 7, "headers": [["Content-Type", "text/csv"],
                                                   ["Cache-Control", "no-store"]]}),
    ("created-with-location", {"status": 201, "body": '{"id":7}',
                               "headers": [["Location", "/fidelity/orders/7"],
                                           ["Content-Type", "application/json"],
                                           ["ETag", '"v1"']]}),
    ("created-empty-with-location", {"status": 201, "body": "",
                                     "headers": [["Location", "/fidelity/orders/8"]]}),
    ("upstream-date-and-server", {"status": 200, "body": "dated",
                                  "headers": [["Date", "Mon, 01 Jan 2024 00:00:00 GMT"],
                                              ["Server", "upstream/1.0"],
                                              ["Content-Type", "text/plain; charset=utf-8"],
                                              ["Vary", "Accept"], ["Vary", "Authorization"]]}),
]


class Raw:
    """One response as it arrived: the status line, the header list, the body (de-chunked)."""

    def __init__(self, status_line: str, headers: list, body: bytes, wire_head: bytes):
        self.status_line, self.headers, self.body, self.wire_head = (
            status_line, headers, body, wire_head)

    def values(self, name: str) -> list:
        return [v for n, v in self.headers if n.lower() == name]

    def __repr__(self):
        return f"Raw({self.status_line!r}, {self.headers!r}, {self.body!r})"


def _recv_until(sock, buf: bytes, need) -> bytes:
    while not need(buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} bytes: {buf[:200]!r}")
        buf += chunk
    return buf


def raw_post(port: int, path: str, headers: list, body: bytes, timeout: float = 10.0) -> Raw:
    """A keep-alive-style HTTP/1.1 POST on a fresh connection (no `Connection: close`, so the
    response is framed by its own headers); reads exactly one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        lines = [f"POST {path} HTTP/1.1", "Host: localhost"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"Content-Length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        buf = _recv_until(s, b"", lambda b: b"\r\n\r\n" in b)
        head, rest = buf.split(b"\r\n\r\n", 1)
        text = head.decode("latin-1").split("\r\n")
        pairs = [tuple(line.split(": ", 1)) for line in text[1:]]
        names = {n.lower(): v for n, v in pairs}
        status = int(text[0].split(" ")[1])
        if status in (204, 304) or 100 <= status < 200:
            payload = b""
        elif names.get("transfer-encoding", "").lower() == "chunked":
            payload = b""
            while True:
                rest = _recv_until(s, rest, lambda b: b"\r\n" in b)
                size_line, rest = rest.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                rest = _recv_until(s, rest, lambda b: len(b) >= size + 2)
                payload, rest = payload + rest[:size], rest[size + 2:]
                if size == 0:
                    break
        else:
            length = int(names.get("content-length", "0"))
            rest = _recv_until(s, rest, lambda b: len(b) >= length)
            payload = rest[:length]
        return Raw(text[0], pairs, payload, head)


def comparable(r: Raw, upstream_sent_date: bool) -> list:
    """The header list without what Envoy controls on every response and the hop-by-hop ones."""
    drop = FRAMING | HOP_BY_HOP | ROUTER_ANNOTATIONS | ENVOY_OWNED
    if not upstream_sent_date:
        drop |= ENVOY_DATE
    return [(n, v) for n, v in r.headers if n.lower() not in drop]


@pytest.fixture
def keyed_envoy(envoy_factory, upstream, dead_port):
    return envoy_factory(plugin_config=PLUGIN_CONFIG, upstream_port=upstream.port,
                         dead_port=dead_port, concurrency=2)


@pytest.mark.parametrize("case, answer", CASES, ids=[c for c, _ in CASES])
def test_replay_is_the_stored_response(keyed_envoy, upstream, case, answer):
    path = f"/fidelity/{case}"
    upstream.plan(path, [dict(answer, action="respond")])
    key = f"fidelity-{case}-{uuid.uuid4().hex[:8]}"
    request_headers = [("authorization", "Bearer alice"), ("content-type", "application/json"),
                       (KEY_HEADER, key)]
    body = b'{"amount":10}'

    first = raw_post(keyed_envoy.port, path, request_headers, body)
    # The claim settles in on_log, just after the response: wait until it is stored.
    keyed_envoy.wait_for(lambda: keyed_envoy.filter_counters().get(STORED, 0) >= 1, timeout=5)
    replay = raw_post(keyed_envoy.port, path, request_headers, body)
    assert upstream.key_executions(key) == 1
    assert upstream.key_heads(key) == 1  # the replay never reached the upstream

    sent_names = [n.lower() for n, _ in answer.get("headers", [])]
    upstream_date = "date" in sent_names
    figures = {"first": first.wire_head.decode("latin-1").split("\r\n"),
               "replay": replay.wire_head.decode("latin-1").split("\r\n"),
               "first_body": first.body.decode("latin-1"),
               "replay_body": replay.body.decode("latin-1")}
    record(f"replay_fidelity.{case}", figures)
    print(f"\n[replay fidelity {case}]\n  first : {figures['first']}\n"
          f"  replay: {figures['replay']}")

    # Status line and body, byte for byte.
    assert replay.status_line == first.status_line, figures
    assert replay.body == first.body == answer["body"].encode(), figures
    # The end-to-end headers, in order, repeats kept, then the replay marker.
    assert comparable(first, upstream_date) + [REPLAY] == comparable(replay, upstream_date), figures
    # What the comparison left out, checked for what it must be.
    assert first.values("server") == replay.values("server") == ["envoy"], figures
    assert len(first.values("date")) == len(replay.values("date")) == 1, figures
    assert replay.values("x-envoy-upstream-service-time") == [], figures
    if answer["status"] not in (204, 304):
        assert replay.values("content-length") == [str(len(replay.body))], figures
    if answer.get("chunked"):
        # Framing is per hop: a chunked original is replayed with its length (F5).
        assert first.values("transfer-encoding") == ["chunked"], figures
        assert first.values("content-length") == [], figures
    else:
        assert first.values("content-length") == replay.values("content-length"), figures


def test_replay_fidelity_covers_envoy_s_local_reply_rules(keyed_envoy, upstream):
    """The two local-reply rules (F1, F4) side by side in one Envoy: the upstream's original
    carries no Envoy-made content-type, and an empty original keeps its own."""
    upstream.plan("/fidelity/plain", [{"action": "respond", "status": 200, "body": "x"}])
    upstream.plan("/fidelity/empty", [{"action": "respond", "status": 200, "body": "",
                                       "headers": [["Content-Type", "application/json"]]}])
    out = {}
    for path in ("/fidelity/plain", "/fidelity/empty"):
        key = f"rules-{uuid.uuid4().hex[:8]}"
        hs = [("authorization", "Bearer alice"), (KEY_HEADER, key)]
        stored = keyed_envoy.filter_counters().get(STORED, 0)
        first = raw_post(keyed_envoy.port, path, hs, b"{}")
        keyed_envoy.wait_for(lambda: keyed_envoy.filter_counters().get(STORED, 0) > stored,
                             timeout=5)
        replay = raw_post(keyed_envoy.port, path, hs, b"{}")
        out[path] = (first.values("content-type"), replay.values("content-type"))
    record("replay_fidelity.content_type", {p: {"first": f, "replay": r}
                                            for p, (f, r) in out.items()})
    # F1: Envoy would add `content-type: text/plain` to the non-empty replay.
    assert out["/fidelity/plain"] == ([], []), out
    # F4: Envoy would drop the stored content-type from the empty replay.
    assert out["/fidelity/empty"] == (["application/json"], ["application/json"]), out
