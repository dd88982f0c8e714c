"""The benchmark command still works end to end: `bench/bench.py --quick` (about 40 s) measures
every variant (A, A_r, B, B_r, B_h, C, D and, with etcd installed, E; the 2 ms upstream; the probe
filters), and its retry-effect run shows what the filter is for. The full benchmark is
`scripts/bench`, not part of the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import paths
from harness.etcd import etcd_binary

BENCH = paths.ROOT / "bench" / "bench.py"
VARIANTS = ["A GET", "A_r GET", "B GET", "B_r GET", "B_h GET", "C GET",
            "A POST", "A_r POST", "B POST", "B_r POST", "C POST", "D POST keyed", "D POST replay",
            "U slow GET", "B_r slow GET", "C slow GET", "B_r slow POST", "D slow POST keyed",
            "D slow POST replay"]
ETCD_VARIANTS = ["E POST keyed", "E POST replay"]
PROBES = ["time", "header_absent", "header_present", "header_map", "replace", "property",
          "shared_get", "shared_set"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/bootstrap)")
def test_quick_benchmark_measures_every_variant_and_the_retry_effect(tmp_path):
    env = dict(os.environ, RESETGUARD_WASM=str(paths.wasm_path()),
               RESETGUARD_ENVOY=str(paths.envoy_binary()))
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    report = (tmp_path / "REPORT.md").read_text()
    assert report.count("| A plain Envoy, GET |") == 1
    assert report.count("| A_r plain Envoy + route retry_policy, GET |") == 1

    summary = result["summary"]
    with_etcd = os.access(etcd_binary(), os.X_OK)
    assert sorted(summary) == sorted(VARIANTS + (ETCD_VARIANTS if with_etcd else []))
    for name, s in summary.items():
        assert s["rps"] > 100, (name, s)
        assert 0 < s["p50_ms"] <= s["p99_ms"], (name, s)
        assert s["socket_errors"] == 0, (name, s)
        # Replay keys are executed (and settled) before their run: every run answers 2xx.
        assert s["non_2xx"] == 0, (name, s)
        if name == "U slow GET":  # wrk straight to the backend: no Envoy worker involved
            assert s["cpu_us"] is None and s["backend_cpu_us"] > 0, s
        else:
            assert 1 < s["cpu_us"] < 10_000, (name, s)
    for name in ETCD_VARIANTS if with_etcd else []:
        assert summary[name]["etcd_cpu_us"] > 0, summary[name]

    # The 2 ms upstream really takes 2 ms, and a replay does not wait for it.
    assert summary["U slow GET"]["p50_ms"] >= 2.0, summary["U slow GET"]
    assert summary["D slow POST replay"]["p50_ms"] < summary["D slow POST keyed"]["p50_ms"], summary
    assert summary["D slow POST keyed"]["backend_cpu_us"] > 0
    assert summary["D slow POST replay"]["backend_cpu_us"] < 1, "replays reached the upstream"

    # The probe filters ran (binaryen's wasm-as assembles them; scripts/bootstrap installs it).
    if shutil.which("wasm-as"):
        probes = result["probes"]
        assert sorted(probes["per_call_us"]) == sorted(PROBES), probes
        assert all(probes["cpu_us"][k] > 1 for k in ["min", "zero"] + PROBES), probes

    retry = result["retry_effect"]
    # The upstream resets every tenth request once: plain Envoy shows exactly those failures...
    assert retry["plain"]["client_errors"] == retry["plain"]["requests"] // 10, retry["plain"]
    # ...resetguard retries each of them once, when the retry breaker lets it.
    raised = retry["filtered_raised"]
    assert raised["client_errors"] == 0, raised
    assert raised["upstream_attempts"] <= 1.12 * raised["requests"], raised
    assert raised["envoy_retries"] == raised["requests"] // 10, raised
    assert result["wasm_bytes"] > result["noop_wasm_bytes"] > 0
