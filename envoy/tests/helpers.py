"""Shared helpers for the tests."""

from __future__ import annotations

import time


def counters_delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if after.get(k, 0) != before.get(k, 0)}


def wait_outcomes(envoy, before: dict, n: int, timeout: float = 5.0) -> dict:
    """Waits until n more outcome counters were incremented (on_log runs after the response)."""
    def done():
        now = envoy.filter_counters()
        total = sum(v for k, v in counters_delta(before, now).items()
                    if k.startswith("resetguard.outcome."))
        return now if total >= n else None
    got = envoy.wait_for(done, timeout=timeout)
    return got if got else envoy.filter_counters()


def wait_access_log(envoy, n: int, timeout: float = 5.0) -> list:
    envoy.wait_for(lambda: len(envoy.access_log()) >= n, timeout=timeout)
    return envoy.access_log()


def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
