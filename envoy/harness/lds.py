"""File-based dynamic LDS for configs/resetguard-lds.yaml: render the listener resource
(configs/lds/ingress-listener.yaml) and publish it the way Envoy's `watched_directory` expects, by
writing a temporary file in the watched directory and renaming it onto `lds.yaml` (atomic: Envoy
never reads a half-written file, and the move is the event that triggers the reload).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Optional

import yaml

from . import paths
from .envoy import Envoy, plugin_config_text, render_config

LISTENER_TEMPLATE = "lds/ingress-listener.yaml"
LDS_FILE = "lds.yaml"
# listener_manager counters that tell what happened to an LDS update.
LDS_STATS = ("listener_manager.lds.update_attempt", "listener_manager.lds.update_success",
             "listener_manager.lds.update_rejected", "listener_manager.lds.update_failure",
             "listener_manager.listener_modified", "listener_manager.listener_in_place_updated",
             "listener_manager.total_listeners_active", "listener_manager.total_listeners_warming",
             "listener_manager.total_listeners_draining")


def render_listener(plugin_config=None, *, listener_port: int = 0,
                    access_log_path: str = "/dev/null") -> str:
    return render_config(LISTENER_TEMPLATE, PLUGIN_CONFIG=plugin_config_text(plugin_config),
                         LISTENER_PORT=listener_port, ACCESS_LOG_PATH=access_log_path)


def publish(lds_dir: Path, text: str) -> Path:
    """Writes `text` to lds_dir/lds.yaml atomically (temporary file + fsync + rename)."""
    lds_dir.mkdir(parents=True, exist_ok=True)
    tmp = lds_dir / f".{LDS_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    target = lds_dir / LDS_FILE
    os.rename(tmp, target)
    return target


def static_bootstrap_with_listener(listener_text: str, **values) -> str:
    """resetguard-lds.yaml with the listener resource moved into static_resources (no LDS): what
    `envoy --mode validate` can check, since validate mode does not read LDS files."""
    boot = yaml.safe_load(render_config("resetguard-lds.yaml", **values))
    boot.pop("dynamic_resources", None)
    listener = yaml.safe_load(listener_text)["resources"][0]
    listener.pop("@type", None)
    boot["static_resources"]["listeners"] = [listener]
    return yaml.safe_dump(boot, sort_keys=False)


class LdsEnvoy(Envoy):
    """An Envoy on resetguard-lds.yaml whose listener (with the filter) comes from a watched file.
    `update(plugin_config)` publishes a new listener and waits until Envoy has processed it."""

    def __init__(self, *, plugin_config=None, run_dir: Optional[Path] = None, name: str = "lds",
                 **kwargs):
        run_dir = Path(run_dir or paths.RUN_DIR / f"{name}-{uuid.uuid4().hex[:8]}")
        self.lds_dir = run_dir / "lds"
        super().__init__(template="resetguard-lds.yaml", plugin_config=None, run_dir=run_dir,
                         name=name, template_values={"LDS_DIR": str(self.lds_dir)}, **kwargs)
        self.plugin_config = plugin_config
        self.listener_port = 0
        publish(self.lds_dir, self.listener_text(plugin_config))

    def listener_text(self, plugin_config) -> str:
        return render_listener(plugin_config, listener_port=self.listener_port,
                               access_log_path=str(self.access_log_path))

    def refresh_port(self) -> int:
        self.port = self._listener_port()
        return self.port

    def lds_stats(self) -> dict:
        got = self.stats("^listener_manager\\.")
        return {k: got.get(k, 0) for k in LDS_STATS}

    def update(self, plugin_config, timeout: float = 10.0) -> dict:
        """Publishes a listener with `plugin_config` (same address: port 0 stays port 0, and
        Envoy keeps the bound socket, so `self.port` stays valid; re-read with
        `refresh_port()`) and waits until Envoy
        counted the update as a success, a rejection or a failure. Returns the LDS stats delta."""
        before = self.lds_stats()
        publish(self.lds_dir, self.listener_text(plugin_config))
        keys = ("listener_manager.lds.update_success", "listener_manager.lds.update_rejected",
                "listener_manager.lds.update_failure")

        def settled():
            now = self.lds_stats()
            return now if any(now[k] > before[k] for k in keys) else None

        deadline = time.monotonic() + timeout
        now = None
        while now is None and time.monotonic() < deadline:
            now = settled()
            if now is None:
                time.sleep(0.05)
        now = now or self.lds_stats()
        return {k: now[k] - before[k] for k in LDS_STATS}
