"""The benchmark command still works end to end: `bench/bench.py --quick` (about 15 s) measures
every variant, and its retry-effect run shows what the filter is for. The full benchmark is
`scripts/bench`, not part of the suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import paths

BENCH = paths.ROOT / "bench" / "bench.py"
VARIANTS = ["A GET", "B GET", "C GET", "A POST keyed", "B POST keyed", "D POST keyed",
            "D POST replay"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/bootstrap)")
def test_quick_benchmark_measures_every_variant_and_the_retry_effect(tmp_path):
    env = dict(os.environ, RESETGUARD_WASM=str(paths.wasm_path()),
               RESETGUARD_ENVOY=str(paths.envoy_binary()))
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "REPORT.md").read_text().count("| A plain Envoy, GET |") == 1

    summary = result["summary"]
    assert sorted(summary) == sorted(VARIANTS)
    for name, s in summary.items():
        assert s["rps"] > 100, (name, s)
        assert 1 < s["cpu_us"] < 10_000, (name, s)
        assert 0 < s["p50_ms"] <= s["p99_ms"], (name, s)
        assert s["socket_errors"] == 0, (name, s)
    # Everything but the replay run (409s while the key's first request is in flight) answers 2xx.
    assert all(s["non_2xx"] == 0 for n, s in summary.items() if n != "D POST replay"), summary

    retry = result["retry_effect"]
    # The upstream resets every tenth request once: plain Envoy shows exactly those failures...
    assert retry["plain"]["client_errors"] == retry["plain"]["requests"] // 10, retry["plain"]
    # ...resetguard retries each of them once, when the retry breaker lets it.
    raised = retry["filtered_raised"]
    assert raised["client_errors"] == 0, raised
    assert raised["upstream_attempts"] <= 1.12 * raised["requests"], raised
    assert raised["envoy_retries"] == raised["requests"] // 10, raised
    assert result["wasm_bytes"] > result["noop_wasm_bytes"] > 0
