#!/usr/bin/env python3
"""The benchmark's realistic upstream: HTTP/1.1 keep-alive on loopback that answers every request
`200 ok` after a fixed service time (default 2 ms), spent waiting (a timer), not computing.

One asyncio process, raw protocol (no HTTP library): it reads a request's head and its
`content-length` body, then answers after the delay; requests on one connection are answered in
order. bench/bench.py runs it as its own process (its CPU is reported apart from Envoy's) and
measures it directly (the `U` run): its p50 must be the delay and its req/s connections / delay,
or it is saturated. (Envoy's own fault filter is not used for this: its fixed 1, 2 and 5 ms
delays measured p50 3.8, 4.5 and 8.0 ms with one connection on the 2-core machine where an epoll
wait of 2 ms took 2.1 ms.)

  python bench/slow_backend.py --port P [--delay-ms 2]
Prints `ready PORT` once listening; runs until SIGTERM.
"""

import argparse
import asyncio
import signal

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n"


class Backend(asyncio.Protocol):
    def __init__(self, delay):
        self.delay = delay
        self.buf = b""
        self.transport = None
        self.queue = []  # answers still waiting, in request order
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            slot = [False]
            self.queue.append(slot)
            self.loop.call_later(self.delay, self.ready, slot)

    def ready(self, slot):
        slot[0] = True
        while self.queue and self.queue[0][0]:
            self.queue.pop(0)
            if not self.transport.is_closing():
                self.transport.write(RESPONSE)

    def connection_lost(self, exc):
        self.queue.clear()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=2.0)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Backend(args.delay_ms / 1000), "127.0.0.1",
                                      args.port, backlog=512)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    print(f"ready {args.port}", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
