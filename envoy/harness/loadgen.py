"""A fast keep-alive load generator for loopback (raw sockets, one process per invocation so it
does not share a GIL with the in-process chaos upstream). Bounded in count and time.

  python -m harness.loadgen --port P --count N --connections C --method POST --path /p \
      [--key-prefix k-] [--body x] [--header 'name: value'] [--deadline-s 300]
Prints one JSON line: {"sent", "statuses", "errors", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time


def _read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v.strip())
        elif k == b"connection" and v.strip().lower() == b"close":
            close = True
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        buf += chunk
    return status, buf[length:], close


def run(port, count, connections, method, path, key_prefix, body, headers, deadline_s, key_offset=0):
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "statuses": {}, "errors": 0}
    stop_at = time.monotonic() + deadline_s
    body_b = body.encode()
    extra = "".join(f"{h}\r\n" for h in headers)

    def worker():
        sock, buf = None, b""
        while time.monotonic() < stop_at:
            with lock:
                i = state["next"]
                if i >= count:
                    break
                state["next"] += 1
            key = f"idempotency-key: {key_prefix}{i + key_offset}\r\n" if key_prefix is not None else ""
            req = (f"{method} {path} HTTP/1.1\r\nhost: localhost\r\n{key}{extra}"
                   f"content-length: {len(body_b)}\r\n\r\n").encode() + body_b
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                    buf = b""
                sock.sendall(req)
                status, buf, close = _read_response(sock, buf)
                with lock:
                    state["sent"] += 1
                    state["statuses"][status] = state["statuses"].get(status, 0) + 1
                if close:
                    sock.close()
                    sock = None
            except OSError:
                with lock:
                    state["sent"] += 1
                    state["errors"] += 1
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=deadline_s + 30)
    return {"sent": state["sent"], "statuses": state["statuses"], "errors": state["errors"],
            "seconds": round(time.monotonic() - t0, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--method", default="GET")
    p.add_argument("--path", default="/")
    p.add_argument("--key-prefix", default=None)
    p.add_argument("--key-offset", type=int, default=0)
    p.add_argument("--body", default="")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--deadline-s", type=float, default=300)
    a = p.parse_args()
    print(json.dumps(run(a.port, a.count, a.connections, a.method, a.path, a.key_prefix, a.body,
                         a.header, a.deadline_s, a.key_offset)))


if __name__ == "__main__":
    main()
