"""The scenario runner itself: known-good scenarios pass, and a wrong expectation is caught (so a
disagreement between the mock host and Envoy cannot pass silently)."""

import copy

import pytest

from harness import scenarios

SELFTEST = sorted((__import__("pathlib").Path(__file__).parent / "scenario_selftest").glob("*.json"))


@pytest.mark.parametrize("path", SELFTEST, ids=[p.stem for p in SELFTEST])
def test_selftest_scenario_passes(path, run_dir):
    scenarios.run(scenarios.load(path), run_dir)


def test_wrong_expectations_are_reported(run_dir):
    good = scenarios.load(next(p for p in SELFTEST if p.stem == "get-reset-twice-then-ok"))
    bad = copy.deepcopy(good)
    bad["requests"][0]["expect"].update({"upstream_attempts": 2, "outcome": "upstream_reset"})
    bad["expect_metrics"]["resetguard.retry.armed_full"] = 5
    with pytest.raises(AssertionError) as info:
        scenarios.run(bad, run_dir)
    text = str(info.value)
    assert "upstream saw 3 attempts, expected 2" in text
    assert "expected upstream_reset" in text
    assert "resetguard.retry.armed_full: expected +5" in text
