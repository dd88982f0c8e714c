"""Fixtures for the real-Envoy suite. Run: .venv/bin/python -m pytest -q envoy/tests"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

ENVOY_DIR = Path(__file__).resolve().parents[1]
if str(ENVOY_DIR) not in sys.path:
    sys.path.insert(0, str(ENVOY_DIR))

from harness import paths  # noqa: E402
from harness.envoy import Envoy, stop_all  # noqa: E402
from harness.etcd import Etcd  # noqa: E402
from harness.upstream import ChaosUpstream, DeadPort  # noqa: E402


def pytest_sessionstart(session):
    missing = []
    try:
        paths.require_envoy()
    except FileNotFoundError as e:
        missing.append(str(e))
    try:
        paths.require_wasm()
    except FileNotFoundError as e:
        missing.append(str(e))
    if missing:
        pytest.exit("resetguard real-Envoy suite cannot run:\n" + "\n".join(missing), returncode=1)
    paths.RUN_DIR.mkdir(parents=True, exist_ok=True)


def pytest_sessionfinish(session, exitstatus):
    stop_all()


def _run_dir(request) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
    d = paths.RUN_DIR / "tests" / f"{name}-{int(time.time() * 1000) % 10**8}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def run_dir(request) -> Path:
    return _run_dir(request)


@pytest.fixture
def upstream():
    up = ChaosUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def dead_port():
    d = DeadPort()
    yield d.port
    d.close()


@pytest.fixture
def envoy_factory(run_dir, request):
    """start(**Envoy kwargs) -> a started Envoy; everything started is stopped at teardown, and a
    failing test prints the tail of each Envoy's log."""
    started = []

    def start(**kwargs):
        kwargs.setdefault("run_dir", run_dir / f"envoy{len(started)}")
        e = Envoy(**kwargs)
        started.append(e)
        return e.start()

    yield start
    failed = getattr(request.node, "rep_call", None)
    for e in started:
        if failed is not None and failed.failed:
            print(f"\n--- {e.run_dir} log tail ---\n{e.log_tail(25)}")
            print("--- access log ---\n" + "\n".join(e.access_log()[-15:]))
        e.stop()


@pytest.fixture
def envoy(envoy_factory, upstream, dead_port):
    """Envoy with the filter and its default (empty) configuration in front of `upstream`."""
    return envoy_factory(plugin_config={}, upstream_port=upstream.port, dead_port=dead_port)


def _etcd(request, run_dir, size):
    cluster = Etcd(size, run_dir=run_dir / f"etcd{size}").start()
    yield cluster
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for m in cluster.members:
            print(f"\n--- etcd {m} log tail ---\n{m.log_tail(15)}")
    cluster.stop()


@pytest.fixture
def etcd(request, run_dir):
    """A single etcd member on loopback (data on tmpfs), stopped by PID at teardown."""
    yield from _etcd(request, run_dir, 1)


@pytest.fixture
def etcd_cluster(request, run_dir):
    """A 3-member etcd cluster on loopback: kill_leader(), lose_quorum(), restart() (harness/etcd.py)."""
    yield from _etcd(request, run_dir, 3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
