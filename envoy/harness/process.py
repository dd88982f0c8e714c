"""Stopping a child process the same way everywhere: SIGTERM, then SIGKILL if it is still
there after the grace period."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """Stops `proc` (a no-op if it already exited) and reaps it."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
