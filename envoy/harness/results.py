"""envoy/.run/results.json: figures measured by the suite and the demo, for the README."""

from __future__ import annotations

import json
import threading

from . import paths

_LOCK = threading.Lock()


def record(section: str, data) -> None:
    path = paths.RUN_DIR / "results.json"
    with _LOCK:
        paths.RUN_DIR.mkdir(parents=True, exist_ok=True)
        try:
            current = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            current = {}
        current[section] = data
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
