#!/usr/bin/env python3
"""resetguard demo: a real Envoy in front of a local upstream that resets ~30% of requests, without
the filter, with it, and with it plus Idempotency-Key on the POSTs, side by side. Starts everything itself, prints a before/after table, stops
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


KEYED_CONFIG = {"idempotency": {"retry_keyed_requests": True}}


def run_side(side: str, args) -> dict:
    """`side` is "without" (plain Envoy), "with" (resetguard defaults) or "keyed" (resetguard with
    idempotency keys: POSTs carry an Idempotency-Key, so a reset POST is retried, and re-sending
    the same POSTs replays the stored responses without reaching the upstream)."""
    up = ChaosUpstream(default=flaky(args.reset_ratio, args.seed), name="demo-upstream").start()
    dead = DeadPort()
    kw = dict(upstream_port=up.port, dead_port=dead.port, concurrency=2, name=f"demo-{side}")
    if side == "without":
        envoy = Envoy(template="no-filter.yaml", **kw)
    else:
        envoy = Envoy(plugin_config=KEYED_CONFIG if side == "keyed" else {}, **kw)
    keyed = side == "keyed"

    def post(i):
        headers = {"idempotency-key": f"order-{i}"} if keyed else {}
        return ("POST", f"/orders/{100000 + i}", headers, b'{"qty":1}')

    try:
        envoy.start()
        gets = client.load(envoy.port, args.gets, threads=4,
                           make=lambda i: ("GET", f"/items/{i}", {}, None), deadline_s=60)
        posts = client.load(envoy.port, args.posts, threads=2, make=post, deadline_s=60)
        result = {
            "get_errors": gets.non_2xx + gets.error_count, "get_ok": gets.statuses.get(200, 0),
            "post_errors": posts.non_2xx + posts.error_count, "post_ok": posts.statuses.get(200, 0),
        }
        if keyed:
            # The client "retries" every POST (as after a timeout): replayed, not re-executed.
            executed = up.total_attempts
            again = client.load(envoy.port, args.posts, threads=2, make=post, deadline_s=60)
            result["resent_ok"] = again.statuses.get(200, 0)
            result["resent_upstream_attempts"] = up.total_attempts - executed
        time.sleep(0.2)
        stats = envoy.stats("cluster.upstream.upstream_rq_retry$")
        result.update({
            "upstream_attempts": up.total_attempts,
            "upstream_rq_retry": stats.get("cluster.upstream.upstream_rq_retry", 0),
            "filter": {k: v for k, v in envoy.filter_counters().items() if v} if side != "without" else {},
        })
        return result
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
        sides = {side: run_side(side, args) for side in ("without", "with", "keyed")}
    finally:
        stop_all()
    without, with_, keyed = sides["without"], sides["with"], sides["keyed"]
    rows = [
        ("GET requests sent", args.gets, args.gets, args.gets),
        ("  GET errors seen by the client", without["get_errors"], with_["get_errors"], keyed["get_errors"]),
        ("POST requests sent", args.posts, args.posts, args.posts),
        ("  POST errors seen by the client", without["post_errors"], with_["post_errors"], keyed["post_errors"]),
        ("upstream attempts", without["upstream_attempts"], with_["upstream_attempts"], keyed["upstream_attempts"]),
        ("Envoy retries (upstream_rq_retry)", without["upstream_rq_retry"], with_["upstream_rq_retry"],
         keyed["upstream_rq_retry"]),
    ]
    w = max(len(r[0]) for r in rows) + 2
    print(f"{'':<{w}}{'without filter':>16}{'with resetguard':>18}{'+ Idempotency-Key':>20}")
    for label, a, b, c in rows:
        print(f"{label:<{w}}{a:>16}{b:>18}{c:>20}")
    print(f"\nWith keys, the client then re-sent all {args.posts} POSTs: {keyed['resent_ok']} answered 200 "
          f"from the edge's store\n(Idempotent-Replayed: true), {keyed['resent_upstream_attempts']} reached "
          "the upstream.")
    print("\nresetguard counters, Idempotency-Key run (Envoy /stats, shown as wasmcustom.resetguard.*):")
    for k, v in sorted(keyed["filter"].items()):
        print(f"  {k:<42}{v:>6}")
    print("\nGETs are idempotent: the filter arms Envoy's retry on reset, so the client never sees "
          "the RST.\nPOSTs that reached the upstream are not retried (they may have been applied, "
          "RFC 9110 §9.2.2);\nonly failures that prove the request was never sent (connect failure, "
          "refused stream) are.\nA POST with an Idempotency-Key is safe to retry (retry_keyed_requests): "
          "the edge runs it upstream\nat most once per key and replays the stored response to a repeat.")
    record("demo", {"args": vars(args), "without_filter": without, "with_filter": with_,
                    "with_idempotency_keys": keyed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
