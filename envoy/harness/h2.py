"""HTTP/2 (h2c, prior knowledge) pieces for the real-Envoy suite, on the `h2` package and raw
loopback sockets: a chaos h2 upstream that can refuse or reset individual streams, a one-shot h2c
client, and an h2c client that aborts its request (RST_STREAM or connection close).

The chaos upstream keeps `harness.upstream.ChaosUpstream`'s conventions: behaviour per attempt
from a plan registered for the request's `x-scenario-request` tag (or path), attempts beyond the
plan repeat its last entry. An *attempt* here is a stream whose request headers arrived (a
refused stream counts: the request reached the server, which declined it); so is a *head*, and a
stream Envoy reset (RST_STREAM) before its request was complete is a *cut* (`PlannedUpstream`'s
`heads` / `cuts` accessors). Only a stream it answered (`respond`) is an *execution*
(`executions` / `key_executions`): a refused or reset stream was not processed.

Actions:
  {"action": "respond", "status": 200, "headers": {...}, "body": "ok", "delay_ms": 0}
  {"action": "refuse_stream"}        RST_STREAM(REFUSED_STREAM) as soon as the headers arrive
  {"action": "reset_stream", "error_code": "INTERNAL_ERROR", "delay_ms": 0}
      read the whole request (body included), then RST_STREAM with that code (name or number)
  {"action": "goaway", "error_code": "NO_ERROR"}   GOAWAY (last stream = this one - 2), close
"""

from __future__ import annotations

import select
import socket
import time
from typing import Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .client import Response
from .upstream import PlannedUpstream, Request

MAX_BODY_BYTES = 16 * 1024 * 1024


def error_code(value) -> int:
    if isinstance(value, int):
        return value
    return int(h2.errors.ErrorCodes[str(value).upper()])


class _Stream:
    def __init__(self, stream_id: int, headers: list, conn_id: int):
        self.id = stream_id
        self.raw_headers = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = b""
        self.conn_id = conn_id
        self.action: Optional[dict] = None
        self.done = False  # answered, reset by us, or reset by the peer


class ChaosH2Upstream(PlannedUpstream):
    """The h2c chaos upstream (see the module doc); plans and counting are `PlannedUpstream`'s."""

    def __init__(self, default: Optional[dict] = None, name: str = "chaos-h2"):
        super().__init__(default, name, backlog=128)
        self.resets_sent: list = []       # (tag, error code name)
        self.resets_received: list = []   # (tag, error code name): Envoy cancelled a stream

    def _serve(self, sock: socket.socket, conn_id: int) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False))
        conn.initiate_connection()
        streams: dict = {}
        timers: list = []  # (due, stream_id)
        try:
            sock.sendall(conn.data_to_send())
            while not self._stopping.is_set():
                now = time.monotonic()
                wait = 0.2
                if timers:
                    wait = max(0.0, min(wait, min(d for d, _ in timers) - now))
                readable, _, _ = select.select([sock], [], [], wait)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        return
                    for ev in events:
                        if not self._on_event(conn, ev, streams, timers, conn_id):
                            sock.sendall(conn.data_to_send())
                            return
                now = time.monotonic()
                due = [t for t in timers if t[0] <= now]
                timers[:] = [t for t in timers if t[0] > now]
                for _, sid in due:
                    st = streams.get(sid)
                    if st is not None and not st.done:
                        self._act(conn, st)
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except OSError:
            return

    def _on_event(self, conn, ev, streams: dict, timers: list, conn_id: int) -> bool:
        """Returns False when the connection should be closed."""
        if isinstance(ev, h2.events.RequestReceived):
            st = _Stream(ev.stream_id, list(ev.headers), conn_id)
            streams[ev.stream_id] = st
            st.record = Request(st.headers.get(":method", ""), st.headers.get(":path", ""),
                                st.headers, st.raw_headers, b"", conn_id)
            self._record_head(st.record)
            self._record(st.record)
            st.action = self._choose(st.record)
            kind = st.action.get("action")
            if kind == "refuse_stream":
                self._reset(conn, st, "REFUSED_STREAM")
            elif kind == "goaway":
                conn.close_connection(error_code=error_code(st.action.get("error_code", 0)),
                                      last_stream_id=max(0, ev.stream_id - 2))
                return False
            if ev.stream_ended is not None:
                self._request_complete(conn, st, timers)
        elif isinstance(ev, h2.events.DataReceived):
            st = streams.get(ev.stream_id)
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if st is not None and not st.done and len(st.body) < MAX_BODY_BYTES:
                st.body += ev.data
                st.record.body = st.body
            if st is not None and ev.stream_ended is not None:
                self._request_complete(conn, st, timers)
        elif isinstance(ev, h2.events.StreamEnded):
            st = streams.get(ev.stream_id)
            if st is not None and not getattr(st, "completed", False):
                self._request_complete(conn, st, timers)
        elif isinstance(ev, h2.events.StreamReset):
            st = streams.get(ev.stream_id)
            if st is not None and not st.done:
                st.done = True
                with self._lock:
                    self.resets_received.append((st.headers.get("x-scenario-request"),
                                                 _code_name(ev.error_code)))
                if not getattr(st, "completed", False):
                    self._record_cut(st.record, "reset", len(st.body))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            return False
        return True

    def _request_complete(self, conn, st: _Stream, timers: list) -> None:
        if getattr(st, "completed", False):
            return
        st.completed = True
        if st.done:
            return
        delay = float(st.action.get("delay_ms", 0)) / 1000
        if delay > 0:
            timers.append((time.monotonic() + delay, st.id))
        else:
            self._act(conn, st)

    def _act(self, conn, st: _Stream) -> None:
        kind = st.action.get("action", "respond")
        try:
            if kind == "reset_stream":
                self._reset(conn, st, st.action.get("error_code", "INTERNAL_ERROR"))
            elif kind == "respond":
                self._record_execution(st.record)
                body = st.action.get("body", "ok")
                body = body if isinstance(body, bytes) else str(body).encode()
                headers = [(":status", str(st.action.get("status", 200))),
                           ("content-length", str(len(body)))]
                headers += [(k.lower(), str(v)) for k, v in (st.action.get("headers") or {}).items()]
                end = st.headers.get(":method") == "HEAD" or not body
                conn.send_headers(st.id, headers, end_stream=end)
                if not end:
                    conn.send_data(st.id, body, end_stream=True)
                st.done = True
            else:
                raise ValueError(f"unknown h2 action {kind!r}")
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            st.done = True

    def _reset(self, conn, st: _Stream, code) -> None:
        st.done = True
        try:
            conn.reset_stream(st.id, error_code=error_code(code))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        with self._lock:
            self.resets_sent.append((st.headers.get("x-scenario-request"),
                                     _code_name(error_code(code))))


def _code_name(code) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


# -- downstream h2c clients ---------------------------------------------------------------------
class H2Client:
    """One h2c (prior knowledge) connection to Envoy; requests on successive streams."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.closed_by_peer = False
        self._resp: dict = {}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, method: str, path: str, headers: Optional[dict] = None,
             body: bytes | str | None = None) -> int:
        if isinstance(body, str):
            body = body.encode()
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "http"),
                (":authority", "localhost")]
        hdrs += [(k.lower(), str(v)) for k, v in (headers or {}).items()]
        if body:
            hdrs.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, hdrs, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self._resp[sid] = Response()
        self._resp[sid]._t0 = time.monotonic()
        self._resp[sid]._done = False
        return sid

    def pump(self, until: float) -> None:
        """Reads and handles frames until `until` (monotonic) or the peer closes."""
        while time.monotonic() < until and not self.closed_by_peer:
            self.sock.settimeout(max(0.01, until - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            except OSError as e:
                self.closed_by_peer = True
                for r in self._resp.values():
                    if not r._done:
                        r.error, r._done = f"{type(e).__name__}: {e}", True
                return
            if not data:
                self.closed_by_peer = True
                for r in self._resp.values():
                    if not r._done:
                        r.error, r._done = "connection closed", True
                return
            for ev in self.conn.receive_data(data):
                r = self._resp.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and r is not None:
                    r.headers = {k: v for k, v in ev.headers if not k.startswith(":")}
                    r.status = int(dict(ev.headers)[":status"])
                elif isinstance(ev, h2.events.DataReceived) and r is not None:
                    r.body += ev.data
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                    r._done = True
                elif isinstance(ev, h2.events.StreamReset) and r is not None:
                    r.error, r._done = f"RST_STREAM {_code_name(ev.error_code)}", True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.closed_by_peer = True
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
            if all(x._done for x in self._resp.values()):
                return

    def wait(self, sid: int, timeout: Optional[float] = None) -> Response:
        deadline = time.monotonic() + (timeout or self.timeout)
        r = self._resp[sid]
        while not r._done and time.monotonic() < deadline and not self.closed_by_peer:
            self.pump(deadline)
        if not r._done and r.error is None:
            r.error = "timeout"
        r.elapsed_s = time.monotonic() - r._t0
        return r

    def request(self, method: str, path: str, headers: Optional[dict] = None,
                body: bytes | str | None = None, timeout: Optional[float] = None) -> Response:
        return self.wait(self.send(method, path, headers, body), timeout)

    def peek(self, sid: int) -> Response:
        """What arrived so far on a stream (no waiting)."""
        return self._resp[sid]

    def cancel(self, sid: int, code="CANCEL") -> None:
        self.conn.reset_stream(sid, error_code=error_code(code))
        self.sock.sendall(self.conn.data_to_send())
        self._resp[sid]._done = True


def h2_request(port: int, method: str, path: str, headers: Optional[dict] = None,
               body: bytes | str | None = None, timeout: float = 10.0) -> Response:
    with H2Client(port, timeout=timeout) as c:
        return c.request(method, path, headers, body)


def h2_aborting_request(port: int, method: str, path: str, headers: Optional[dict] = None,
                        body: bytes | str | None = None, abort_after_ms: int = 200,
                        how: str = "rst_stream") -> Response:
    """Sends a request on a fresh h2c connection, waits abort_after_ms, then either
    RST_STREAM(CANCEL)s the stream and closes the connection cleanly a moment later
    (how="rst_stream") or closes the TCP connection without a word (how="close"). Returns what
    arrived before the abort."""
    c = H2Client(port)
    try:
        sid = c.send(method, path, headers, body)
        c.pump(time.monotonic() + abort_after_ms / 1000)
        r = c._resp[sid]
        if how == "rst_stream":
            if not r._done:
                c.cancel(sid)
            c.pump(time.monotonic() + 0.1)
        elif how != "close":
            raise ValueError(how)
        return r
    finally:
        c.close()
