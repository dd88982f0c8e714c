#!/usr/bin/env python3
"""resetguard demo: a real Envoy in front of a local upstream that resets ~30% of requests, with
and without the filter, side by side. Starts everything itself, prints a before/after table, stops
everything and exits.

Run: .venv/bin/python envoy/demo.py [--gets 200] [--posts 20] [--reset-ratio 0.3]
(scripts/demo builds the filter first.)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import client, paths  # noqa: E402
from harness.envoy import Envoy, stop_all  # noqa: E402
from harness.results import record  # noqa: E402
from harness.upstream import ChaosUpstream, DeadPort  # noqa: E402


def flaky(ratio: float, seed: int):
    """Resets the first attempt of a seeded-random `ratio` of requests (as an upstream whose
    pooled connections go stale does); a retry on a fresh connection is answered."""
    def behaviour(req, attempt):
        n = int(req.path.rsplit("/", 1)[-1])
        if attempt == 0 and random.Random(seed * 1_000_003 + n).random() < ratio:
            return {"action": "reset_before_headers"}
        return {"action": "respond", "status": 200, "body": f"item {n}\n"}
    return behaviour


def run_side(with_filter: bool, args) -> dict:
    up = ChaosUpstream(default=flaky(args.reset_ratio, args.seed), name="demo-upstream").start()
    dead = DeadPort()
    kw = dict(upstream_port=up.port, dead_port=dead.port, concurrency=2,
              name="demo-with" if with_filter else "demo-without")
    envoy = Envoy(plugin_config={}, **kw) if with_filter else Envoy(template="no-filter.yaml", **kw)
    try:
        envoy.start()
        gets = client.load(envoy.port, args.gets, threads=4,
                           make=lambda i: ("GET", f"/items/{i}", {}, None), deadline_s=60)
        posts = client.load(envoy.port, args.posts, threads=2,
                            make=lambda i: ("POST", f"/orders/{100000 + i}", {}, b'{"qty":1}'),
                            deadline_s=60)
        time.sleep(0.2)
        stats = envoy.stats("cluster.upstream.upstream_rq_retry$")
        return {
            "get_errors": gets.non_2xx + gets.error_count, "get_ok": gets.statuses.get(200, 0),
            "post_errors": posts.non_2xx + posts.error_count, "post_ok": posts.statuses.get(200, 0),
            "upstream_attempts": up.total_attempts,
            "upstream_rq_retry": stats.get("cluster.upstream.upstream_rq_retry", 0),
            "filter": {k: v for k, v in envoy.filter_counters().items() if v} if with_filter else {},
        }
    finally:
        envoy.stop()
        up.stop()
        dead.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gets", type=int, default=200)
    ap.add_argument("--posts", type=int, default=20)
    ap.add_argument("--reset-ratio", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    try:
        paths.require_envoy()
        paths.require_wasm()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"resetguard demo: Envoy 1.40 -> an upstream that resets {args.reset_ratio:.0%} of "
          f"requests before answering (TCP RST).\n{args.gets} GETs and {args.posts} POSTs through "
          f"each Envoy, loopback only.\n")
    try:
        without = run_side(False, args)
        with_ = run_side(True, args)
    finally:
        stop_all()
    rows = [
        ("GET requests sent", args.gets, args.gets),
        ("  GET errors seen by the client", without["get_errors"], with_["get_errors"]),
        (f"POST requests sent", args.posts, args.posts),
        ("  POST errors seen by the client", without["post_errors"], with_["post_errors"]),
        ("upstream attempts", without["upstream_attempts"], with_["upstream_attempts"]),
        ("Envoy retries (upstream_rq_retry)", without["upstream_rq_retry"], with_["upstream_rq_retry"]),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print(f"{'':<{w}}{'without filter':>16}{'with resetguard':>18}")
    for label, a, b in rows:
        print(f"{label:<{w}}{a:>16}{b:>18}")
    print("\nresetguard counters (Envoy /stats, shown as wasmcustom.resetguard.*):")
    for k, v in sorted(with_["filter"].items()):
        print(f"  {k:<42}{v:>6}")
    print("\nGETs are idempotent: the filter arms Envoy's retry on reset, so the client never sees "
          "the RST.\nPOSTs that reached the upstream are not retried (they may have been applied, "
          "RFC 9110 §9.2.2);\nonly failures that prove the request was never sent (connect failure, "
          "refused stream) are.")
    record("demo", {"args": vars(args), "without_filter": without, "with_filter": with_})
    return 0


if __name__ == "__main__":
    sys.exit(main())
