#!/usr/bin/env python3
"""Benchmarks resetguard against plain Envoy and an empty proxy-wasm filter, on loopback.

Throughput: one Envoy 1.40 (`--concurrency 1`, V8) serves five listeners: A `plain` (no wasm),
B `noop` (bench/noop-filter: an empty proxy-wasm filter, the host's floor), C `filtered`
(resetguard, default config), D `keyed` (resetguard enforcing Idempotency-Key) and `backend` (a
direct_response every other listener routes to, so the upstream costs the same for all). wrk
drives the variants in turn, A B C A B D D, round after round; the report quotes medians of the
rounds: req/s, p50/p99 latency, and the Envoy worker thread's CPU time per request (read from
/proc, less sensitive to a busy machine than req/s).

Retry effect: a second Envoy in front of a chaos upstream that resets 10% of requests (by request
number, first attempt only) before answering; N GETs through plain Envoy and through resetguard,
with Envoy's default retry circuit breaker (3 concurrent retries per cluster) and with it raised.

Also: the .wasm sizes, and the deterministic per-request cost recorded by the mock host
(bench/fuel-baseline.json, see host-tests/tests/suite/cost.rs).

Usage: scripts/bench [--quick] [--seconds 10] [--rounds 5] [--connections 16] [--out DIR]
A full run writes bench/results.json and bench/REPORT.md and rewrites the README block between
`<!-- bench:begin -->` and `<!-- bench:end -->` (unless --no-readme); --quick (1 s rounds, one
round, 1,000 retry-effect requests) writes to a temporary directory unless --out is given;
--render measures nothing and rewrites REPORT.md and the README block from bench/results.json
(e.g. after re-recording bench/fuel-baseline.json).
"""

import argparse
import json
import os
import platform
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
sys.path.insert(0, str(ROOT / "envoy"))
from harness.upstream import ChaosUpstream  # noqa: E402

WASM = Path(os.environ.get("RESETGUARD_WASM", ROOT / "target/wasm32-wasip1/release/resetguard.wasm"))
NOOP_WASM = Path(os.environ.get("NOOP_WASM", WASM.with_name("noop_filter.wasm")))
ENVOY = Path(os.environ.get("RESETGUARD_ENVOY", os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy")))
BUILD = "scripts/build-wasm"
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"

# Short TTL so a long run stays below capacity (rate x ttl entries live at once); many shards keep
# each shard's index small, as an operator sizing for throughput would.
KEYED_CONFIG = {"idempotency": {"mode": "enforce", "max_entries": 200000, "shards": 2048,
                                "ttl_seconds": 5}}

# wrk scripts: a POST with a fresh Idempotency-Key each time, and one key for the whole run.
POST_LUA = """
math.randomseed(os.time())
wrk.method = "POST"
wrk.body = '{"amount": 10}'
wrk.headers["content-type"] = "application/json"
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
REPLAY_POST_LUA = POST_LUA + """
wrk.headers["idempotency-key"] = "bench-replay-" .. tostring(math.random(1, 1e9))
"""
SCRIPTS = {"keyed.lua": KEYED_POST_LUA, "replay.lua": REPLAY_POST_LUA}

# (variant, request kind, listener, wrk script), in the order each round runs them.
RUNS = [
    ("A", "GET", "plain", None),
    ("B", "GET", "noop", None),
    ("C", "GET", "filtered", None),
    ("A", "POST keyed", "plain", "keyed.lua"),
    ("B", "POST keyed", "noop", "keyed.lua"),
    ("D", "POST keyed", "keyed", "keyed.lua"),
    ("D", "POST replay", "keyed", "replay.lua"),
]
LABELS = {
    ("A", "GET"): "A plain Envoy, GET",
    ("B", "GET"): "B empty wasm filter, GET",
    ("C", "GET"): "C resetguard (defaults), GET",
    ("A", "POST keyed"): "A plain Envoy, keyed POST",
    ("B", "POST keyed"): "B empty wasm filter, keyed POST",
    ("D", "POST keyed"): "D resetguard enforce, keyed POST (first execution)",
    ("D", "POST replay"): "D resetguard enforce, keyed POST replay",
}


# -- Envoy ----------------------------------------------------------------------------------------
def wasm_filter(name, path, vm_id, configuration):
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": vm_id,
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(path)}},
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


READ_WHOLE_BODY = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 1048576,
    },
}


def listener(name, filters, route_action):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
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


def cluster(name, port):
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Envoy:
    """One Envoy process with one worker; listeners bind port 0 and are read back from admin."""

    def __init__(self, work, name, listeners, clusters):
        self.work, self.name = work, name
        self.admin_path = work / f"{name}.admin"
        config = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": listeners, "clusters": clusters},
        }
        (work / f"{name}.json").write_text(json.dumps(config))
        self.log = open(work / f"{name}.log", "w")
        # One worker thread: the comparison is per-request CPU, and wrk needs the other core.
        self.proc = subprocess.Popen(
            [str(ENVOY), "-c", str(work / f"{name}.json"), "--concurrency", "1",
             "--use-dynamic-base-id", "--admin-address-path", str(self.admin_path),
             "-l", "warning"], stdout=self.log, stderr=subprocess.STDOUT)
        self.admin = self._wait_ready()
        listeners = json.loads(self._get("/listeners?format=json"))["listener_statuses"]
        self.ports = {s["name"]: s["local_address"]["socket_address"]["port_value"] for s in listeners}
        self.worker_tid = self._worker_tid()

    def _get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}{path}", timeout=5) as r:
            return r.read().decode()

    def _wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy {self.name} exited during start-up: see {self.work}")
            text = self.admin_path.read_text().strip() if self.admin_path.exists() else ""
            if text:
                self.admin = int(text.rsplit(":", 1)[1])
                try:
                    if self._get("/ready").strip() == "LIVE":
                        return self.admin
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy {self.name} did not become ready")

    def _worker_tid(self):
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            if (task / "comm").read_text().strip().startswith("wrk:worker"):
                return task.name
        return None

    def worker_cpu_ns(self):
        """CPU time the worker thread has run (schedstat: ns on CPU), or None if unavailable."""
        if self.worker_tid is None:
            return None
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.worker_tid}/schedstat").read_text()
            return int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stats(self, pattern):
        out = {}
        for line in self._get("/stats?filter=" + urllib.request.quote(pattern)).splitlines():
            name, _, value = line.rpartition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return self.proc.returncode in (0, -signal.SIGTERM)


def envoy_version():
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: (\S+)", out)
    return m.group(1) if m else out.strip()


# -- load -----------------------------------------------------------------------------------------
def parse_wrk(text):
    def ms(label):
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return None
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "requests": int(re.search(r"(\d+) requests in", text).group(1)),
            "p50_ms": ms("50%"), "p99_ms": ms("99%"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0}


def run_wrk(envoy, port, seconds, connections, script=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{port}/bench")
    before = envoy.worker_cpu_ns()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    after = envoy.worker_cpu_ns()
    result = parse_wrk(out)
    if before is not None and after is not None and result["requests"]:
        result["cpu_us"] = (after - before) / 1000 / result["requests"]
    return result


def run_throughput(work, args):
    for name, text in SCRIPTS.items():
        (work / name).write_text(text)
    to_backend = {"route": {"cluster": "backend"}}
    listeners = [
        listener("plain", [], to_backend),
        listener("noop", [wasm_filter("noop", NOOP_WASM, "noop", "")], to_backend),
        listener("filtered", [wasm_filter("resetguard", WASM, "resetguard", {})], to_backend),
        listener("keyed", [wasm_filter("resetguard-keyed", WASM, "resetguard", KEYED_CONFIG)], to_backend),
        # The buffer filter makes the backend read a POST's whole body before it answers: a
        # direct_response sent before the body arrives closes the upstream connection, and every
        # POST would then pay a new connection (measured: 12,697 connections for 12,697 POSTs).
        listener("backend", [READ_WHOLE_BODY],
                 {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}),
    ]
    # The backend listener's port is only known once Envoy runs: bind a fixed free port for it.
    backend_port = free_port()
    listeners[-1]["address"]["socket_address"]["port_value"] = backend_port
    envoy = Envoy(work, "bench", listeners, [cluster("backend", backend_port)])
    samples = {(v, kind): [] for v, kind, _, _ in RUNS}
    try:
        for r in range(args.rounds):
            for variant, kind, name, script in RUNS:
                sample = run_wrk(envoy, envoy.ports[name], args.seconds, args.connections,
                                 work / script if script else None)
                samples[(variant, kind)].append(sample)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{v} {k} {samples[(v, k)][-1]['rps']:.0f}/s" for v, k, _, _ in RUNS),
                file=sys.stderr)
    finally:
        clean = envoy.stop()
    return samples, clean


# -- retry effect ---------------------------------------------------------------------------------
def run_loadgen(port, count, connections):
    out = subprocess.run(
        [sys.executable, "-m", "harness.loadgen", "--port", str(port), "--count", str(count),
         "--connections", str(connections), "--method", "GET", "--path", "/retry-effect",
         "--key-prefix", "r-", "--deadline-s", "300"],
        cwd=str(ROOT / "envoy"), capture_output=True, text=True, check=True, timeout=330).stdout
    return json.loads(out.strip().splitlines()[-1])


# Envoy's default circuit breaker allows 3 concurrent retries per cluster: at a few thousand
# requests/s with 10% resets, most retries overflow it (`upstream_rq_retry_overflow`) and the
# client gets the 503. Operators behind resetguard raise it; the run shows both.
RAISED_BREAKER = {"thresholds": [{"priority": "DEFAULT", "max_retries": 1024}]}
RETRY_VARIANTS = [
    ("plain", "plain Envoy", "chaos"),
    ("filtered", "resetguard (defaults), Envoy's default retry breaker (3)", "chaos"),
    ("filtered_raised", "resetguard (defaults), retry breaker raised to 1024", "chaos_raised"),
]


def run_retry_effect(work, requests, connections=8):
    """Every tenth request (by number, carried in a header) is reset on its first attempt."""
    def behaviour(req, _index):
        number = int((req.key or "r-1").rsplit("-", 1)[1])
        if number % 10 == 0 and upstream.key_attempts(req.key) == 1:
            return {"action": "reset_before_headers"}
        return {"action": "respond", "status": 200, "body": "ok"}

    upstream = ChaosUpstream(default=behaviour, name="bench-chaos").start()
    resetguard = [wasm_filter("resetguard", WASM, "resetguard", {})]
    raised = dict(cluster("chaos_raised", upstream.port), circuit_breakers=RAISED_BREAKER)
    envoy = Envoy(work, "retry", [
        listener(name, resetguard if name != "plain" else [], {"route": {"cluster": to}})
        for name, _, to in RETRY_VARIANTS
    ], [cluster("chaos", upstream.port), raised])
    results = {}
    try:
        for name, label, to in RETRY_VARIANTS:
            upstream.reset_counts()
            before = envoy.stats(f"cluster.{to}.upstream_rq_retry")
            load = run_loadgen(envoy.ports[name], requests, connections)
            after = envoy.stats(f"cluster.{to}.upstream_rq_retry")
            delta = lambda stat: after.get(f"cluster.{to}.{stat}", 0) - before.get(f"cluster.{to}.{stat}", 0)  # noqa: E731
            statuses = {int(k): v for k, v in load["statuses"].items()}
            errors = load["errors"] + sum(v for k, v in statuses.items() if k >= 400)
            results[name] = {
                "label": label, "requests": load["sent"], "ok": statuses.get(200, 0),
                "client_errors": errors, "statuses": statuses,
                "upstream_attempts": upstream.total_attempts,
                "attempts_per_request": upstream.total_attempts / max(1, load["sent"]),
                "error_rate": errors / max(1, load["sent"]), "seconds": load["seconds"],
                "envoy_retries": delta("upstream_rq_retry"),
                "retry_overflow": delta("upstream_rq_retry_overflow"),
            }
    finally:
        clean = envoy.stop()
        upstream.stop()
    return results, clean


# -- summary --------------------------------------------------------------------------------------
def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(samples):
    summary = {}
    for key, runs in samples.items():
        s = {k: median([r.get(k) for r in runs]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
        s["non_2xx"] = sum(r["non_2xx"] for r in runs)
        s["socket_errors"] = sum(r["socket_errors"] for r in runs)
        rps = [r["rps"] for r in runs]
        s["spread"] = (max(rps) - min(rps)) / s["rps"] if s["rps"] else None
        summary[key] = s
    return summary


def ratio(a, b):
    return a / b if a is not None and b else None


def cargo_size(path):
    """The size of cargo's own output (deps/), before scripts/build-wasm's `wasm-opt -Oz`."""
    cargo = path.parent / "deps" / path.name
    return cargo.stat().st_size if cargo.is_file() else None


def machine(load_before):
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "envoy": envoy_version(), "load_before": load_before, "load_after": os.getloadavg()}


def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def tables(result):
    s, t = result["summary"], result["targets"]
    lines = [
        "| variant | req/s | vs B | vs A | p50 ms | p99 ms | worker CPU µs/req | spread | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, kind, _, _ in RUNS:
        row = s[f"{variant} {kind}"]
        base_kind = "POST keyed" if kind.startswith("POST") else "GET"
        b, a = s[f"B {base_kind}"], s[f"A {base_kind}"]
        lines.append(
            f"| {LABELS[(variant, kind)]} | {row['rps']:.0f} | {fmt(ratio(row['rps'], b['rps']), '.3f')} | "
            f"{fmt(ratio(row['rps'], a['rps']), '.3f')} | {fmt(row['p50_ms'], '.3f')} | "
            f"{fmt(row['p99_ms'], '.3f')} | {fmt(row['cpu_us'], '.1f')} | "
            f"{fmt(row['spread'], '.0%')} | {row['non_2xx'] + row['socket_errors']} |")
    lines += ["", "| target | measured | met |", "| --- | --- | --- |"]
    for name, (measured, met) in t.items():
        lines.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
    retry = result.get("retry_effect")
    if retry:
        lines += ["", f"Retry effect: {retry['filtered']['requests']:,} GETs, the upstream resets "
                  "every tenth request (by number) on its first attempt, before answering.", "",
                  "| | client errors | error rate | upstream attempts | attempts / request "
                  "| Envoy retries | retries refused by the breaker |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in retry.values():
            lines.append(f"| {r['label']} | {r['client_errors']:,} | {r['error_rate']:.1%} | "
                         f"{r['upstream_attempts']:,} | {r['attempts_per_request']:.3f} | "
                         f"{r['envoy_retries']:,} | {r['retry_overflow']:,} |")
    fuel = result.get("fuel")
    if fuel:
        lines += ["", "Per-request cost in the mock host (`bench/fuel-baseline.json`, deterministic): "
                  "wasm instructions (wasmtime fuel) and host crossings.", "",
                  "| path | wasm instructions | host calls | buffers allocated by the host | calls |",
                  "| --- | ---: | ---: | ---: | --- |"]
        rows = list(fuel["paths"].items())
        if fuel.get("noop_floor_get"):
            rows.insert(0, ("empty filter (B), GET", fuel["noop_floor_get"]))
        for name, c in rows:
            calls = ", ".join(f"{k.replace('proxy_', '')} {v}" for k, v in c["calls"].items()
                              if k != "proxy_on_memory_allocate")
            lines.append(f"| {name} | {c['fuel']:,} | {c['host_calls']} | {c['allocations']} | {calls} |")
    return "\n".join(lines)


def targets(summary, retry, wasm_bytes):
    g = lambda v, k: summary[f"{v} {k}"]  # noqa: E731
    out = {}
    c_b = ratio(g("C", "GET")["rps"], g("B", "GET")["rps"])
    out["C/B throughput ≥ 0.95"] = (fmt(c_b, ".3f"), c_b is not None and c_b >= 0.95)
    p99 = ratio(g("C", "GET")["p99_ms"], g("B", "GET")["p99_ms"])
    out["C p99 within 5% of B"] = (f"{fmt(p99, '.3f')}× B", p99 is not None and p99 <= 1.05)
    d_b = ratio(g("D", "POST keyed")["rps"], g("B", "POST keyed")["rps"])
    out["D (first execution)/B ≥ 0.85"] = (fmt(d_b, ".3f"), d_b is not None and d_b >= 0.85)
    rp = ratio(g("D", "POST replay")["rps"], g("A", "POST keyed")["rps"])
    out["replay faster than a proxied request"] = (f"{fmt(rp, '.2f')}× plain Envoy's POST",
                                                   rp is not None and rp > 1)
    out[".wasm ≤ 200 KB"] = (f"{wasm_bytes:,} bytes", wasm_bytes <= 200 * 1024)
    if retry:
        f, p = retry["filtered_raised"], retry["plain"]
        out["retry effect: 0 client errors, attempts ≤ 1.12 × requests (breaker raised)"] = (
            f"{f['client_errors']} errors, {f['attempts_per_request']:.3f}× "
            f"(plain Envoy: {p['error_rate']:.1%} errors)",
            f["client_errors"] == 0 and f["attempts_per_request"] <= 1.12)
    return out


def update_readme(block):
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        print(f"README.md has no {README_BEGIN} … {README_END} block: not updated", file=sys.stderr)
        return False
    readme.write_text(text[:begin + len(README_BEGIN)] + "\n" + block + "\n" + text[end:])
    return True


def render(result):
    """The report text of a result: one paragraph on how and where it ran, then the tables."""
    result_for_tables = dict(result, targets={k: (v["measured"], v["met"])
                                              for k, v in result["targets"].items()})
    m = result["machine"]
    spread = max((s["spread"] or 0) for s in result["summary"].values())
    about = (
        f"`{result['command']}` on {result['date']}: Envoy {m['envoy']} (`--concurrency 1`, V8), "
        f"wrk (1 thread, {result['connections']} connections) on loopback, medians of "
        f"{result['rounds']} alternating rounds of {result['seconds']} s. Machine: {m['cpu']}, "
        f"{m['cores']} cores, Linux {m['kernel']}; load average {m['load_before'][0]:.2f} before, "
        f"{m['load_after'][0]:.2f} after; the widest spread of req/s across rounds was "
        f"{spread:.0%}. " + sizes(result) + " Worker CPU µs/req is the Envoy worker "
        "thread's CPU time per request, the backend included (it runs on the same worker).")
    return about + "\n\n" + tables(result_for_tables)


def sizes(result):
    if "cargo_wasm_bytes" not in result:  # results.json from before wasm-opt was the build
        return (f"The .wasm is {result['wasm_bytes']:,} bytes (the empty filter: "
                f"{result['noop_wasm_bytes']:,}; after `wasm-opt -Oz`: "
                f"{fmt(result['wasm_opt_oz_bytes'], ',')}).")
    return (f"The .wasm that ships (scripts/build-wasm: cargo, then `wasm-opt -Oz`) is "
            f"{result['wasm_bytes']:,} bytes (cargo's output: "
            f"{fmt(result['cargo_wasm_bytes'], ',')}; the empty filter, built the same way: "
            f"{result['noop_wasm_bytes']:,}).")


def publish(result, out_dir, readme):
    text = render(result)
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "REPORT.md").write_text("# resetguard benchmark\n\n" + text + "\n")
    if readme:
        update_readme(text)
    print(text)
    print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'REPORT.md'}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="per run (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--retry-requests", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 s, 1 round, 1,000 retry GETs")
    ap.add_argument("--out", type=Path, help="where results.json and REPORT.md go")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rewrite REPORT.md and the README block from "
                         "bench/results.json with the current bench/fuel-baseline.json")
    args = ap.parse_args()
    fuel_file = ROOT / "bench/fuel-baseline.json"
    fuel = json.loads(fuel_file.read_text()) if fuel_file.exists() else None
    if args.render:
        result = json.loads((ROOT / "bench/results.json").read_text())
        publish(dict(result, fuel=fuel), ROOT / "bench", readme=not args.no_readme)
        return result
    if args.quick:
        args.seconds, args.rounds, args.retry_requests = 1, 1, 1000
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="resetguard-bench-out-")) if args.quick
                           else ROOT / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run scripts/bootstrap")
    for path in (WASM, NOOP_WASM):
        if not path.exists():
            sys.exit(f"{path} is missing: {BUILD}")

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="resetguard-bench-"))
    samples, clean = run_throughput(work, args)
    retry, clean_retry = (run_retry_effect(work, args.retry_requests) if args.retry_requests
                          else (None, True))
    wasm_bytes = WASM.stat().st_size
    summary = summarize(samples)
    result = {
        "command": " ".join(["scripts/bench"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
        "machine": machine(load_before),
        "wasm_bytes": wasm_bytes, "noop_wasm_bytes": NOOP_WASM.stat().st_size,
        "cargo_wasm_bytes": cargo_size(WASM),
        "summary": {f"{v} {k}": s for (v, k), s in summary.items()},
        "retry_effect": retry,
        "fuel": fuel,
        "raw": {f"{v} {k}": runs for (v, k), runs in samples.items()},
    }
    result["targets"] = {k: {"measured": m, "met": ok} for k, (m, ok) in
                         targets(result["summary"], retry, wasm_bytes).items()}
    publish(result, out_dir, readme=not args.quick and not args.no_readme and out_dir == ROOT / "bench")
    if clean and clean_retry:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"an Envoy exited uncleanly; its files are in {work}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
