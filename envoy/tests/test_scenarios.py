"""The shared scenario corpus (scenarios/*.json, format in scenarios/README.md) through a real
Envoy: every scenario whose `hosts` include `envoy`. A disagreement with the expectations fails.
Scenarios that `require` a capability the built filter rejects at on_configure are skipped with a
printed note."""

import os
from pathlib import Path

import pytest

from harness import paths, scenarios
from harness.capabilities import CAPABILITY_PROBES, probe

SCENARIO_DIR = Path(os.environ.get("RESETGUARD_SCENARIO_DIR", paths.SCENARIO_DIR))
FILES = sorted(SCENARIO_DIR.glob("*.json")) if SCENARIO_DIR.is_dir() else []


def _params():
    out = []
    for f in FILES:
        out.append(pytest.param(f, id=f.stem))
    return out or [pytest.param(None, id="no-scenarios")]


@pytest.mark.parametrize("path", _params())
def test_scenario_on_real_envoy(path, run_dir):
    if path is None:
        print(f"\nNOTE: no scenarios in {SCENARIO_DIR} yet")
        pytest.skip(f"no scenarios/*.json in {SCENARIO_DIR}")
    scenario = scenarios.load(path)  # a file that is not valid JSON fails here
    if not scenarios.applies_to_envoy(scenario):
        pytest.skip(f"{path.name}: hosts {scenario.get('hosts')} exclude envoy")
    for capability in scenario.get("requires", []):
        if capability in CAPABILITY_PROBES:
            supported, reason = probe(capability)
            if not supported:
                print(f"\nSKIP {path.name}: requires {capability!r}; {reason}")
                pytest.skip(f"{path.name} requires {capability!r}: {reason}")
    scenarios.run(scenario, run_dir)
