"""Small HTTP/1.1 clients for the tests: one-shot and keep-alive requests that report errors as
data (a reset or a truncated body is an observation, not an exception), an aborting client, and
a bounded multi-threaded GET loop."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class Response:
    status: Optional[int] = None
    headers: dict = field(default_factory=dict)  # lower-case name -> value
    body: bytes = b""
    error: Optional[str] = None  # None: a complete response arrived
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 500

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())


class KeepAliveClient:
    """One HTTP/1.1 connection reused across requests (reconnects after an error or a close)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0):
        self.port, self.host, self.timeout = port, host, timeout
        self.conn: Optional[http.client.HTTPConnection] = None
        self.connections_opened = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.connections_opened += 1
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, headers: Optional[dict] = None,
                body: bytes | str | None = None) -> Response:
        headers = dict(headers or {})
        if isinstance(body, str):
            body = body.encode()
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        t0 = time.monotonic()
        resp = Response()
        try:
            conn = self._connection()
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            resp.status = r.status
            resp.headers = {k.lower(): v for k, v in r.getheaders()}
            try:
                resp.body = r.read()
            except http.client.IncompleteRead as e:
                resp.body = e.partial
                resp.error = f"truncated: {len(e.partial)} bytes of {e.expected} more expected"
                self.close()
            if r.will_close:
                self.close()
        except (ConnectionError, http.client.HTTPException, socket.timeout, OSError) as e:
            resp.error = f"{type(e).__name__}: {e}"
            self.close()
        resp.elapsed_s = time.monotonic() - t0
        return resp


def request(port: int, method: str, path: str, headers: Optional[dict] = None,
            body: bytes | str | None = None, timeout: float = 20.0) -> Response:
    c = KeepAliveClient(port, timeout=timeout)
    try:
        return c.request(method, path, headers, body)
    finally:
        c.close()


def aborting_request(port: int, method: str, path: str, headers: Optional[dict] = None,
                     body: bytes = b"", abort_after_ms: int = 200) -> Optional[bytes]:
    """Sends a request, waits abort_after_ms, then closes the connection. Returns whatever
    arrived before the abort (normally nothing)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        lines = [f"{method} {path} HTTP/1.1", "host: localhost"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        s.settimeout(abort_after_ms / 1000)
        got = b""
        try:
            got = s.recv(65536)
        except socket.timeout:
            pass
        return got
    finally:
        s.close()


@dataclass
class LoadResult:
    sent: int = 0
    statuses: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # client-visible errors (first ones kept)
    error_count: int = 0
    elapsed_s: float = 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)


def load(port: int, total: int, threads: int = 4,
         make: Callable[[int], tuple] = lambda i: ("GET", f"/load/{i}", {}, None),
         deadline_s: float = 120.0) -> LoadResult:
    """Sends `total` requests over `threads` keep-alive connections; bounded in count and time."""
    result = LoadResult()
    lock = threading.Lock()
    counter = iter(range(total))
    stop_at = time.monotonic() + deadline_s
    t0 = time.monotonic()

    def worker():
        c = KeepAliveClient(port)
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                method, path, headers, body = make(i)
                r = c.request(method, path, headers, body)
                with lock:
                    result.sent += 1
                    if r.error is not None:
                        result.error_count += 1
                        if len(result.errors) < 20:
                            result.errors.append(r.error)
                    else:
                        result.statuses[r.status] = result.statuses.get(r.status, 0) + 1
        finally:
            c.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=deadline_s + 30)
    result.elapsed_s = time.monotonic() - t0
    return result
