"""The demo exits by itself, stops what it started, and shows the filter's effect."""

import subprocess
import sys

from harness import paths


def test_demo_runs_and_exits():
    res = subprocess.run([sys.executable, str(paths.ENVOY_DIR / "demo.py"), "--gets", "60",
                          "--posts", "10"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout
    assert "without filter" in out and "with resetguard" in out
    line = next(l for l in out.splitlines() if "GET errors seen by the client" in l)
    without, with_, keyed = (int(x) for x in line.split()[-3:])
    assert without > 0 and with_ == 0 and keyed == 0, line
    # Unkeyed POSTs that reached the upstream stay failed; keyed ones are retried and saved.
    line = next(l for l in out.splitlines() if "POST errors seen by the client" in l)
    without, with_, keyed = (int(x) for x in line.split()[-3:])
    assert without == with_ and keyed == 0, line
    assert "re-sent all 10 POSTs: 10 answered 200" in out and ", 0 reached the upstream" in out, out
