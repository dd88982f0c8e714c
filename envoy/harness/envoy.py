"""Envoy process management: render a bootstrap, spawn Envoy, wait for readiness, read /stats,
the access log and Envoy's own log, and always stop what was started.

Envoy sets PR_SET_PDEATHSIG(SIGTERM): it is spawned from the long-lived Python process that owns
it (pytest, the demo) and dies with it. Ports: admin and listener bind 127.0.0.1 port 0, the
real ports are read back (`--admin-address-path`, admin `/listeners`), so parallel runs cannot
collide; `--use-dynamic-base-id` keeps their shared-memory regions apart.
"""

from __future__ import annotations

import atexit
import json
import re
import string
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional, Union

from . import paths
from .process import terminate

_RUNNING: set = set()
_RUNNING_LOCK = threading.Lock()

# Envoy's log line: [time][pid][level][component] [source] message
_LOG_LINE = re.compile(r"^\[[^\]]*\]\[\d+\]\[(\w+)\]\[(\w+)\]")
LEVELS = ["trace", "debug", "info", "warning", "error", "critical"]
_SCENARIO_LEVEL = {"trace": "trace", "debug": "debug", "info": "info", "warn": "warning",
                   "warning": "warning", "error": "error", "critical": "critical"}


# The filter flushes its counters to Envoy every 250 ms (filter/src/metrics.rs, FLUSH_PERIOD_MS):
# /stats is exact that long after the last request.
FILTER_FLUSH_WAIT_S = 0.3


class EnvoyError(RuntimeError):
    pass


def plugin_config_text(config: Union[None, str, dict]) -> str:
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    return json.dumps(config, separators=(",", ":"))


def render_config(template: str, **values) -> str:
    """Fills ${NAME} placeholders of a template under envoy/configs (or an absolute path)."""
    path = Path(template)
    if not path.is_absolute():
        path = paths.CONFIG_DIR / template
    text = path.read_text()
    defaults = {
        "ADMIN_PORT": 0, "LISTENER_PORT": 0, "UPSTREAM_PORT": 9, "DEAD_PORT": 9,
        "WASM_PATH": str(paths.wasm_path()), "PLUGIN_CONFIG": "",
        "ACCESS_LOG_PATH": "/dev/null", "UPSTREAM_IDLE_TIMEOUT": "60s",
        # resetguard-lds.yaml: the directory holding the listener resource file (harness/lds.py).
        "LDS_DIR": str(paths.RUN_DIR / "lds-unset"),
        # resetguard.yaml: "true" turns off the filter that holds keyed requests from the router
        # until resetguard decided (Envoy(hold_keyed_requests=False)).
        "KEYED_HOLD_DISABLED": "false",
        # resetguard-etcd.yaml: the etcd members as a YAML flow list of lb_endpoints
        # (harness/etcd.py, Etcd.envoy_endpoints()); by default one member on etcd's usual port.
        "ETCD_ENDPOINTS": "[{endpoint: {address: {socket_address: "
                          "{address: 127.0.0.1, port_value: 2379}}}}]",
        # resetguard-etcd.yaml: the etcd cluster's health_checks (harness/etcd.py,
        # ENVOY_HEALTH_CHECKS); none by default.
        "ETCD_HEALTH_CHECKS": "[]",
    }
    defaults.update({k: v for k, v in values.items() if v is not None})
    # The plugin JSON goes into a YAML double-quoted scalar; a JSON string literal is one.
    defaults["PLUGIN_CONFIG"] = json.dumps(str(defaults["PLUGIN_CONFIG"]))
    out = string.Template(text).safe_substitute({k: str(v) for k, v in defaults.items()})
    for line in out.splitlines():
        if not line.lstrip().startswith("#") and re.search(r"\$\{[A-Z_]+\}", line):
            raise EnvoyError(f"unfilled placeholder in {path.name}: {line.strip()}")
    return out


def validate(config_file: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `envoy --mode validate` (which loads the Wasm VM and runs on_configure)."""
    envoy = paths.require_envoy()
    return subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config_file), "--use-dynamic-base-id",
         "-l", "info"],
        capture_output=True, text=True, timeout=timeout)


def validate_text(config_text: str, run_dir: Path, name: str = "validate") -> subprocess.CompletedProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{name}-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(config_text)
    return validate(path)


def parse_stats_text(text: str) -> dict:
    """Parses admin /stats plain text into {name: int} (histograms are skipped)."""
    out = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if not sep:
            continue
        try:
            out[name] = int(value)
        except ValueError:
            continue
    return out


def register_running(process) -> None:
    """Tracks anything with a `stop()` (an Envoy, an etcd cluster: harness/etcd.py) so that
    `stop_all()` stops it, at exit and at the end of a pytest session."""
    with _RUNNING_LOCK:
        _RUNNING.add(process)


def unregister_running(process) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(process)


def stop_all() -> None:
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for e in running:
        e.stop()


atexit.register(stop_all)


class Envoy:
    def __init__(self, *, template: str = "resetguard.yaml", plugin_config=None,
                 upstream_port: int = 9, dead_port: int = 9, idle_timeout: str = "60s",
                 concurrency: int = 1, run_dir: Optional[Path] = None, name: str = "envoy",
                 log_level: str = "info", extra_args: tuple = (),
                 template_values: Optional[dict] = None, hold_keyed_requests: bool = True):
        paths.require_envoy()
        if "resetguard" in template:
            paths.require_wasm()
        self.name = name
        self.run_dir = Path(run_dir or paths.RUN_DIR / f"{name}-{uuid.uuid4().hex[:8]}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.run_dir / "envoy.yaml"
        self.access_log_path = self.run_dir / "access.log"
        self.log_path = self.run_dir / "envoy.log"
        self.admin_address_path = self.run_dir / "admin.address"
        self.base_id_path = self.run_dir / "base-id"
        self.plugin_config = plugin_config
        self.concurrency = concurrency
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        # hold_keyed_requests=False: resetguard.yaml without its keyed-request hold (the buffer
        # filter between resetguard and the router), to measure what the upstream sees without it.
        values = {"KEYED_HOLD_DISABLED": "false" if hold_keyed_requests else "true"}
        values.update(template_values or {})
        self.config_text = render_config(
            template, PLUGIN_CONFIG=plugin_config_text(plugin_config), UPSTREAM_PORT=upstream_port,
            DEAD_PORT=dead_port, UPSTREAM_IDLE_TIMEOUT=idle_timeout,
            ACCESS_LOG_PATH=str(self.access_log_path), **values)
        self.config_path.write_text(self.config_text)
        self.proc: Optional[subprocess.Popen] = None
        self.admin_port: Optional[int] = None
        self.port: Optional[int] = None
        self._log_file = None

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> "Envoy":
        for p in (self.admin_address_path, self.access_log_path):
            if p.exists():
                p.unlink()
        self.access_log_path.touch()
        self._log_file = open(self.log_path, "ab")
        cmd = [str(paths.envoy_binary()), "-c", str(self.config_path),
               "--concurrency", str(self.concurrency), "--use-dynamic-base-id",
               "--base-id-path", str(self.base_id_path),
               "--admin-address-path", str(self.admin_address_path),
               "-l", self.log_level, "--drain-time-s", "1", "--parent-shutdown-time-s", "2",
               "--file-flush-interval-msec", "50",
               *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, cwd=str(self.run_dir))
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyError(f"Envoy exited with {self.proc.returncode} during start-up; "
                                 f"log tail:\n{self.log_tail()}")
            if self.admin_port is None and self.admin_address_path.exists():
                text = self.admin_address_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port is not None:
                try:
                    status, body = self.admin_get("/ready", timeout=1)
                    if status == 200 and body.strip() == "LIVE":
                        self.port = self._listener_port()
                        return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.05)
        raise EnvoyError(f"Envoy not ready within {timeout}s; log tail:\n{self.log_tail()}")

    def _listener_port(self) -> int:
        _, body = self.admin_get("/listeners?format=json")
        data = json.loads(body)
        for status in data.get("listener_statuses", []):
            addr = status["local_address"]["socket_address"]
            return int(addr["port_value"])
        raise EnvoyError(f"no listener in /listeners: {body}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- admin ------------------------------------------------------------------------------------
    def admin_get(self, path: str, timeout: float = 10):
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def admin_post(self, path: str, timeout: float = 10):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", data=b"",
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")

    def stats(self, filter_regex: Optional[str] = None) -> dict:
        q = "/stats"
        if filter_regex:
            q += "?filter=" + urllib.request.quote(filter_regex)
        _, body = self.admin_get(q)
        return parse_stats_text(body)

    def prometheus(self) -> str:
        return self.admin_get("/stats?format=prometheus")[1]

    def filter_counters(self) -> dict:
        """The filter's counters by the names it defines (`resetguard.*`), whatever prefix Envoy
        adds in /stats (Envoy 1.40 shows proxy-wasm metrics under `wasmcustom.`). Read after one
        flush period: each worker hands its counts to Envoy on its root context's tick."""
        time.sleep(FILTER_FLUSH_WAIT_S)
        out = {}
        for name, value in self.stats("resetguard").items():
            i = name.find("resetguard.")
            if i >= 0:
                out[name[i:]] = value
        return out

    def counter(self, name: str) -> int:
        if "resetguard." in name:
            time.sleep(FILTER_FLUSH_WAIT_S)
        return self.stats(re.escape(name) + "$").get(name, 0)

    def wait_for(self, predicate, timeout: float = 5.0, interval: float = 0.05):
        """Polls predicate() until truthy (returns it) or the timeout passes (returns last)."""
        deadline = time.monotonic() + timeout
        value = predicate()
        while not value and time.monotonic() < deadline:
            time.sleep(interval)
            value = predicate()
        return value

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def memory(self) -> dict:
        return json.loads(self.admin_get("/memory")[1])

    # -- logs -------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wasm_log_lines(self, since: int = 0, min_level: str = "warning") -> list:
        """Lines of the [wasm] component at min_level or above (the filter's own log output)."""
        floor = LEVELS.index(_SCENARIO_LEVEL.get(min_level, min_level))
        out = []
        for line in self.log_text()[since:].splitlines():
            m = _LOG_LINE.match(line)
            if m and m.group(2) == "wasm" and m.group(1) in LEVELS and \
                    LEVELS.index(m.group(1)) >= floor:
                out.append(line)
        return out

    def wasm_lines_above(self, max_level: str, since: int = 0) -> list:
        """Filter log lines strictly above max_level (e.g. "info" -> warnings and errors)."""
        level = _SCENARIO_LEVEL.get(max_level, max_level)
        nxt = LEVELS[min(LEVELS.index(level) + 1, len(LEVELS) - 1)]
        if level == "critical":
            return []
        return self.wasm_log_lines(since, nxt)

    def access_log(self) -> list:
        try:
            return self.access_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
