#!/usr/bin/env python3
"""resetguard demo: a real Envoy in front of a local upstream that resets ~30% of requests, without
the filter, with it, and with it plus Idempotency-Key on the POSTs, side by side. Then the fleet
case: two proxies, a keyed POST whose answer is lost, retried through the other proxy, with each
proxy's own store and with the fleet-wide store on etcd (started here on loopback). Starts
everything itself, prints the tables, stops everything and exits.

Run: .venv/bin/python envoy/demo.py [--gets 200] [--posts 20] [--reset-ratio 0.3] [--no-fleet]
(scripts/demo builds the filter and installs Envoy and etcd first.)
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import client, paths  # noqa: E402
from harness.envoy import Envoy, stop_all  # noqa: E402
from harness.etcd import Etcd, require_etcd  # noqa: E402
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


# -- the fleet: two proxies, one lost answer ----------------------------------------------------
FLEET_HOST = "shop.example"  # both proxies behind one name, as behind a load balancer
FLEET_IDEMPOTENCY = {"path_prefixes": ["/orders/"]}
FLEET_HEADERS = {"authorization": "Bearer demo-client", "content-type": "application/json"}


def fleet_upstream(req, _attempt):
    """Creates an order per execution (a second execution is a second order): `lost-answer`
    keys are answered 201; `reset` keys are executed, then the connection is reset."""
    if (req.key or "").startswith("reset"):
        return {"action": "execute_then_reset"}
    order = fleet_upstream.orders = getattr(fleet_upstream, "orders", 0) + 1
    return {"action": "respond", "status": 201, "delay_ms": 50,
            "headers": {"content-type": "application/json"},
            "body": json.dumps({"order": order, "state": "created"})}


def post_and_vanish(port: int, path: str, key: str, wait_s: float) -> None:
    """Sends the keyed POST and never reads the answer: the proxy delivers it into a connection
    nobody reads (a client that crashed, a dropped mobile link), which is then closed."""
    head = [f"POST {path} HTTP/1.1", f"host: {FLEET_HOST}", f"idempotency-key: {key}",
            *(f"{k}: {v}" for k, v in FLEET_HEADERS.items()), "content-length: 9"]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b'{"qty":1}')
        time.sleep(wait_s)
    finally:
        s.close()


def keyed_post(port: int, path: str, key: str) -> client.Response:
    headers = {"host": FLEET_HOST, "idempotency-key": key, **FLEET_HEADERS}
    return client.request(port, "POST", path, headers, b'{"qty":1}', timeout=10)


def retry_until_answered(port: int, path: str, key: str) -> client.Response:
    """The client's retry: a 409 in flight (the first proxy is still settling the key) is waited
    out for its Retry-After, then sent again."""
    for _ in range(5):
        r = keyed_post(port, path, key)
        problem = _problem_type(r)
        if not (r.status == 409 and problem.endswith("key-in-flight")):
            return r
        time.sleep(float(r.header("retry-after") or 1))
    return r


def _problem_type(r: client.Response) -> str:
    try:
        return json.loads(r.body).get("type", "")
    except (ValueError, AttributeError):
        return ""


def describe(r: client.Response) -> str:
    if r.error is not None:
        return "no answer"
    if r.status == 201:
        replayed = r.header("idempotent-replayed") == "true"
        order = json.loads(r.body).get("order")
        return f"201 order {order}" + (" (replayed)" if replayed else "")
    problem = _problem_type(r).rsplit(":", 1)[-1].removeprefix("idempotency-")
    return f"{r.status} {problem}".strip()


def run_fleet(args) -> dict:
    """The same two scenarios through two proxies with per-proxy stores, then through two proxies
    sharing etcd."""
    up = ChaosUpstream(default=fleet_upstream, name="demo-fleet-upstream").start()
    etcd = Etcd(1, name="demo-etcd").start()
    out = {}
    try:
        for store in ("local", "etcd"):
            idem = dict(FLEET_IDEMPOTENCY)
            kw = dict(upstream_port=up.port, concurrency=2)
            if store == "etcd":
                idem["store"] = {"backend": "etcd", "cluster": "etcd", "timeout_ms": 300}
                kw.update(template="resetguard-etcd.yaml", template_values=etcd.envoy_values())
            proxies = [Envoy(plugin_config={"idempotency": idem}, name=f"demo-{store}-{n}", **kw)
                       for n in (1, 2)]
            try:
                for e in proxies:
                    e.start()
                if store == "etcd":
                    for e in proxies:  # both leases granted on every worker
                        e.wait_for(lambda e=e: e.filter_counters().get(
                            "resetguard.store.leases_granted", 0) >= 6, timeout=10)
                one, two = (e.port for e in proxies)
                rows = {}
                # 1. The answer is lost on its way back; the client retries through proxy 2.
                key, path = f"lost-answer-{store}", f"/orders/{store}-1"
                post_and_vanish(one, path, key, wait_s=0.4)
                time.sleep(0.2)
                before = up.key_executions(key)
                retry = retry_until_answered(two, path, key)
                rows["lost"] = {"first": "201 sent, never read", "retry": describe(retry),
                                "executions": up.key_executions(key),
                                "retry_executed": up.key_executions(key) > before}
                # 2. The upstream executes, then the connection resets (Envoy answers 503).
                key, path = f"reset-{store}", f"/orders/{store}-2"
                first = keyed_post(one, path, key)
                time.sleep(0.2)
                before = up.key_executions(key)
                retry = retry_until_answered(two, path, key)
                rows["reset"] = {"first": describe(first) + " (reset after executing)",
                                 "retry": describe(retry),
                                 "executions": up.key_executions(key),
                                 "retry_executed": up.key_executions(key) > before}
                out[store] = rows
            finally:
                for e in proxies:
                    e.stop()
        out["etcd_keys"] = len(etcd.kvs("/resetguard/", prefix=True))
        return out
    finally:
        etcd.stop()
        up.stop()


def print_fleet(fleet: dict) -> None:
    local, etcd = fleet["local"], fleet["etcd"]
    print("\n\nThe fleet: two proxies behind one load balancer, each with resetguard "
          "(--concurrency 2).\nA keyed POST whose answer is lost is retried by the client; the "
          "balancer sends the retry to the other proxy.")
    def retry(row):
        return row["retry"] + (", EXECUTED AGAIN" if row["retry_executed"] else
                               ", not executed")

    rows = []
    for case, title in (("lost", "answer lost on its way back (the client never read it)"),
                        ("reset", "upstream executed, then the connection reset")):
        rows += [(title, "", ""),
                 ("  proxy 1 answered", local[case]["first"], etcd[case]["first"]),
                 ("  the retry, through proxy 2", retry(local[case]), retry(etcd[case])),
                 ("  upstream executions", str(local[case]["executions"]),
                  str(etcd[case]["executions"]))]
    w = max(len(r[0]) for r in rows) + 2
    head = "each proxy its own store"
    c = max(len(head), *(len(r[1]) for r in rows)) + 4
    print(f"\n{'':<{w}}{head:<{c}}fleet-wide store on etcd")
    for label, a, b in rows:
        print(f"{label:<{w}}{a:<{c}}{b}")
    print("\nWith each proxy's own store (the default, Envoy's shared data) proxy 2 has never "
          "seen the\nkey: the upstream runs the order a second time. With "
          "idempotency.store.backend etcd every\nproxy claims keys in one etcd cluster: the retry "
          "gets the stored response, or the 409 that\nsays the outcome is unknown, and the "
          "upstream ran it once.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gets", type=int, default=200)
    ap.add_argument("--posts", type=int, default=20)
    ap.add_argument("--reset-ratio", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-fleet", action="store_true",
                    help="skip the two-proxy case (which starts etcd)")
    args = ap.parse_args()
    try:
        paths.require_envoy()
        paths.require_wasm()
        if not args.no_fleet:
            require_etcd()
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"resetguard demo: Envoy 1.40 -> an upstream that resets {args.reset_ratio:.0%} of "
          f"requests before answering (TCP RST).\n{args.gets} GETs and {args.posts} POSTs through "
          f"each Envoy, loopback only.\n")
    try:
        sides = {side: run_side(side, args) for side in ("without", "with", "keyed")}
        fleet = None if args.no_fleet else run_fleet(args)
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
    if fleet is not None:
        print_fleet(fleet)
    record("demo", {"args": vars(args), "without_filter": without, "with_filter": with_,
                    "with_idempotency_keys": keyed, "fleet": fleet})
    return 0


if __name__ == "__main__":
    sys.exit(main())
