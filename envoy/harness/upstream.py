"""A chaos HTTP/1.1 upstream whose behaviour per request is controlled by the test.

Threads and raw sockets, keep-alive, bound to 127.0.0.1 only. Every request that the upstream
read completely is an *attempt*; attempts are counted per path, per `x-scenario-request` tag and
per `Idempotency-Key` (each key counted only for requests that carried it).

What reached the upstream at all is counted apart from attempts, with the same three keys:
  * a *head* is a request whose request line and headers arrived, whether or not its body ever
    did (every attempt is also a head; `heads`, `key_heads`, `path_heads`, `total_heads`);
  * a *cut* is a head whose request the proxy abandoned: the connection was closed (FIN) or reset
    (RST) by the proxy before the body was complete (`cuts`, `key_cuts`, `path_cuts`,
    `total_cuts`, and `cut_log` with the kind and the body bytes that had arrived). An HTTP/1.1
    proxy cannot cancel a request it started on a connection but by closing that connection, so
    this is what the upstream sees of a request the proxy opened and then answered itself.
  * `proxy_resets` / `proxy_closes` count connections that the proxy reset / closed while a
    request was incomplete (cuts, plus requests cut inside their head: `partial_heads`), and
    `idle_closes` / `idle_resets` those it closed / reset between requests (a pool's normal
    connection turnover, not a request that reached the upstream). The h2 upstream
    (harness/h2.py) counts a stream Envoy reset before its request was complete as a cut and in
    `proxy_resets`.
"Never reached the upstream" is `heads(...) == 0`; "no connection reset for it" is
`cuts(...) == 0` (and `proxy_resets == proxy_closes == 0` for a whole run).

An *execution* is an attempt whose work the upstream did: one it answered (`respond`, also when
it then cut the answer, `reset_mid_body`) or one it processed and then reset without answering
(`execute_then_reset`); `executions`, `key_executions`, `path_executions`, `total_executions`.
An attempt the upstream reset without doing the work (`reset_before_headers`, `close`, a stale
keep-alive reset, an h2 refused or reset stream) is not one. "Run exactly once" is
`key_executions(key) == 1`.

Behaviour is chosen per attempt:
  * a plan registered for the request's tag (or, failing that, its path): a list of actions, one
    per successive attempt; attempts beyond the list repeat the last entry;
  * otherwise `default`, a callable `(request, attempt_index) -> action` or an action dict.

Actions (dicts, the same vocabulary as scenarios/README.md):
  {"action": "respond", "status": 200, "headers": {...}, "body": "ok", "delay_ms": 0}
      `headers` is a dict or a list of [name, value] pairs (sent in that order and case, repeats
      kept: two `set-cookie`); `content-length` is added unless given, or unless `"chunked": true`,
      which sends `transfer-encoding: chunked` and the body in `chunk_size`-byte chunks (default 4)
  {"action": "reset_before_headers", "delay_ms": 0}   read the request, then TCP RST, no answer
  {"action": "execute_then_reset", "delay_ms": 0}     read the request, count it executed (the work
      was done: "socket hang up after the work was done"), wait delay_ms, then TCP RST, no answer
  {"action": "reset_mid_body", "status": 200, "body": "full body", "body_prefix": "part"}
      send headers announcing the full length, then `body_prefix`, then RST
  {"action": "close"}                                   FIN without answer

`stale_after_ms` simulates a server whose keep-alive idle timer fires as a request arrives: on a
connection that sat idle longer than that since its previous response, the next request is read
and answered with an RST only (counted as an attempt and in `stale_resets`).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

Action = dict
DefaultBehaviour = Union[Action, Callable[["Request", int], Action]]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_READ_TIMEOUT_S = 30.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict  # lower-case name -> value (last one wins)
    raw_headers: list  # [(name, value)] as received
    body: bytes
    conn_id: int
    received_at: float = field(default_factory=time.monotonic)

    @property
    def tag(self) -> Optional[str]:
        return self.headers.get("x-scenario-request")

    @property
    def key(self) -> Optional[str]:
        return self.headers.get("idempotency-key")


def _rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the kernel sends a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class PlannedUpstream:
    """What every chaos upstream shares: a loopback listener, the per-attempt plans, attempt
    counting (per path, tag and key, with times) and the control API. Subclasses speak the
    protocol in `_serve(sock, conn_id)`, calling `_record` then `_choose` for each attempt."""

    def __init__(self, default: DefaultBehaviour = None, name: str = "chaos", backlog: int = 512):
        self.name = name
        self.default: DefaultBehaviour = default or {"action": "respond", "status": 200,
                                                     "body": "ok"}
        self._lock = threading.Lock()
        self._plans: dict = {}
        self.attempts_by_path: Counter = Counter()
        self.attempts_by_tag: Counter = Counter()
        self.attempts_by_key: Counter = Counter()
        self.attempt_times: list = []  # (monotonic time, tag) per attempt
        self.requests: list = []  # every attempt (Request), bounded by keep_requests
        self.keep_requests = 10_000
        self.total_attempts = 0
        # Heads (request line + headers arrived) and cuts (a head the proxy closed or reset
        # before its body was complete): see the module doc.
        self.heads_by_path: Counter = Counter()
        self.heads_by_tag: Counter = Counter()
        self.heads_by_key: Counter = Counter()
        self.total_heads = 0
        self.cuts_by_path: Counter = Counter()
        self.cuts_by_tag: Counter = Counter()
        self.cuts_by_key: Counter = Counter()
        self.total_cuts = 0
        # (tag, path, key, kind "close" | "reset", body bytes received), bounded by keep_requests
        self.cut_log: list = []
        # Executions (the upstream did the work): see the module doc.
        self.executions_by_path: Counter = Counter()
        self.executions_by_tag: Counter = Counter()
        self.executions_by_key: Counter = Counter()
        self.total_executions = 0
        self.partial_heads = 0  # connections closed or reset by the proxy inside a request head
        self.proxy_closes = 0  # FIN from the proxy while a request (or its head) was incomplete
        self.proxy_resets = 0  # RST from the proxy while a request (or its head) was incomplete
        self.idle_closes = 0  # FIN from the proxy between requests
        self.idle_resets = 0  # RST from the proxy between requests
        self.connections = 0
        self._conns: set = set()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(backlog)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept",
                                        daemon=True)

    # -- control ----------------------------------------------------------------------------------
    def start(self):
        self._thread.start()
        return self

    def plan(self, tag_or_path: str, actions: list) -> None:
        """Registers the actions for successive attempts of a tag (or a path)."""
        with self._lock:
            self._plans[tag_or_path] = list(actions)

    def reset_counts(self) -> None:
        with self._lock:
            self.attempts_by_path.clear()
            self.attempts_by_tag.clear()
            self.attempts_by_key.clear()
            self.attempt_times.clear()
            self.requests.clear()
            self.total_attempts = 0
            for c in (self.heads_by_path, self.heads_by_tag, self.heads_by_key,
                      self.cuts_by_path, self.cuts_by_tag, self.cuts_by_key,
                      self.executions_by_path, self.executions_by_tag, self.executions_by_key):
                c.clear()
            self.cut_log.clear()
            self.total_heads = self.total_cuts = self.partial_heads = 0
            self.total_executions = 0
            self.proxy_closes = self.proxy_resets = self.idle_closes = self.idle_resets = 0

    def attempts(self, tag: str) -> int:
        with self._lock:
            return self.attempts_by_tag[tag]

    def key_attempts(self, key: str) -> int:
        with self._lock:
            return self.attempts_by_key[key]

    def path_attempts(self, path: str) -> int:
        with self._lock:
            return self.attempts_by_path[path]

    def attempts_after(self, tag: str, t: float) -> int:
        with self._lock:
            return sum(1 for at, tg in self.attempt_times if tg == tag and at > t)

    def requests_for(self, tag: str) -> list:
        with self._lock:
            return [r for r in self.requests if r.tag == tag]

    def heads(self, tag: str) -> int:
        """Requests with this tag whose request line and headers reached the upstream."""
        with self._lock:
            return self.heads_by_tag[tag]

    def key_heads(self, key: str) -> int:
        with self._lock:
            return self.heads_by_key[key]

    def path_heads(self, path: str) -> int:
        with self._lock:
            return self.heads_by_path[path]

    def cuts(self, tag: str) -> int:
        """Requests with this tag that the proxy started and then closed or reset mid-request."""
        with self._lock:
            return self.cuts_by_tag[tag]

    def key_cuts(self, key: str) -> int:
        with self._lock:
            return self.cuts_by_key[key]

    def path_cuts(self, path: str) -> int:
        with self._lock:
            return self.cuts_by_path[path]

    def executions(self, tag: str) -> int:
        """Requests with this tag whose work the upstream did (see the module doc)."""
        with self._lock:
            return self.executions_by_tag[tag]

    def key_executions(self, key: str) -> int:
        with self._lock:
            return self.executions_by_key[key]

    def path_executions(self, path: str) -> int:
        with self._lock:
            return self.executions_by_path[path]

    def reached(self) -> dict:
        """A snapshot of what reached the upstream: totals of attempts, heads, cuts and the
        proxy's connection closes and resets (mid-request and idle)."""
        with self._lock:
            return {"attempts": self.total_attempts, "heads": self.total_heads,
                    "cuts": self.total_cuts, "partial_heads": self.partial_heads,
                    "proxy_closes": self.proxy_closes, "proxy_resets": self.proxy_resets,
                    "idle_closes": self.idle_closes, "idle_resets": self.idle_resets}

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- serving ----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                conn_id = self.connections
                self._conns.add(conn)
            threading.Thread(target=self._serve_and_forget, args=(conn, conn_id), daemon=True,
                             name=f"{self.name}-conn{conn_id}").start()

    def _serve_and_forget(self, conn: socket.socket, conn_id: int) -> None:
        try:
            self._serve(conn, conn_id)
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn: socket.socket, conn_id: int) -> None:
        raise NotImplementedError

    def _choose(self, req: Request) -> Action:
        """The action for an attempt already counted by `_record`."""
        with self._lock:
            key = req.tag if req.tag in self._plans else req.path
            plan = self._plans.get(key)
            index = (self.attempts_by_tag[req.tag] if req.tag in self._plans
                     else self.attempts_by_path[req.path]) - 1
        if plan:
            return plan[min(index, len(plan) - 1)]
        if callable(self.default):
            return self.default(req, index)
        return self.default

    def _record(self, req: Request) -> None:
        with self._lock:
            self.total_attempts += 1
            self.attempts_by_path[req.path] += 1
            if req.tag is not None:
                self.attempts_by_tag[req.tag] += 1
            if req.key is not None:
                self.attempts_by_key[req.key] += 1
            self.attempt_times.append((req.received_at, req.tag))
            if len(self.requests) < self.keep_requests:
                self.requests.append(req)

    def _record_head(self, req: Request) -> None:
        """A request's head arrived (called before its body is read; `_record` follows once the
        whole request is in)."""
        with self._lock:
            self.total_heads += 1
            self.heads_by_path[req.path] += 1
            if req.tag is not None:
                self.heads_by_tag[req.tag] += 1
            if req.key is not None:
                self.heads_by_key[req.key] += 1

    def _record_execution(self, req: Request) -> None:
        """The upstream did the work of an attempt already counted by `_record`."""
        with self._lock:
            self.total_executions += 1
            self.executions_by_path[req.path] += 1
            if req.tag is not None:
                self.executions_by_tag[req.tag] += 1
            if req.key is not None:
                self.executions_by_key[req.key] += 1

    def _record_cut(self, req: Optional[Request], kind: str, body_bytes: int = 0) -> None:
        """The proxy closed (`kind` "close") or reset ("reset") the connection while `req` was
        incomplete (None: inside the head); "idle_close" / "idle_reset": between requests."""
        with self._lock:
            if kind == "idle_close":
                self.idle_closes += 1
                return
            if kind == "idle_reset":
                self.idle_resets += 1
                return
            if kind == "reset":
                self.proxy_resets += 1
            else:
                self.proxy_closes += 1
            if req is None:
                self.partial_heads += 1
                return
            self.total_cuts += 1
            self.cuts_by_path[req.path] += 1
            if req.tag is not None:
                self.cuts_by_tag[req.tag] += 1
            if req.key is not None:
                self.cuts_by_key[req.key] += 1
            if len(self.cut_log) < self.keep_requests:
                self.cut_log.append((req.tag, req.path, req.key, kind, body_bytes))


class ChaosUpstream(PlannedUpstream):
    """The HTTP/1.1 chaos upstream (see the module doc)."""

    def __init__(self, default: DefaultBehaviour = None, stale_after_ms: Optional[int] = None,
                 name: str = "chaos"):
        super().__init__(default, name)
        self.stale_after_ms = stale_after_ms
        self.stale_resets = 0

    def reset_counts(self) -> None:
        super().reset_counts()
        with self._lock:
            self.stale_resets = 0

    def _serve(self, conn: socket.socket, conn_id: int) -> None:
        buf = b""
        last_response_at: Optional[float] = None
        try:
            conn.settimeout(REQUEST_READ_TIMEOUT_S)
            while not self._stopping.is_set():
                try:
                    req, buf = _read_request(conn, buf, conn_id, on_head=self._record_head)
                except _PeerGone as gone:
                    if not self._stopping.is_set():
                        self._record_cut(gone.request, gone.kind, gone.body_bytes)
                    return
                if req is None:
                    break
                self._record(req)
                if (self.stale_after_ms is not None and last_response_at is not None
                        and (req.received_at - last_response_at) * 1000 > self.stale_after_ms):
                    with self._lock:
                        self.stale_resets += 1
                    _rst_close(conn)
                    return
                action = self._choose(req)
                keep = self._act(conn, req, action)
                last_response_at = time.monotonic()
                if not keep:
                    return
        except (OSError, ValueError):
            pass

    def _act(self, conn: socket.socket, req: Request, action: Action) -> bool:
        """Performs one action; returns whether the connection stays open."""
        kind = action.get("action", "respond")
        delay = action.get("delay_ms") or 0
        if delay:
            # Sleep in slices so stop() is honoured; detect a peer that went away meanwhile.
            end = time.monotonic() + delay / 1000
            while time.monotonic() < end and not self._stopping.is_set():
                time.sleep(min(0.02, max(0.0, end - time.monotonic())))
        if kind == "reset_before_headers":
            _rst_close(conn)
            return False
        if kind == "close":
            conn.close()
            return False
        if kind == "execute_then_reset":
            # The work is done (counted before the delay, as a server commits before it answers);
            # then the connection dies without an answer.
            self._record_execution(req)
            _rst_close(conn)
            return False
        self._record_execution(req)
        status = int(action.get("status", 200))
        body = _bytes(action.get("body", ""))
        prefix = b""
        if kind == "reset_mid_body":
            prefix = _bytes(action.get("body_prefix", body[: max(1, len(body) // 2)]))
            if len(body) <= len(prefix):
                body = prefix + b"-" * 64  # announce more than will ever arrive
        headers = action.get("headers") or {}
        pairs = list(headers.items()) if isinstance(headers, dict) else [tuple(p) for p in headers]
        head = [f"HTTP/1.1 {status} {_reason(status)}"]
        names = {k.lower() for k, _ in pairs}
        for k, v in pairs:
            head.append(f"{k}: {v}")
        chunked = bool(action.get("chunked")) and kind == "respond"
        if chunked:
            if "transfer-encoding" not in names:
                head.append("transfer-encoding: chunked")
            size = max(1, int(action.get("chunk_size", 4)))
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                            for i in range(0, len(body), size)) + b"0\r\n\r\n"
        elif "content-length" not in names:
            head.append(f"content-length: {len(body)}")
        wire_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if kind == "reset_mid_body":
            conn.sendall(wire_head + prefix)
            time.sleep(0.05)  # let the headers and prefix leave before the RST
            _rst_close(conn)
            return False
        if req.method == "HEAD":
            conn.sendall(wire_head)
        else:
            conn.sendall(wire_head + body)
        return True


def _bytes(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _reason(status: int) -> str:
    return {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
            409: "Conflict", 422: "Unprocessable Content", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")


class _PeerGone(Exception):
    """The proxy closed or reset the connection while a request was incomplete (`request` is
    None inside the head) or, `kind` "idle_close" / "idle_reset", between requests."""

    def __init__(self, kind: str, request: Optional[Request] = None, body_bytes: int = 0):
        super().__init__(kind)
        self.kind, self.request, self.body_bytes = kind, request, body_bytes


def _recv(conn: socket.socket, req: Optional[Request], started: bool, body_bytes: int = 0) -> bytes:
    """One recv; a FIN or an RST from the peer raises _PeerGone saying where the request was
    (`started`: some bytes of a request had arrived)."""
    try:
        chunk = conn.recv(65536)
    except ConnectionResetError:
        raise _PeerGone("reset" if started else "idle_reset", req, body_bytes) from None
    if not chunk:
        raise _PeerGone("close" if started else "idle_close", req, body_bytes)
    return chunk


def _read_request(conn: socket.socket, buf: bytes, conn_id: int,
                  on_head: Optional[Callable[[Request], None]] = None):
    """Reads one request (headers + Content-Length or chunked body). Returns (None, b"") when the
    peer closes between requests; raises _PeerGone when it closes or resets mid-request (and, with
    `on_head`, between requests too, so the idle close is counted). `on_head(request)` is called
    as soon as the head is in, with an empty body."""
    try:
        while b"\r\n\r\n" not in buf:
            if len(buf) > MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            buf += _recv(conn, None, bool(buf))
    except _PeerGone as gone:
        if on_head is None and gone.kind.startswith("idle"):
            return None, b""
        raise
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    raw_headers = []
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        raw_headers.append((name.strip(), value.strip()))
        headers[name.strip().lower()] = value.strip()
    req = Request(method, path, headers, raw_headers, b"", conn_id)
    if on_head is not None:
        on_head(req)
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buf:
                buf += _recv(conn, req, True, len(body))
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += _recv(conn, req, True, len(body) + len(buf))
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
            if len(body) > MAX_BODY_BYTES:
                raise ValueError("body too large")
    else:
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError("body too large")
        while len(buf) < length:
            buf += _recv(conn, req, True, len(buf))
        body, buf = buf[:length], buf[length:]
    req.body = body
    req.received_at = time.monotonic()  # an attempt is timed when the whole request is in
    return req, buf


class DeadPort:
    """A loopback port where connects are refused: bound, never listening, kept until close()."""

    def __init__(self):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]

    def close(self):
        self._sock.close()
