"""What the built filter accepts, asked from a real Envoy (`--mode validate` runs on_configure)."""

from __future__ import annotations

import functools

from . import paths
from .envoy import plugin_config_text, render_config, validate_text

# A minimal config that uses each optional capability (adjust names here if the contract moves).
CAPABILITY_PROBES = {
    "idempotency": {"idempotency": {"mode": "enforce"}},
}


@functools.lru_cache(maxsize=None)
def probe(capability: str) -> tuple:
    """(supported, reason). Unsupported means the filter rejects the section at on_configure."""
    config = CAPABILITY_PROBES[capability]
    text = render_config("resetguard.yaml", PLUGIN_CONFIG=plugin_config_text(config))
    res = validate_text(text, paths.RUN_DIR / "probes", f"probe-{capability}")
    if res.returncode == 0:
        return True, ""
    out = (res.stdout + res.stderr).splitlines()
    line = next((l for l in out if "resetguard" in l and capability in l), None)
    line = line or next((l for l in out if "[error]" in l or "[critical]" in l), "(no error line)")
    i = line.find("resetguard: ")
    detail = line[i:] if i >= 0 else line.strip()[-220:]
    return False, (f"the filter rejects the `{capability}` config section "
                   f"(envoy --mode validate says: {detail.strip()})")


def skip_unless(capability: str):
    import pytest
    supported, reason = probe(capability)
    if not supported:
        print(f"\nSKIP: {reason}")
        pytest.skip(reason)
