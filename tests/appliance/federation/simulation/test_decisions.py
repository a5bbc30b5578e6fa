"""Targets decided with their uncertainty: a paired difference and its 95 % t-interval
decide met / missed / undecided; a difference inside its own spread is undecided; the six
targets of the benchmark on synthetic records."""

from __future__ import annotations

import math
from typing import Any

import pytest

from appliance.errors import FederationError
from appliance.federation.simulation.decisions import (
    DICE_POINT,
    Decision,
    Difference,
    Rule,
    TargetContext,
    Verdict,
    combine,
    decide,
    decide_targets,
    t_quantile,
)

SITES = ("site_a", "site_b", "site_c", "site_d")
FEDERATED = ("fedavg", "fedprox", "fedbn", "cwt", "swt", "gossip", "fedgs")
CONTEXT = TargetContext(
    sites=SITES,
    federated=FEDERATED,
    most_shifted_site="site_b",
    smallest_site="site_d",
    methods=("pretrained", "local", "centralised", *FEDERATED),
)


def test_the_interval_is_a_t_interval_over_the_paired_units() -> None:
    diff = Difference.of([0.01, 0.02, 0.03])
    # mean 0.02, sd 0.01, t(0.975, 2) = 4.303
    assert diff.mean == pytest.approx(0.02) and diff.n == 3
    assert diff.high - diff.mean == pytest.approx(4.303 * 0.01 / math.sqrt(3))
    assert diff.low == pytest.approx(2 * diff.mean - diff.high)
    assert t_quantile(11) == 2.201 and t_quantile(35) == 2.042  # between rows: wider
    one = Difference.of([0.5])
    assert (one.low, one.high) == (-math.inf, math.inf)
    assert math.isnan(Difference.of([]).mean)
    with pytest.raises(FederationError, match="finite"):
        Difference.of([0.1, math.nan])


def test_a_difference_inside_its_interval_is_undecided() -> None:
    # a clear mean difference, but the units scatter more than it: never decided
    noisy = Difference.of([0.08, -0.05, 0.06])
    assert noisy.low < 0 < noisy.mean < noisy.high
    assert decide(noisy, Rule.GREATER) is Verdict.UNDECIDED
    noisy_gap = Difference.of([-0.05, 0.04, -0.03])
    assert noisy_gap.low < -DICE_POINT < noisy_gap.high
    assert decide(noisy_gap, Rule.WITHIN_POINT) is Verdict.UNDECIDED
    # one unit shows no spread: undecided whatever its value
    assert decide(Difference.of([0.4]), Rule.GREATER) is Verdict.UNDECIDED


def test_clear_differences_are_met_or_missed() -> None:
    better = Difference.of([0.05, 0.06, 0.055])
    worse = Difference.of([-0.05, -0.06, -0.055])
    assert decide(better, Rule.GREATER) is Verdict.MET
    assert decide(worse, Rule.GREATER) is Verdict.MISSED
    assert decide(better, Rule.WITHIN_POINT) is Verdict.MET
    assert decide(worse, Rule.WITHIN_POINT) is Verdict.MISSED
    # "within 1 point": slightly worse, but surely by less than a point, is met
    close = Difference.of([-0.004, -0.005, -0.006])
    assert decide(close, Rule.WITHIN_POINT) is Verdict.MET
    assert decide(close, Rule.GREATER) is Verdict.MISSED
    # exactly zero everywhere is not "greater"
    assert decide(Difference.of([0.0, 0.0, 0.0]), Rule.GREATER) is Verdict.MISSED


def test_combined_targets_and_consistent_decisions() -> None:
    met, missed, open_ = Verdict.MET, Verdict.MISSED, Verdict.UNDECIDED
    assert combine([met, met]) is met
    assert combine([met, open_]) is open_
    assert combine([open_, missed, met]) is missed
    assert combine([]) is open_
    with pytest.raises(FederationError, match="follow the rule"):
        Decision("x", met, rule=Rule.GREATER, difference=Difference.of([-0.1, -0.2, -0.1]))
    part = Decision("p", missed)
    with pytest.raises(FederationError, match="combine"):
        Decision("x", met, parts=(part,))


def _site(dice: float, small_found: int = 2) -> dict[str, Any]:
    return {
        "cases": 2,
        "dice": {"Liver": dice, "Liver tumour": dice},
        "dice_mean": dice,
        "lesions": {"small": 4, "medium": 2, "large": 2},
        "detected": {"small": small_found, "medium": 2, "large": 2},
    }


def _record(
    method: str, seed: int, dice: float, *, small_found: int = 2, **site: float
) -> dict[str, Any]:
    jitter = 0.003 * seed  # the seeds move every method alike: paired units
    return {
        "task": "liver_ct",
        "seed": seed,
        "method": method,
        "sites": {
            s: _site(site.get(s, dice) + jitter + 0.001 * i * seed, small_found)
            for i, s in enumerate(SITES)
        },
    }


def _records(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    base: dict[str, dict[str, Any]] = {
        "pretrained": {"dice": 0.60},
        "local": {"dice": 0.70, "site_d": 0.55},
        "centralised": {"dice": 0.80},
        "fedavg": {"dice": 0.795, "site_b": 0.75},
        "fedprox": {"dice": 0.79},
        "fedbn": {"dice": 0.79, "site_b": 0.78},
        "cwt": {"dice": 0.792},
        "swt": {"dice": 0.78},
        "gossip": {"dice": 0.77},
        "fedgs": {"dice": 0.793, "small_found": 4},
    }
    for method, change in overrides.items():
        base[method] = {**base[method], **change}
    return [
        _record(method, seed, **kwargs) for seed in (0, 1, 2) for method, kwargs in base.items()
    ]


def test_the_six_targets_met() -> None:
    decisions = decide_targets(_records(), CONTEXT)
    assert [d.verdict for d in decisions] == [Verdict.MET] * 6
    first = decisions[0]
    # fedavg loses on site_b, so fedgs (0.793 everywhere) is the best
    assert "best federated method by mean Dice: fedgs" in first.note
    assert first.difference is not None and first.difference.n == 12  # seeds x sites
    assert first.difference.mean == pytest.approx(-0.007)
    assert decisions[1].difference is not None and decisions[1].difference.n == 3
    assert len(decisions[3].parts) == len(FEDERATED)
    assert len(decisions[5].parts) == 9  # every method but pretrained
    assert decisions[2].parts[0].difference is not None
    assert decisions[2].parts[0].difference.mean == pytest.approx(0.5)  # recall 1.0 vs 0.5


def test_the_six_targets_missed() -> None:
    records = _records(
        centralised={"dice": 0.90},
        fedbn={"site_b": 0.70},
        fedgs={"small_found": 1},
        cwt={"dice": 0.70, "site_d": 0.50},
        swt={"site_b": 0.55},
    )
    decisions = decide_targets(records, CONTEXT)
    assert [d.verdict for d in decisions] == [Verdict.MISSED] * 6
    by_name = {p.name: p.verdict for p in decisions[3].parts}
    assert by_name["cwt > local"] is Verdict.MISSED and by_name["fedavg > local"] is Verdict.MET
    assert {p.name for p in decisions[5].parts if p.verdict is Verdict.MISSED} == {
        "swt > pretrained"
    }


def test_targets_are_undecided_without_their_runs_or_on_noise() -> None:
    records = [r for r in _records() if r["method"] in ("local", "fedbn", "pretrained")]
    decisions = decide_targets(records, CONTEXT)
    assert decisions[0].verdict is Verdict.UNDECIDED  # no centralised
    assert decisions[1].verdict is Verdict.UNDECIDED and "fedavg not run" in decisions[1].note
    # cwt's gap to fedavg scatters across seeds more than it is: undecided
    noisy = _records()
    for r in noisy:
        if r["method"] == "cwt":
            for site in r["sites"].values():
                site["dice_mean"] += (-0.05, 0.04, -0.03)[r["seed"]]
    assert decide_targets(noisy, CONTEXT)[4].verdict is Verdict.UNDECIDED
