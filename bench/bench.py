#!/usr/bin/env python3
"""Benchmarks resetguard against plain Envoy in the same run, on loopback.

One Envoy process serves four listeners: `plain` (no filter), `filtered` (resetguard with its
defaults), `keyed` (resetguard with idempotency enforcement) and `backend` (a direct_response the
other three route to, so the upstream costs the same for all). wrk drives each front listener in
alternating rounds; the report gives each variant's throughput and latency as a ratio to `plain`.

Usage: .venv/bin/python bench/bench.py [--seconds 10] [--rounds 3] [--connections 16]
Writes bench/results.json and bench/REPORT.md.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WASM = Path(os.environ.get("RESETGUARD_WASM", ROOT / "target/wasm32-wasip1/release/resetguard.wasm"))
ENVOY = Path(os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy"))

# Short TTL so a long run stays below capacity (rate x ttl entries live at once); many shards keep
# each shard's index small, as an operator sizing for throughput would.
KEYED_CONFIG = {"idempotency": {"mode": "enforce", "max_entries": 200000, "shards": 2048,
                                "ttl_seconds": 5}}

# wrk scripts: an unkeyed POST, and a POST with a fresh Idempotency-Key each time.
POST_LUA = """
math.randomseed(os.time())
wrk.method = "POST"
wrk.body = '{"amount": 10}'
wrk.headers["content-type"] = "application/json"
"""
REPLAY_POST_LUA = POST_LUA + """
wrk.headers["idempotency-key"] = "bench-replay-" .. tostring(math.random(1, 1e9))
"""
KEYED_POST_LUA = POST_LUA + """
local n = 0
local tag = tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  wrk.headers["idempotency-key"] = tag .. "-" .. n
  return wrk.format()
end
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(name, configuration):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "resetguard",
                "vm_config": {
                    "vm_id": "resetguard",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(WASM)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(configuration),
                },
            },
        },
    }


ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def listener(name, port, filters, route_action):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [dict({"match": {"prefix": "/"}}, **route_action)],
                }]},
                "http_filters": filters + [ROUTER],
            },
        }]}],
    }


def bootstrap(ports, admin_port):
    to_backend = {"route": {"cluster": "backend"}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                listener("plain", ports["plain"], [], to_backend),
                listener("filtered", ports["filtered"], [wasm_filter("resetguard", {})], to_backend),
                listener("keyed", ports["keyed"], [wasm_filter("resetguard-keyed", KEYED_CONFIG)], to_backend),
                listener("backend", ports["backend"], [], {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}),
            ],
            "clusters": [{
                "name": "backend", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["backend"]}}}}]}]},
            }],
        },
    }


def wait_ready(admin_port, proc, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("envoy exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("envoy did not become ready")


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def ms(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return None
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    return {"rps": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


def run_wrk(port, seconds, connections, script=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/bench")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return parse_wrk(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    for tool in ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/bootstrap")
    if not WASM.exists():
        sys.exit(f"{WASM} is missing: cargo build --release --target wasm32-wasip1 -p resetguard-filter")

    ports = {name: free_port() for name in ("plain", "filtered", "keyed", "backend")}
    admin = free_port()
    work = Path(tempfile.mkdtemp(prefix="resetguard-bench-"))
    (work / "envoy.json").write_text(json.dumps(bootstrap(ports, admin)))
    (work / "post.lua").write_text(POST_LUA)
    (work / "keyed.lua").write_text(KEYED_POST_LUA)
    (work / "replay.lua").write_text(REPLAY_POST_LUA)
    log = open(work / "envoy.log", "w")
    # One worker thread: the comparison is per-request CPU, and wrk needs the other core.
    proc = subprocess.Popen([str(ENVOY), "-c", str(work / "envoy.json"), "--concurrency", "1",
                             "--use-dynamic-base-id", "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(admin, proc)
        variants = [
            ("GET plain", "plain", None), ("GET filtered", "filtered", None),
            ("POST plain", "plain", "post.lua"), ("POST filtered", "filtered", "post.lua"),
            ("POST keyed (unique keys)", "keyed", "keyed.lua"),
            ("POST keyed (replays of one key)", "keyed", "replay.lua"),
        ]
        samples = {name: [] for name, _, _ in variants}
        for _ in range(args.rounds):
            for name, listener_name, script in variants:
                samples[name].append(run_wrk(ports[listener_name], args.seconds, args.connections,
                                             str(work / script) if script else None))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if proc.returncode == 0 or proc.returncode == -signal.SIGTERM:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"envoy exited with {proc.returncode}; its files are in {work}", file=sys.stderr)

    def median(values):
        values = sorted(v for v in values if v is not None)
        return values[len(values) // 2] if values else None

    summary = {}
    for name, runs in samples.items():
        summary[name] = {k: median([r[k] for r in runs]) for k in ("rps", "p50_ms", "p99_ms")}
        summary[name]["non_2xx"] = sum(r["non_2xx"] for r in runs)
    baseline = {"GET": summary["GET plain"], "POST": summary["POST plain"]}
    rows = []
    for name, s in summary.items():
        base = baseline[name.split()[0]]
        s["rps_ratio"] = s["rps"] / base["rps"]
        s["p50_ratio"] = (s["p50_ms"] / base["p50_ms"]) if s["p50_ms"] and base["p50_ms"] else None
        rows.append(f"| {name} | {s['rps']:.0f} | {s['rps_ratio']:.3f} | {s['p50_ms']:.3f} | "
                    f"{s['p99_ms']:.3f} | {s['non_2xx']} |")
    result = {"seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
              "envoy": subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout.strip(),
              "wasm_bytes": WASM.stat().st_size, "summary": summary, "raw": samples}
    (ROOT / "bench/results.json").write_text(json.dumps(result, indent=2) + "\n")
    table = "\n".join([
        "| variant | req/s (median) | ratio to plain | p50 ms | p99 ms | non-2xx |",
        "| --- | --- | --- | --- | --- | --- |", *rows])
    print(table)
    (ROOT / "bench/REPORT.md").write_text(
        "# resetguard benchmark\n\n"
        f"Generated by `bench/bench.py --seconds {args.seconds} --rounds {args.rounds} "
        f"--connections {args.connections}` on {time.strftime('%Y-%m-%d')}: one Envoy "
        f"(`--concurrency 1`, {result['envoy'].split()[-1]}), wrk with one thread and "
        f"{args.connections} connections on loopback, the medians of {args.rounds} alternating "
        f"rounds of {args.seconds} s per variant. The .wasm was {result['wasm_bytes']:,} bytes. "
        "Ratios compare with `plain` (no filter) of the same method in the same run.\n\n"
        + table + "\n")
    return table


if __name__ == "__main__":
    main()
