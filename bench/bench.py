#!/usr/bin/env python3
"""Benchmarks resetguard against plain Envoy and an empty proxy-wasm filter, on loopback.

Throughput: one Envoy 1.40 (`--concurrency 1`, V8) serves every variant on its own listener, and
the upstreams too, on the same worker (so they cost the same for every variant):

  A    plain Envoy                              A_r  plain Envoy + a route retry_policy
  B    the empty filter (bench/noop-filter)     B_r  the empty filter + that retry_policy
                                                B_h  the empty filter, a GET carrying the retry
                                                     headers resetguard sets (no route policy)
  C    resetguard, default config (GET, and a POST it treats as unkeyed: no idempotency section)
  D    resetguard enforcing Idempotency-Key, local store (a keyed POST's first execution; replays)
  E    the same with `idempotency.store.backend: etcd` (one etcd member on loopback, tmpfs)

The route retry_policy is what resetguard's defaults arm through the router's headers: `reset,
connect-failure,refused-stream` for idempotent methods, `reset-before-request,connect-failure,
refused-stream` for the others, 2 retries, Envoy's default back-off (25 ms base). B_r is the floor
of "retries by route configuration"; C/B_r is what the filter costs over it.

Upstreams: `backend`, a zero-cost direct_response on the same worker (behind a buffer filter, so
it reads a POST's body before answering), and `slow`, bench/slow_backend.py: its own process
answering after 2 ms of service time (a timer, not CPU), driven with fewer connections; the `U`
run measures it directly (its p50 must be the delay, its req/s connections / p50, or it is
saturated). Replays are measured against both: on `backend` a proxied request costs only Envoy's
own second hop, on `slow` the upstream's service time too.

wrk drives every variant in turn, round after round; the report quotes medians of the rounds:
req/s, p50/p99 latency, and the Envoy worker thread's CPU time per request (read from /proc, much
less sensitive to a busy machine than req/s), and the CPU per request of etcd (E) and of the
2 ms backend (its runs).

Profile: probe filters (hand-written .wasm, assembled with binaryen's wasm-as) that make N host
calls of one kind in on_request_headers, or export no stream callback at all, measured in the same
Envoy: what one host call of each kind and one callback entry cost on this machine. With `perf`
(software clock, on the worker thread), where the worker's samples fall: V8-generated code (the
wasm), the Envoy binary (V8's runtime included), the kernel; the filter's extra time in generated
code over its extra wasm instructions is what one of its instructions costs. Next to
bench/callback-cost.json (the filter's wasm instructions and host calls per callback,
deterministic, recorded by bench/callback-cost) they say where the filter's time goes.

Retry effect: a second Envoy in front of a chaos upstream that resets 10% of requests (by request
number, first attempt only) before answering; N GETs through plain Envoy and through resetguard,
with Envoy's default retry circuit breaker (3 concurrent retries per cluster) and with it raised.

Usage: scripts/bench [--quick] [--seconds 4] [--rounds 5] [--connections 16] [--out DIR]
A full run (about 9 minutes) writes bench/results.json and bench/REPORT.md and rewrites the
README block between `<!-- bench:begin -->` and `<!-- bench:end -->` (unless --no-readme);
--quick (1 s runs, one round, 1,000 retry-effect requests, no perf) writes to a temporary directory
unless --out is given; --render measures nothing and rewrites REPORT.md and the README block from
bench/results.json (e.g. after re-recording bench/fuel-baseline.json or bench/callback-cost.json).
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
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "envoy"))
from harness.process import terminate  # noqa: E402
from harness.upstream import ChaosUpstream  # noqa: E402

WASM = Path(os.environ.get("RESETGUARD_WASM", ROOT / "target/wasm32-wasip1/release/resetguard.wasm"))
NOOP_WASM = Path(os.environ.get("NOOP_WASM", WASM.with_name("noop_filter.wasm")))
ENVOY = Path(os.environ.get("RESETGUARD_ENVOY", os.environ.get("ENVOY_BIN", ROOT / ".venv/bin/envoy")))
BUILD = "scripts/build-wasm"
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
FUEL_FILE = ROOT / "bench/fuel-baseline.json"
CALLBACK_FILE = ROOT / "bench/callback-cost.json"
WASM_BUDGET = 300 * 1024  # scripts/build-wasm fails above it
SLOW_DELAY_MS = 2

# TTL above a run's length (a replay key must outlive its run); many shards keep each shard's
# index small, as an operator sizing for throughput would.
KEYED_CONFIG = {"idempotency": {"mode": "enforce", "max_entries": 200000, "shards": 2048,
                                "ttl_seconds": 30}}
ETCD_CONFIG = {"idempotency": {"mode": "enforce", "ttl_seconds": 30,
                               "store": {"backend": "etcd", "cluster": "etcd", "timeout_ms": 300}}}

# resetguard's defaults as a route retry_policy (core/src/retry_policy.rs; README `retry`).
IDEMPOTENT_METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"]
RETRY_IDEMPOTENT = {"retry_on": "reset,connect-failure,refused-stream", "num_retries": 2}
RETRY_UNSENT = {"retry_on": "reset-before-request,connect-failure,refused-stream", "num_retries": 2}

# wrk scripts: a POST with a fresh Idempotency-Key each time (every POST run sends it: A, B and C
# ignore it), and one key for the whole run (written per run, the key executed once beforehand).
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
wrk.headers["idempotency-key"] = "{key}"
"""
POST_BODY = b'{"amount": 10}'
# A GET carrying the router headers resetguard's defaults set on one (B_h): Envoy arms the same
# retries from headers, with no filter logic, so B_h − B_r is what arming by header costs the
# router over arming by the route's policy.
RETRY_HEADERS_GET_LUA = """
wrk.headers["x-envoy-retry-on"] = "reset,connect-failure,refused-stream"
wrk.headers["x-envoy-max-retries"] = "2"
"""

# (name, listener, wrk script, group) in the order each round runs them. Groups: "fast" runs use
# --connections against the zero-cost backend, "slow" ones --slow-connections against the 2 ms one.
RUNS = [
    ("A GET", "plain", None, "fast"),
    ("A_r GET", "plain_r", None, "fast"),
    ("B GET", "noop", None, "fast"),
    ("B_r GET", "noop_r", None, "fast"),
    ("B_h GET", "noop", "retry_headers", "fast"),
    ("C GET", "filtered", None, "fast"),
    ("A POST", "plain", "keyed", "fast"),
    ("A_r POST", "plain_r", "keyed", "fast"),
    ("B POST", "noop", "keyed", "fast"),
    ("B_r POST", "noop_r", "keyed", "fast"),
    ("C POST", "filtered", "keyed", "fast"),
    ("D POST keyed", "keyed", "keyed", "fast"),
    ("D POST replay", "keyed", "replay", "fast"),
    ("E POST keyed", "keyed_etcd", "keyed", "fast"),
    ("E POST replay", "keyed_etcd", "replay", "fast"),
    ("U slow GET", "slow_backend", None, "slow"),
    ("B_r slow GET", "noop_r_slow", None, "slow"),
    ("C slow GET", "filtered_slow", None, "slow"),
    ("B_r slow POST", "noop_r_slow", "keyed", "slow"),
    ("D slow POST keyed", "keyed_slow", "keyed", "slow"),
    ("D slow POST replay", "keyed_slow", "replay", "slow"),
]
LABELS = {
    "A GET": "A plain Envoy, GET",
    "A_r GET": "A_r plain Envoy + route retry_policy, GET",
    "B GET": "B empty wasm filter, GET",
    "B_r GET": "B_r empty wasm filter + route retry_policy, GET",
    "B_h GET": "B_h empty wasm filter, GET carrying the retry headers resetguard sets",
    "C GET": "C resetguard (defaults), GET",
    "A POST": "A plain Envoy, POST",
    "A_r POST": "A_r plain Envoy + route retry_policy, POST",
    "B POST": "B empty wasm filter, POST",
    "B_r POST": "B_r empty wasm filter + route retry_policy, POST",
    "C POST": "C resetguard (defaults), POST (unkeyed: no idempotency section)",
    "D POST keyed": "D resetguard enforce, keyed POST, first execution (local store)",
    "D POST replay": "D resetguard enforce, keyed POST, replay (local store)",
    "E POST keyed": "E resetguard enforce, keyed POST, first execution (etcd store)",
    "E POST replay": "E resetguard enforce, keyed POST, replay (etcd store)",
    "U slow GET": "U the 2 ms backend itself (no proxy hop), GET",
    "B_r slow GET": "B_r empty wasm filter + route retry_policy, GET",
    "C slow GET": "C resetguard (defaults), GET",
    "B_r slow POST": "B_r empty wasm filter + route retry_policy, POST (re-execution's floor)",
    "D slow POST keyed": "D resetguard enforce, keyed POST, first execution (re-execution)",
    "D slow POST replay": "D resetguard enforce, keyed POST, replay",
}
# Results from before the A_r/B_r variants named the POST baselines after the key they carried.
LEGACY_NAMES = {"A POST keyed": "A POST", "B POST keyed": "B POST"}


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
                    "value": json.dumps(configuration) if configuration != "" else "",
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

# The README's hold (Keeping locally answered requests off the upstream): the buffer filter
# after resetguard, for requests carrying the key header, as every shipped example has it.
HOLD_KEYED = {
    "name": "resetguard.hold_keyed_requests",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "extension_config": {
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 2097152,
            },
        },
        "xds_matcher": {"matcher_list": {"matchers": [{
            "predicate": {"not_matcher": {"single_predicate": {
                "input": {"name": "idempotency-key", "typed_config": {
                    "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                    "header_name": "idempotency-key"}},
                "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}},
            }}},
            "on_match": {"action": {"name": "skip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"}}},
        }]}},
    },
}


def routes_to(cluster, retry=False):
    if not retry:
        return [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]
    methods = "^(" + "|".join(IDEMPOTENT_METHODS) + ")$"
    return [
        {"match": {"prefix": "/", "headers": [{"name": ":method", "string_match": {
            "safe_regex": {"regex": methods}}}]},
         "route": {"cluster": cluster, "retry_policy": RETRY_IDEMPOTENT}},
        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "retry_policy": RETRY_UNSENT}},
    ]


def listener(name, filters, routes, port=0):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                "http_filters": filters + [ROUTER],
            },
        }]}],
    }


def direct_response():
    return [{"match": {"prefix": "/"},
             "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}]


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

    def _wait_ready(self, timeout=90):
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
        terminate(self.proc)
        self.log.close()
        return self.proc.returncode in (0, -signal.SIGTERM)


def envoy_version():
    out = subprocess.run([str(ENVOY), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: (\S+)", out)
    return m.group(1) if m else out.strip()


def process_cpu_ns(pid):
    """User + system CPU of a whole process (every thread), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- probe filters ------------------------------------------------------------------------------
# Each probe does its work in on_request_headers, N times, then continues; every other stream
# callback returns at once. Strings and scratch at fixed addresses; proxy_on_memory_allocate is
# a bump allocator (the host's buffers are never kept), so an allocation costs the entry alone.
PROBE_IMPORTS = {
    "time": ("proxy_get_current_time_nanoseconds", "(param i32) (result i32)"),
    "header_value": ("proxy_get_header_map_value", "(param i32 i32 i32 i32 i32) (result i32)"),
    "header_map": ("proxy_get_header_map_pairs", "(param i32 i32 i32) (result i32)"),
    "replace": ("proxy_replace_header_map_value", "(param i32 i32 i32 i32 i32) (result i32)"),
    "property": ("proxy_get_property", "(param i32 i32 i32 i32) (result i32)"),
    "shared_get": ("proxy_get_shared_data", "(param i32 i32 i32 i32 i32) (result i32)"),
    "shared_set": ("proxy_set_shared_data", "(param i32 i32 i32 i32 i32) (result i32)"),
}
ROUTE_METADATA = "xds\\00route_metadata\\00filter_metadata\\00resetguard"  # the filter's read
PROBE_DATA = [
    (1024, "x-probe-absent"),   # 14
    (1040, ":path"),            # 5
    (1056, "x-probe"),          # 7
    (1064, "1"),
    (1072, ROUTE_METADATA),     # 45 bytes
    (1136, "probe-key"),        # 9
]
PROBE_CALLS = {
    "time": ("time", "(drop (call $time (i32.const 8)))"),
    "header_absent": ("header_value", "(drop (call $header_value (i32.const 0) (i32.const 1024) "
                                      "(i32.const 14) (i32.const 0) (i32.const 4)))"),
    "header_present": ("header_value", "(drop (call $header_value (i32.const 0) (i32.const 1040) "
                                       "(i32.const 5) (i32.const 0) (i32.const 4)))"),
    "header_map": ("header_map", "(drop (call $header_map (i32.const 0) (i32.const 0) (i32.const 4)))"),
    "replace": ("replace", "(drop (call $replace (i32.const 0) (i32.const 1056) (i32.const 7) "
                           "(i32.const 1064) (i32.const 1)))"),
    "property": ("property", "(drop (call $property (i32.const 1072) (i32.const 45) (i32.const 0) "
                             "(i32.const 4)))"),
    "shared_get": ("shared_get", "(drop (call $shared_get (i32.const 1136) (i32.const 9) "
                                 "(i32.const 0) (i32.const 4) (i32.const 12)))"),
    "shared_set": ("shared_set", "(drop (call $shared_set (i32.const 1136) (i32.const 9) "
                                 "(i32.const 4096) (i32.const 256) (i32.const 0)))"),
}
# What each probe stands for in the filter's host calls (bench/callback-cost.json names).
PROBE_FOR_CALL = {
    "get_header_map_pairs": "header_map",
    "get_header_map_value": "header_present",
    "replace_header_map_value": "replace",
    "get_property": "property",
    "get_current_time_nanoseconds": "time",
    "get_shared_data": "shared_get",
    "set_shared_data": "shared_set",
}
PROBE_LABELS = {
    "min": "no stream callback exported (only context create)",
    "zero": "every stream callback exported, each returns at once",
    "time": "get_current_time_nanoseconds",
    "header_absent": "get_header_map_value, header absent",
    "header_present": "get_header_map_value, `:path` (the host allocates the value in the module)",
    "header_map": "get_header_map_pairs, request headers (one allocation)",
    "replace": "replace_header_map_value",
    "property": "get_property `xds.route_metadata.filter_metadata.resetguard` (absent)",
    "shared_get": "get_shared_data, 256-byte value (one allocation)",
    "shared_set": "set_shared_data, 256-byte value",
}
# Stream callbacks Envoy makes for a GET through the bench's backend beyond context create:
# request headers, response headers, response body, log, done, delete.
GET_STREAM_CALLBACKS = 6


def probe_wat(kind, n):
    imports = "\n".join(f'  (import "env" "{name}" (func ${key} {sig}))'
                        for key, (name, sig) in PROBE_IMPORTS.items())
    data = "\n".join(f'  (data (i32.const {addr}) "{text}")' for addr, text in PROBE_DATA)
    stream = ""
    if kind != "min":
        body = ""
        if kind in PROBE_CALLS:
            body = f"""
    (local.set $i (i32.const {n}))
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $i)))
      {PROBE_CALLS[kind][1]}
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $l)))
    (i32.store (i32.const 2052) (local.get $acc))"""
        stream = f"""
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32) (local $acc i32){body}
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_trailers") (param i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))"""
    return f"""(module
{imports}
  (memory (export "memory") 32)
  (global $heap (mut i32) (i32.const 65536))
{data}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 2097152))
      (then (global.set $heap (i32.const 65536))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $n)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $shared_set (i32.const 1136) (i32.const 9) (i32.const 4096) (i32.const 256)
                            (i32.const 0)))
    (i32.const 1)){stream}
)
"""


def build_probes(work, calls):
    """The probe .wasm files: {kind: (path, repetitions)}; None without binaryen's wasm-as."""
    if not shutil.which("wasm-as"):
        return None
    probes = {"min": 0, "zero": 0}
    probes.update({k: calls for k in PROBE_CALLS})
    out = {}
    for kind, n in probes.items():
        wat = work / f"probe-{kind}.wat"
        wat.write_text(probe_wat(kind, n))
        wasm = wat.with_suffix(".wasm")
        subprocess.run(["wasm-as", str(wat), "-o", str(wasm)], check=True, capture_output=True)
        out[kind] = (wasm, n)
    return out


# -- etcd -----------------------------------------------------------------------------------------
def start_etcd(work):
    """One etcd member on loopback, data on tmpfs (envoy/harness/etcd.py), or None if missing."""
    try:
        from harness.etcd import Etcd, require_etcd
        require_etcd()
    except (ImportError, FileNotFoundError) as e:
        print(f"etcd variants skipped: {e}", file=sys.stderr)
        return None
    return Etcd(1, run_dir=work / "etcd", name="bench-etcd").start()


def etcd_pid(etcd):
    return etcd.members[0].pid if etcd is not None else None


class SlowBackend:
    """bench/slow_backend.py in its own process (loopback, a fixed service time)."""

    def __init__(self, work, delay_ms):
        self.port = free_port()
        self.log = open(work / "slow_backend.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench/slow_backend.py"), "--port", str(self.port),
             "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"bench/slow_backend.py did not start: see {work}/slow_backend.log")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        terminate(self.proc)
        self.log.close()


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


def wrk_command(port, seconds, connections, script=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    return cmd + [f"http://127.0.0.1:{port}/bench"]


def run_wrk(envoy, port, seconds, connections, script=None, sides=()):
    """One wrk run: its figures, the Envoy worker's CPU per request (`cpu_us`; None when the run
    does not go through Envoy) and, for each (name, pid) of `sides`, that process's (`name_cpu_us`)."""
    cmd = wrk_command(port, seconds, connections, script)
    before = envoy.worker_cpu_ns() if envoy else None
    side_before = [(name, pid, process_cpu_ns(pid)) for name, pid in sides]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    after = envoy.worker_cpu_ns() if envoy else None
    result = parse_wrk(out)
    n = result["requests"]
    if before is not None and after is not None and n:
        result["cpu_us"] = (after - before) / 1000 / n
    for name, pid, ns in side_before:
        now = process_cpu_ns(pid)
        if ns is not None and now is not None and n:
            result[f"{name}_cpu_us"] = (now - ns) / 1000 / n
    return result


def post_keyed(port, key):
    """(status, whether it was a replay) of one keyed POST."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/bench", data=POST_BODY, method="POST",
                                 headers={"content-type": "application/json",
                                          "idempotency-key": key})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("idempotent-replayed") == "true"
    except urllib.error.HTTPError as e:
        return e.code, False


def execute_once(port, key, timeout=5.0):
    """Runs the replay key's first execution and waits until the key replays (with etcd the
    settlement is written on the root context's next tick), so that the run measures replays only."""
    status, _ = post_keyed(port, key)
    if status != 200:
        return status
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, replayed = post_keyed(port, key)
        if status == 200 and replayed:
            return 200
        time.sleep(0.02)
    return status


def throughput_envoy(work, etcd, probes, slow):
    to_backend = lambda retry=False: routes_to("backend", retry)  # noqa: E731
    to_slow = lambda retry=False: routes_to("slow", retry)  # noqa: E731
    resetguard = lambda name, config: wasm_filter(name, WASM, "resetguard", config)  # noqa: E731
    noop = lambda name: wasm_filter(name, NOOP_WASM, "noop", "")  # noqa: E731
    keyed = [resetguard("resetguard-keyed", KEYED_CONFIG), HOLD_KEYED]
    listeners = [
        listener("plain", [], to_backend()),
        listener("plain_r", [], to_backend(True)),
        listener("noop", [noop("noop")], to_backend()),
        listener("noop_r", [noop("noop-r")], to_backend(True)),
        listener("filtered", [resetguard("resetguard", {})], to_backend()),
        listener("keyed", keyed, to_backend()),
        listener("noop_r_slow", [noop("noop-r-slow")], to_slow(True)),
        listener("filtered_slow", [resetguard("resetguard-slow", {})], to_slow()),
        listener("keyed_slow", [resetguard("resetguard-keyed-slow", KEYED_CONFIG), HOLD_KEYED],
                 to_slow()),
    ]
    clusters = []
    if etcd is not None:
        listeners.append(listener("keyed_etcd", [resetguard("resetguard-etcd", ETCD_CONFIG),
                                                 HOLD_KEYED], to_backend()))
        clusters.append(cluster("etcd", etcd.port))
    for kind, (path, _) in (probes or {}).items():
        listeners.append(listener(f"probe_{kind}", [wasm_filter(f"probe-{kind}", path,
                                                                f"probe-{kind}", "")], to_backend()))
    # The zero-cost backend: a direct_response after a buffer filter (a direct_response sent
    # before the body arrives closes the upstream connection, and every POST would pay a new
    # connection: measured 12,697 connections for 12,697 POSTs). Its port must be known in the
    # cluster: bind a fixed free port.
    backend_port = free_port()
    listeners.append(listener("backend", [READ_WHOLE_BODY], direct_response(), backend_port))
    clusters += [cluster("backend", backend_port), cluster("slow", slow.port)]
    return Envoy(work, "bench", listeners, clusters)


def run_throughput(work, args, envoy, etcd, slow):
    (work / "keyed.lua").write_text(KEYED_POST_LUA)
    (work / "retry_headers.lua").write_text(RETRY_HEADERS_GET_LUA)
    runs = [r for r in RUNS if etcd is not None or not r[0].startswith("E ")]
    samples = {name: [] for name, _, _, _ in runs}
    for r in range(args.rounds):
        for name, lst, script, group in runs:
            port = slow.port if lst == "slow_backend" else envoy.ports[lst]
            path = work / f"{script}.lua" if script else None
            if script == "replay":
                key = f"bench-replay-{uuid.uuid4().hex[:12]}"
                status = execute_once(port, key)
                if status != 200:
                    raise RuntimeError(f"{name}: the replay key's first execution answered {status}")
                path = work / f"replay-{key}.lua"
                path.write_text(REPLAY_POST_LUA.replace("{key}", key))
            connections = args.connections if group == "fast" else args.slow_connections
            sides = [("etcd", etcd_pid(etcd))] if name.startswith("E ") else []
            if group == "slow":
                sides.append(("backend", slow.pid))
            sample = run_wrk(None if lst == "slow_backend" else envoy, port, args.seconds,
                             connections, path, sides)
            samples[name].append(sample)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {samples[n][-1]['rps']:.0f}/s {samples[n][-1].get('cpu_us', 0):.0f}µs"
            for n, _, _, _ in runs), file=sys.stderr)
    return samples


def run_probes(envoy, probes, args):
    samples = {kind: [] for kind in probes}
    for r in range(args.probe_rounds):
        for kind in probes:
            samples[kind].append(run_wrk(envoy, envoy.ports[f"probe_{kind}"], args.probe_seconds,
                                         args.connections))
        print(f"probe round {r + 1}/{args.probe_rounds}: " + ", ".join(
            f"{k} {samples[k][-1].get('cpu_us', 0):.1f}µs" for k in probes), file=sys.stderr)
    cpu = {k: median([s.get("cpu_us") for s in v]) for k, v in samples.items()}
    out = {"calls": {k: n for k, (_, n) in probes.items()}, "cpu_us": cpu,
           "raw": samples, "per_call_us": {}}
    zero = cpu.get("zero")
    for kind, (_, n) in probes.items():
        if n and zero is not None and cpu.get(kind) is not None:
            out["per_call_us"][kind] = (cpu[kind] - zero) / n
    if zero is not None and cpu.get("min") is not None:
        out["entry_us"] = (zero - cpu["min"]) / GET_STREAM_CALLBACKS
    return out


# -- perf -----------------------------------------------------------------------------------------
def perf_works():
    if not shutil.which("perf"):
        return False
    done = subprocess.run(["perf", "stat", "-e", "cpu-clock", "true"], capture_output=True, text=True)
    return done.returncode == 0 and "not supported" not in done.stderr


def dso_class(dso):
    if dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    if dso in ("envoy",) or dso.endswith("/envoy"):
        return "envoy"
    if dso.startswith("lib") or ".so" in dso:
        return "libc"
    return "jit"  # [unknown], [JIT] tid, //anon, memfd:…: V8's generated code (wasm, stubs)


def run_perf(work, envoy, etcd, args):
    """Where the worker's CPU samples fall, for a few variants (perf's software clock)."""
    out = {}
    runs = [("B GET", "noop", None), ("C GET", "filtered", None), ("B POST", "noop", "keyed"),
            ("D POST keyed", "keyed", "keyed")]
    if etcd is not None:
        runs.append(("E POST keyed", "keyed_etcd", "keyed"))
    for name, lst, script in runs:
        data = work / f"perf-{lst}.data"
        cmd = wrk_command(envoy.ports[lst], args.perf_seconds + 2, args.connections,
                          work / f"{script}.lua" if script else None)
        wrk = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-t",
                            envoy.worker_tid, "-o", str(data), "--", "sleep", str(args.perf_seconds)],
                           capture_output=True, timeout=args.perf_seconds + 30, check=True)
        finally:
            wrk.wait(timeout=args.perf_seconds + 30)
        report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--sort", "dso",
                                 "-q"], capture_output=True, text=True, timeout=120).stdout
        shares = {}
        for line in report.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
            if m:
                cls = dso_class(m.group(2))
                shares[cls] = shares.get(cls, 0) + float(m.group(1)) / 100
        out[name] = shares
    return out


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
        listener(name, resetguard if name != "plain" else [], routes_to(to))
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
        s = {k: median([r.get(k) for r in runs])
             for k in ("rps", "p50_ms", "p99_ms", "cpu_us", "etcd_cpu_us", "backend_cpu_us")}
        for side in ("etcd_cpu_us", "backend_cpu_us"):
            if s[side] is None:
                del s[side]
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


# -- report ---------------------------------------------------------------------------------------
def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def base_kind(name):
    return "GET" if name.endswith("GET") else "POST"


def baseline(summary, name, variant):
    """The `variant` row (A, A_r, B, B_r) a row compares with: same request, same upstream."""
    slow = " slow " in name
    key = f"{variant} {'slow ' if slow else ''}{base_kind(name)}"
    return summary.get(key)


def variant_table(s, names, slow=False):
    lines = ["| variant | req/s | vs B | vs B_r | p50 ms | p99 ms | worker CPU µs/req | Δ CPU vs B_r µs "
             "| spread | non-2xx |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        row = s.get(name)
        if row is None:
            continue
        b, br = baseline(s, name, "B"), baseline(s, name, "B_r")
        d_cpu = (row["cpu_us"] - br["cpu_us"]) if br and row.get("cpu_us") is not None \
            and br.get("cpu_us") is not None else None
        label = LABELS.get(name, name)
        lines.append(
            f"| {label} | {row['rps']:.0f} | {fmt(ratio(row['rps'], b and b['rps']), '.3f')} | "
            f"{fmt(ratio(row['rps'], br and br['rps']), '.3f')} | {fmt(row['p50_ms'], '.3f')} | "
            f"{fmt(row['p99_ms'], '.3f')} | {fmt(row.get('cpu_us'), '.1f')} | "
            f"{fmt(d_cpu, '+.1f')} | {fmt(row['spread'], '.0%')} | "
            f"{row['non_2xx'] + row['socket_errors']} |")
    return lines


def ratio_table(s):
    """C (or D, E) against B and B_r for each kind of request: throughput, p50, p99, CPU."""
    rows = [("GET", "C GET", "B GET", "B_r GET"),
            ("unkeyed POST", "C POST", "B POST", "B_r POST"),
            ("keyed POST, first execution (local store)", "D POST keyed", "B POST", "B_r POST"),
            ("keyed POST, replay (local store)", "D POST replay", "B POST", "B_r POST"),
            ("keyed POST, first execution (etcd)", "E POST keyed", "B POST", "B_r POST"),
            ("keyed POST, replay (etcd)", "E POST replay", "B POST", "B_r POST")]
    lines = ["| request | vs | req/s ratio | p50 ratio | p99 ratio | worker CPU µs/req: resetguard "
             "vs baseline (Δ) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for label, x, b, br in rows:
        if x not in s:
            continue
        for name, base in (("B_r", br), ("B", b)):
            if base not in s:
                continue
            X, Y = s[x], s[base]
            cpu = (f"{fmt(X.get('cpu_us'), '.1f')} vs {fmt(Y.get('cpu_us'), '.1f')} "
                   f"({fmt(X['cpu_us'] - Y['cpu_us'] if X.get('cpu_us') and Y.get('cpu_us') else None, '+.1f')})")
            lines.append(f"| {label} | {name} | {fmt(ratio(X['rps'], Y['rps']), '.3f')} | "
                         f"{fmt(ratio(X['p50_ms'], Y['p50_ms']), '.3f')} | "
                         f"{fmt(ratio(X['p99_ms'], Y['p99_ms']), '.3f')} | {cpu} |")
    return lines


def store_table(s):
    lines = ["| keyed POST | store | req/s | p50 ms | p99 ms | worker CPU µs/req | etcd CPU µs/req "
             "| non-2xx |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for what, local, remote in (("first execution", "D POST keyed", "E POST keyed"),
                                ("replay", "D POST replay", "E POST replay")):
        for store, name in (("local", local), ("etcd", remote)):
            r = s.get(name)
            if r is None:
                continue
            lines.append(f"| {what} | {store} | {r['rps']:.0f} | {fmt(r['p50_ms'], '.3f')} | "
                         f"{fmt(r['p99_ms'], '.3f')} | {fmt(r.get('cpu_us'), '.1f')} | "
                         f"{fmt(r.get('etcd_cpu_us'), '.1f', 'n/a')} | "
                         f"{r['non_2xx'] + r['socket_errors']} |")
    return lines


def get_host_calls(result):
    cb = result.get("callback_cost") or {}
    path = (cb.get("paths") or {}).get("GET (defaults)")
    if path:
        return path["total"]["host_calls"]
    fuel = (result.get("fuel") or {}).get("paths", {}).get("get_pass_through")
    return fuel["host_calls"] if fuel else None


def at_least(value, floor):
    return None if value is None else value >= floor


def targets(result):
    """Issue 16's targets: (measured, met), met None where the result did not measure it."""
    s = result["summary"]
    g = lambda n, k="rps": (s.get(n) or {}).get(k)  # noqa: E731
    out = {}
    c_br = ratio(g("C GET"), g("B_r GET"))
    out["GET: C/B_r throughput ≥ 0.97"] = (fmt(c_br, ".3f"), at_least(c_br, 0.97))
    c_b = ratio(g("C GET"), g("B GET"))
    out["GET: C/B throughput ≥ 0.92"] = (fmt(c_b, ".3f"), at_least(c_b, 0.92))
    calls = get_host_calls(result)
    out["GET: host calls ≤ 4"] = (fmt(calls, "d"), None if calls is None else calls <= 4)
    d_b = ratio(g("D POST keyed"), g("B POST"))
    out["keyed first execution, local store: D/B ≥ 0.75"] = (fmt(d_b, ".3f"), at_least(d_b, 0.75))
    rp, ex = g("D slow POST replay", "p50_ms"), g("D slow POST keyed", "p50_ms")
    rr, er = g("D slow POST replay"), g("D slow POST keyed")
    name = f"replay faster than re-execution ({SLOW_DELAY_MS} ms upstream): p50 and req/s"
    if rp is not None and ex is not None:
        out[name] = (f"p50 {rp:.3f} vs {ex:.3f} ms, {rr:.0f} vs {er:.0f} req/s", rp < ex and rr > er)
    else:
        out[name] = ("—", None)
    wasm = result["wasm_bytes"]
    out[f".wasm ≤ {WASM_BUDGET // 1024} KB (scripts/build-wasm's budget)"] = (
        f"{wasm:,} bytes", wasm <= WASM_BUDGET)
    retry = result.get("retry_effect")
    if retry:
        f, p = retry["filtered_raised"], retry["plain"]
        out["retry effect: 0 client errors, attempts ≤ 1.12 × requests (breaker raised)"] = (
            f"{f['client_errors']} errors, {f['attempts_per_request']:.3f}× "
            f"(plain Envoy: {p['error_rate']:.1%} errors)",
            f["client_errors"] == 0 and f["attempts_per_request"] <= 1.12)
    return out


def slow_section(result):
    s = result["summary"]
    u = s.get("U slow GET")
    if u is None:
        return []
    conns = result.get("slow_connections")
    delay = result.get("slow_delay_ms", SLOW_DELAY_MS)
    lines = ["", f"**With a {delay} ms upstream** (bench/slow_backend.py: its own process, "
             f"{delay} ms of service time spent waiting; {conns} connections). The backend alone "
             f"(U, wrk straight to it): p50 {fmt(u['p50_ms'], '.3f')} ms, p99 {fmt(u['p99_ms'], '.3f')} ms, "
             f"{u['rps']:.0f} req/s where {conns} connections allow "
             f"{fmt(ratio(conns * 1000, u['p50_ms']), '.0f')} at that p50 (not saturated when the "
             f"two agree); its own CPU {fmt(u.get('backend_cpu_us'), '.1f')} µs/req.", "",
             "| variant | req/s | vs B_r | p50 ms | p99 ms | worker CPU µs/req | Δ CPU vs B_r µs "
             "| backend CPU µs/req | non-2xx |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in [n for n, _, _, g in RUNS if g == "slow" and n != "U slow GET"]:
        row = s.get(name)
        if row is None:
            continue
        br = baseline(s, name, "B_r")
        d_cpu = (row["cpu_us"] - br["cpu_us"]) if br and row.get("cpu_us") is not None \
            and br.get("cpu_us") is not None else None
        lines.append(f"| {LABELS.get(name, name)} | {row['rps']:.0f} | "
                     f"{fmt(ratio(row['rps'], br and br['rps']), '.3f')} | {fmt(row['p50_ms'], '.3f')} | "
                     f"{fmt(row['p99_ms'], '.3f')} | {fmt(row.get('cpu_us'), '.1f')} | "
                     f"{fmt(d_cpu, '+.1f')} | {fmt(row.get('backend_cpu_us'), '.1f')} | "
                     f"{row['non_2xx'] + row['socket_errors']} |")
    rp, ex = s.get("D slow POST replay"), s.get("D slow POST keyed")
    if rp and ex:
        lines += ["", f"Replay vs re-execution: p50 {fmt(rp['p50_ms'], '.3f')} vs "
                  f"{fmt(ex['p50_ms'], '.3f')} ms ({fmt(ratio(ex['p50_ms'], rp['p50_ms']), '.1f')}× "
                  f"faster), req/s {rp['rps']:.0f} vs {ex['rps']:.0f}, worker CPU "
                  f"{fmt(rp.get('cpu_us'), '.1f')} vs {fmt(ex.get('cpu_us'), '.1f')} µs/req."]
    return lines


# (perf'd variant, its floor, the filter's path in callback-cost.json): the filter's extra time in
# generated code over its extra wasm instructions.
PERF_PAIRS = [("C GET", "B GET", "GET (defaults)"),
              ("D POST keyed", "B POST", "keyed POST, first execution (local store)")]


def jit_us(result, name):
    shares, row = (result.get("perf") or {}).get(name), result["summary"].get(name)
    if not shares or not row or row.get("cpu_us") is None:
        return None
    return row["cpu_us"] * shares.get("jit", 0)


def ns_per_instruction(result):
    """{variant: ns per wasm instruction of the filter's own code}, from perf and the fuel counts."""
    cb = (result.get("callback_cost") or {}).get("paths", {})
    floor = cb.get("empty filter (B), GET")
    out = {}
    for name, base, path in PERF_PAIRS:
        x, b = jit_us(result, name), jit_us(result, base)
        if x is None or b is None or not floor or path not in cb:
            continue
        extra = cb[path]["total"]["fuel"] - floor["total"]["fuel"]
        if extra > 0:
            out[name] = (x - b) * 1000 / extra
    return out


def estimates(result, callbacks, ns):
    """µs per callback: wasm instructions × ns, host calls × their probe cost (None: unprobed)."""
    per = (result.get("probes") or {}).get("per_call_us", {})
    rows = []
    for cb in callbacks:
        host, missing = 0.0, []
        for call, n in cb["calls"].items():
            kind = PROBE_FOR_CALL.get(call)
            if kind is None or per.get(kind) is None:
                missing.append(call)
            else:
                host += n * per[kind]
        rows.append({"wasm_us": cb["fuel"] * ns / 1000 if ns is not None else None,
                     "host_us": host if per else None, "unprobed": missing})
    return rows


def profile_section(result, compact=False):
    lines = []
    probes, perf, cb = result.get("probes"), result.get("perf"), result.get("callback_cost")
    s = result["summary"]
    if probes:
        cpu, per = probes["cpu_us"], probes["per_call_us"]
        lines += ["", "**What each piece costs in Envoy** (probe filters: hand-written modules that "
                  "do one thing N times in `on_request_headers`; cost per call = worker CPU per "
                  "request minus the probe that does nothing, / N; medians of "
                  f"{result.get('probe_rounds', '?')} rounds of {result.get('probe_seconds', '?')} s, "
                  "GET, zero-cost backend):", "",
                  "| probe | N per request | worker CPU µs/req | cost |",
                  "| --- | ---: | ---: | ---: |"]
        for kind, n in probes["calls"].items():
            if kind == "min":
                unit = (f"{fmt(probes.get('entry_us'), '.3f')} µs per callback entry "
                        f"((zero − min) / {GET_STREAM_CALLBACKS})")
            elif kind == "zero":
                unit = "the floor"
            else:
                unit = f"{fmt(per.get(kind), '.3f')} µs per call"
            lines.append(f"| {PROBE_LABELS.get(kind, kind)} | {n} | {fmt(cpu.get(kind), '.1f')} | {unit} |")
    if perf:
        lines += ["", "**Where the worker's CPU samples fall** (`perf record -e cpu-clock` on the "
                  "worker thread during a run of each; the Envoy binary is stripped, so V8's "
                  "runtime and the host-call glue count as Envoy; generated code = what V8 "
                  "compiled: the wasm):", "",
                  "| variant | generated code | Envoy binary | kernel | libraries | worker CPU µs/req "
                  "| µs/req in generated code |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, shares in perf.items():
            row = s.get(name) or {}
            lines.append(f"| {LABELS.get(name, name)} | {shares.get('jit', 0):.1%} | "
                         f"{shares.get('envoy', 0):.1%} | {shares.get('kernel', 0):.1%} | "
                         f"{shares.get('libc', 0):.1%} | {fmt(row.get('cpu_us'), '.1f')} | "
                         f"{fmt(jit_us(result, name), '.1f')} |")
        ns = ns_per_instruction(result)
        if ns:
            lines += ["", "One wasm instruction of the filter's own code (its extra µs in generated "
                      "code over its extra instructions, vs the empty filter): " + "; ".join(
                          f"{LABELS.get(k, k)}: {v:.2f} ns" for k, v in ns.items()) + "."]
    if cb:
        ns = ns_per_instruction(result)
        rate = ns.get("D POST keyed", ns.get("C GET")) if ns else None
        lines += ["", "**Where resetguard's cost goes, per callback** (`bench/callback-cost.json`: "
                  "the mock host, deterministic: the wasm instructions and host calls of each "
                  "callback" + ("; µs estimated: instructions × "
                                f"{rate:.2f} ns" if rate is not None else "")
                  + ("; host calls × their probe cost (calls no probe measures are named)"
                     if probes else "") + "):", ""]
        head, sep = ("| path | callback | wasm instructions | host calls | allocations | calls |",
                     "| --- | --- | ---: | ---: | ---: | --- |")
        if rate is not None or probes:
            head += " est. wasm µs | est. host-call µs |"
            sep += " ---: | ---: |"
        lines += [head, sep]
        for path in ("empty filter (B), GET", "GET (defaults)", "unkeyed POST (defaults)",
                     "keyed POST, first execution (local store)", "keyed POST, replay (local store)",
                     "keyed POST, first execution (etcd)", "keyed POST, replay (etcd)"):
            p = cb["paths"].get(path)
            if not p:
                continue
            est = estimates(result, p["callbacks"], rate) if (rate is not None or probes) else None
            detailed = not compact or path == "GET (defaults)"
            for i, c in enumerate(p["callbacks"] if detailed else []):
                calls = ", ".join(f"{k} {v}" for k, v in c["calls"].items())
                line = (f"| {path if i == 0 else ''} | {c['callback']} | {c['fuel']:,} | "
                        f"{c['host_calls']} | {c['allocations']} | {calls} |")
                if est:
                    e = est[i]
                    host = fmt(e["host_us"], ".2f") + (
                        f" + {', '.join(e['unprobed'])}" if e["unprobed"] and e["host_us"] is not None else "")
                    line += f" {fmt(e['wasm_us'], '.2f')} | {host} |"
                lines.append(line)
            t = p["total"]
            line = (f"| {'' if detailed else path} | **total** | **{t['fuel']:,}** | "
                    f"**{t['host_calls']}** | **{t['allocations']}** | |")
            if est:
                w = [e["wasm_us"] for e in est if e["wasm_us"] is not None]
                h = [e["host_us"] for e in est if e["host_us"] is not None]
                line += (f" **{fmt(sum(w) if w else None, '.2f')}** | "
                         f"**{fmt(sum(h) if h else None, '.2f')}** |")
            lines.append(line)
            if p.get("flush_tick") and detailed:
                f = p["flush_tick"]
                lines.append(f"| | root tick (counter flush, once per 250 ms, not per request) | "
                             f"{f['fuel']:,} | {f['host_calls']} | {f['allocations']} | "
                             f"{', '.join(f'{k} {v}' for k, v in f['calls'].items())} |"
                             + (" | |" if est else ""))
        if compact:
            lines += ["", "Every path callback by callback: [`bench/REPORT.md`](bench/REPORT.md)."]
        model = model_vs_measured(result)
        if model:
            lines += ["", model]
    return lines


def model_vs_measured(result):
    """GET, C − B in worker CPU: generated code (perf) + host calls (probes) + what remains."""
    s, probes, cb = result["summary"], result.get("probes"), result.get("callback_cost")
    if not (probes and cb and "C GET" in s and "B GET" in s):
        return None
    get = cb["paths"].get("GET (defaults)")
    if not get or s["C GET"].get("cpu_us") is None or s["B GET"].get("cpu_us") is None:
        return None
    host = sum(e["host_us"] or 0 for e in estimates(result, get["callbacks"], None))
    base = "B_r GET" if (s.get("B_r GET") or {}).get("cpu_us") is not None else "B GET"
    measured = s["C GET"]["cpu_us"] - s[base]["cpu_us"]
    jc, jb = jit_us(result, "C GET"), jit_us(result, "B GET")
    text = (f"GET, C − {base.split()[0]}: {measured:+.1f} µs of worker CPU per request measured; "
            f"the filter's {get['total']['host_calls']} host calls cost {host:.1f} µs by the probes")
    headers = None
    if base == "B_r GET" and (s.get("B_h GET") or {}).get("cpu_us") is not None:
        headers = s["B_h GET"]["cpu_us"] - s["B_r GET"]["cpu_us"]
        text += (f", arming the retries by header rather than by the route's policy "
                 f"{headers:+.1f} µs (B_h − B_r: the same headers sent by the client, no filter)")
    if jc is not None and jb is not None:
        rest = measured - host - (jc - jb) - (headers or 0)
        text += (f", its extra wasm {jc - jb:.1f} µs (perf: generated code, C − B), leaving "
                 f"{rest:+.1f} µs to what none of these isolates (per-stream work of the wasm "
                 f"filter around those calls, noise)")
    return text + "."


def tables(result, compact=False):
    s = result["summary"]
    fast = [n for n, _, _, g in RUNS if g == "fast"]
    lines = variant_table(s, fast)
    lines += ["", "C, D and E against the empty filter with and without the route retry_policy "
              "(zero-cost backend):", ""] + ratio_table(s)
    lines += ["", "| target (issue 16) | measured | met |", "| --- | --- | --- |"]
    for name, (measured, met) in targets(result).items():
        verdict = "not measured" if met is None else "yes" if met else "**no**"
        lines.append(f"| {name} | {measured} | {verdict} |")
    lines += slow_section(result)
    if any(n in s for n in ("E POST keyed", "E POST replay")):
        lines += ["", "**etcd vs the local store** (zero-cost backend; one etcd member on loopback, "
                  "data on tmpfs; etcd's CPU is the whole etcd process, on the other core, with wrk):",
                  ""] + store_table(s)
    lines += profile_section(result, compact)
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
    if fuel and not compact:
        lines += ["", "Per-request cost in the mock host (`bench/fuel-baseline.json`, deterministic, "
                  "the regression signal): wasm instructions (wasmtime fuel) and host crossings.", "",
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


def update_readme(block):
    readme = ROOT / "README.md"
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        print(f"README.md has no {README_BEGIN} … {README_END} block: not updated", file=sys.stderr)
        return False
    readme.write_text(text[:begin + len(README_BEGIN)] + "\n" + block + "\n" + text[end:])
    return True


def normalise(result):
    """Results from older versions of this script, in today's names."""
    s = result["summary"]
    for old, new in LEGACY_NAMES.items():
        if old in s and new not in s:
            s[new] = s.pop(old)
    return result


def render(result, compact=False):
    """The report text of a result: one paragraph on how and where it ran, then the tables."""
    result = normalise(result)
    m = result["machine"]
    spread = max((s["spread"] or 0) for s in result["summary"].values())
    about = (
        f"`{result['command']}` on {result['date']}: Envoy {m['envoy']} (`--concurrency 1`, V8), "
        f"wrk (1 thread, {result['connections']} connections) on loopback, medians of "
        f"{result['rounds']} alternating rounds of {result['seconds']} s. Machine: {m['cpu']}, "
        f"{m['cores']} cores, Linux {m['kernel']}; load average {m['load_before'][0]:.2f} before, "
        f"{m['load_after'][0]:.2f} after; the widest spread of req/s across rounds was "
        f"{spread:.0%}. " + sizes(result) + " Worker CPU µs/req is the Envoy worker "
        "thread's CPU time per request, the zero-cost backend included (it runs on the same "
        "worker; the 2 ms backend runs in its own process, its CPU reported apart).")
    stale = result.get("rendered_against")
    if stale:
        older = ("" if "B_r GET" in result["summary"] else
                 " and before the A_r/B_r, 2 ms-upstream, etcd and probe variants existed")
        about += (f"\n\n**These throughput figures were measured with an earlier build** "
                  f"({result['wasm_bytes']:,} bytes; the current build is {stale:,} bytes){older}; "
                  "the mock-host tables are current. Run `scripts/bench` for current figures.")
    return about + "\n\n" + tables(result, compact)


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
    stored = {k: v for k, v in result.items() if k != "rendered_against"}
    (out_dir / "results.json").write_text(json.dumps(stored, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "REPORT.md").write_text("# resetguard benchmark\n\n" + text + "\n")
    if readme:
        update_readme(render(result, compact=True))
    print(text)
    print(f"\nwrote {out_dir / 'results.json'} and {out_dir / 'REPORT.md'}", file=sys.stderr)


def read_json(path):
    return json.loads(path.read_text()) if path.exists() else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=4, help="per run (default 4)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--slow-connections", type=int, default=8,
                    help=f"connections for the {SLOW_DELAY_MS} ms-upstream runs (default 8)")
    ap.add_argument("--probe-rounds", type=int, default=3)
    ap.add_argument("--probe-seconds", type=int, default=2)
    ap.add_argument("--probe-calls", type=int, default=100, help="host calls per request in a probe")
    ap.add_argument("--perf-seconds", type=int, default=3)
    ap.add_argument("--no-perf", action="store_true", help="skip the perf profile")
    ap.add_argument("--retry-requests", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 s runs, 1 round, 1,000 retry GETs, no perf")
    ap.add_argument("--out", type=Path, help="where results.json and REPORT.md go")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument("--render", action="store_true",
                    help="measure nothing: rewrite REPORT.md and the README block from "
                         "bench/results.json with the current bench/fuel-baseline.json and "
                         "bench/callback-cost.json")
    args = ap.parse_args()
    fuel, callback_cost = read_json(FUEL_FILE), read_json(CALLBACK_FILE)
    if args.render:
        result = json.loads((ROOT / "bench/results.json").read_text())
        result = dict(result, fuel=fuel, callback_cost=callback_cost)
        if WASM.exists() and WASM.stat().st_size != result["wasm_bytes"]:
            result["rendered_against"] = WASM.stat().st_size
        publish(result, ROOT / "bench", readme=not args.no_readme)
        return result
    if args.quick:
        args.seconds, args.rounds, args.retry_requests = 1, 1, 1000
        args.probe_rounds, args.probe_seconds, args.no_perf = 1, 1, True
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="resetguard-bench-out-")) if args.quick
                           else ROOT / "bench")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: run scripts/bootstrap")
    for path in (WASM, NOOP_WASM):
        if not path.exists():
            sys.exit(f"{path} is missing: {BUILD}")

    started = time.monotonic()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="resetguard-bench-"))
    probes = build_probes(work, args.probe_calls)
    if probes is None:
        print("probe filters skipped: binaryen's wasm-as is missing (scripts/bootstrap)", file=sys.stderr)
    etcd = start_etcd(work)
    slow = None
    clean = True
    try:
        slow = SlowBackend(work, SLOW_DELAY_MS)
        envoy = throughput_envoy(work, etcd, probes, slow)
        try:
            samples = run_throughput(work, args, envoy, etcd, slow)
            probe_result = run_probes(envoy, probes, args) if probes else None
            perf = run_perf(work, envoy, etcd, args) if not args.no_perf and perf_works() else None
        finally:
            clean = envoy.stop()
    finally:
        if slow is not None:
            slow.stop()
        if etcd is not None:
            etcd.stop()
    retry, clean_retry = (run_retry_effect(work, args.retry_requests) if args.retry_requests
                          else (None, True))
    wasm_bytes = WASM.stat().st_size
    result = {
        "command": " ".join(["scripts/bench"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seconds": args.seconds, "rounds": args.rounds, "connections": args.connections,
        "slow_connections": args.slow_connections, "slow_delay_ms": SLOW_DELAY_MS,
        "probe_rounds": args.probe_rounds, "probe_seconds": args.probe_seconds,
        "duration_s": None,
        "machine": machine(load_before),
        "wasm_bytes": wasm_bytes, "noop_wasm_bytes": NOOP_WASM.stat().st_size,
        "cargo_wasm_bytes": cargo_size(WASM),
        "summary": summarize(samples),
        "probes": probe_result,
        "perf": perf,
        "retry_effect": retry,
        "fuel": fuel,
        "callback_cost": callback_cost,
        "raw": samples,
    }
    result["targets"] = {k: {"measured": m, "met": ok} for k, (m, ok) in targets(result).items()}
    result["duration_s"] = round(time.monotonic() - started)
    publish(result, out_dir, readme=not args.quick and not args.no_readme and out_dir == ROOT / "bench")
    print(f"took {result['duration_s']} s", file=sys.stderr)
    if clean and clean_retry:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"an Envoy exited uncleanly; its files are in {work}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
