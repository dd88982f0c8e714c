"""The shared scenario corpus (scenarios/*.json, format in scenarios/README.md) through a real
Envoy: every scenario whose `hosts` include `envoy`. A disagreement with the expectations fails."""

import os
from pathlib import Path

import pytest

from harness import paths, scenarios

SCENARIO_DIR = Path(os.environ.get("RESETGUARD_SCENARIO_DIR", paths.SCENARIO_DIR))
FILES = sorted(SCENARIO_DIR.glob("*.json")) if SCENARIO_DIR.is_dir() else []


def test_the_corpus_is_there():
    assert FILES, f"no scenarios/*.json in {SCENARIO_DIR}"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario_on_real_envoy(path, run_dir):
    scenario = scenarios.load(path)  # a file that is not valid JSON fails here
    if not scenarios.applies_to_envoy(scenario):
        pytest.skip(f"{path.name}: hosts {scenario.get('hosts')} exclude envoy")
    scenarios.run(scenario, run_dir)
