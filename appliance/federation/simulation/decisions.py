"""The benchmark's targets, decided with their uncertainty: met, missed or undecided.

A target compares two methods on paired units: the same seed (same phantom patients, same
sampling seeds), and, where the target is about all sites, the same seed and site. The
difference ``A - B`` of each unit is one observation; the target is decided on the mean
difference and its **95 % t-interval** over the units, ``mean ± t(0.975, n-1) · s / √n``.

Why a t-interval and not the bootstrap of :mod:`models.intervals`: the units are few
(3 seeds, or 3 seeds x 4 sites) and the bootstrap's percentile interval over 3 values
can take at most 10 distinct resample means and comes out far too narrow (it never
reaches beyond the observed extremes), so it would decide targets on noise. The
t-interval is the textbook interval for a mean of few paired differences and widens with
small ``n`` as it should (``t = 4.30`` at 3 units). It assumes roughly normal
differences, which the per-unit mean Dice of a method pair meets well enough; a target
resting on one unit is never decided (no spread can be seen). No correction is made
for the several comparisons of a combined target; each part is read on its own interval.

Rules (``DICE_POINT`` = 0.01 on the 0-1 Dice scale):

- ``A within 1 point of B``: met when the whole interval of ``A - B`` lies above
  ``-DICE_POINT``, missed when it lies wholly below, else undecided. ``A >= B`` of the
  published claims is read this way too (non-inferiority with a one-point margin: an
  interval can never show a difference of exactly 0 or more);
- ``A > B``: met when the interval lies above 0, missed when it lies at or below 0,
  else undecided.

So a difference smaller than its own spread is never decided. A target over several
comparisons ("every federated method ...", "... and not worse overall") is met when
every part is met, missed when any part is missed, else undecided.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from appliance.errors import FederationError

#: "within 1 Dice point" of the issue and the papers: 0.01 on a 0-1 scale
DICE_POINT = 0.01

#: two-sided 95 % quantiles of Student's t by degrees of freedom (scipy is no dependency);
#: between the rows the next smaller df is used (wider: conservative)
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t_quantile(df: int) -> float:
    """The 97.5th percentile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise FederationError("a t-interval needs at least 2 units")
    return _T975[max(d for d in _T975 if d <= df)]


class Verdict(StrEnum):
    MET = "met"
    MISSED = "missed"
    UNDECIDED = "undecided"


class Rule(StrEnum):
    """How a difference ``A - B`` decides a target (see the module docstring)."""

    WITHIN_POINT = "within 1 point"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Difference:
    """The mean of ``n`` paired differences and its 95 % t-interval (``±inf`` with fewer
    than 2 units, ``nan`` with none)."""

    mean: float
    low: float
    high: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise FederationError("a difference rests on n >= 0 units")
        if self.n and not (self.low <= self.mean <= self.high):
            raise FederationError(f"interval [{self.low}, {self.high}] misses {self.mean}")

    @classmethod
    def of(cls, values: Sequence[float]) -> Difference:
        """Paired differences (one per unit) -> mean and t-interval."""
        data = [float(v) for v in values]
        if not all(math.isfinite(v) for v in data):
            raise FederationError("paired differences must be finite numbers")
        n = len(data)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = float(np.mean(data))
        if n == 1:
            return cls(mean, -math.inf, math.inf, 1)
        half = t_quantile(n - 1) * float(np.std(data, ddof=1)) / math.sqrt(n)
        return cls(mean, mean - half, mean + half, n)

    def to_dict(self) -> dict[str, Any]:
        def num(v: float) -> float | str | None:
            return None if math.isnan(v) else (v if math.isfinite(v) else str(v))

        return {"mean": num(self.mean), "low": num(self.low), "high": num(self.high), "n": self.n}


def decide(difference: Difference, rule: Rule) -> Verdict:
    """The verdict of ``A - B`` under ``rule`` (see the module docstring)."""
    if difference.n < 2:
        return Verdict.UNDECIDED
    bound = -DICE_POINT if rule is Rule.WITHIN_POINT else 0.0
    if difference.low > bound:
        return Verdict.MET
    if rule is Rule.WITHIN_POINT and difference.high < bound:
        return Verdict.MISSED
    if rule is Rule.GREATER and difference.high <= bound:
        return Verdict.MISSED
    return Verdict.UNDECIDED


def combine(verdicts: Sequence[Verdict]) -> Verdict:
    """All parts met: met; any part missed: missed; else (or no part) undecided."""
    if verdicts and all(v is Verdict.MET for v in verdicts):
        return Verdict.MET
    if any(v is Verdict.MISSED for v in verdicts):
        return Verdict.MISSED
    return Verdict.UNDECIDED


@dataclass(frozen=True, slots=True)
class Decision:
    """One target (or one comparison of a combined target): what was compared, the
    difference with its interval, and the verdict."""

    name: str
    verdict: Verdict
    #: what the units and the figure are ("Dice per seed and site", ...)
    measure: str = ""
    rule: Rule | None = None
    difference: Difference | None = None
    parts: tuple[Decision, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.parts and self.verdict is not combine([p.verdict for p in self.parts]):
            raise FederationError(f"{self.name}: the verdict must combine its parts'")
        if (
            not self.parts
            and self.difference is not None
            and self.rule is not None
            and self.verdict is not decide(self.difference, self.rule)
        ):
            raise FederationError(f"{self.name}: the verdict must follow the rule")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "measure": self.measure,
            "rule": self.rule.value if self.rule is not None else None,
            "difference": self.difference.to_dict() if self.difference is not None else None,
            "parts": [p.to_dict() for p in self.parts],
            "note": self.note,
        }


# --- figures of a record ----------------------------------------------------------------

Record = Mapping[str, Any]


def site_dice(record: Record, site: str) -> float | None:
    """A site's Dice (mean over its held-out cases of the mean over labels)."""
    return float(record["sites"][site]["dice_mean"])


def pooled_recall(record: Record, size_bin: str) -> float | None:
    """Lesion recall in ``size_bin`` over every site's held-out lesions (``None``: none)."""
    lesions = detected = 0
    for site in record["sites"].values():
        lesions += int(site.get("lesions", {}).get(size_bin, 0))
        detected += int(site.get("detected", {}).get(size_bin, 0))
    return detected / lesions if lesions else None


def _by_seed(records: Sequence[Record], method: str) -> dict[int, Record]:
    return {int(r["seed"]): r for r in records if r["method"] == method}


def paired(
    records: Sequence[Record],
    a: str,
    b: str,
    figure: Callable[[Record, str], float | None] | Callable[[Record], float | None],
    sites: Sequence[str] | None,
) -> Difference:
    """``a - b`` per seed (``sites`` None: ``figure(record)``) or per seed and site
    (``figure(record, site)``); units where either figure is missing are left out."""
    left, right = _by_seed(records, a), _by_seed(records, b)
    values: list[float] = []
    for seed in sorted(set(left) & set(right)):
        for site in sites if sites is not None else [None]:
            args = (site,) if site is not None else ()
            x = figure(left[seed], *args)
            y = figure(right[seed], *args)
            if x is not None and y is not None:
                values.append(float(x) - float(y))
    return Difference.of(values)


def compare(
    name: str,
    records: Sequence[Record],
    a: str,
    b: str,
    rule: Rule,
    *,
    measure: str,
    site: str | None = None,
    all_sites: Sequence[str] | None = None,
    figure: Callable[[Record], float | None] | None = None,
) -> Decision:
    """One comparison: Dice of ``a`` against ``b`` on ``site`` (per seed), on every site of
    ``all_sites`` (per seed and site), or ``figure`` per seed."""
    methods = {r["method"] for r in records}
    missing = [m for m in (a, b) if m not in methods]
    if missing:
        return Decision(
            name, Verdict.UNDECIDED, measure, rule, note=f"{', '.join(missing)} not run"
        )
    if figure is not None:
        diff = paired(records, a, b, figure, None)
    elif site is not None:
        diff = paired(records, a, b, lambda r: site_dice(r, site), None)
    else:
        diff = paired(records, a, b, site_dice, all_sites)
    return Decision(name, decide(diff, rule), measure, rule, diff)


def _all(name: str, parts: Sequence[Decision], note: str = "") -> Decision:
    return Decision(name, combine([p.verdict for p in parts]), parts=tuple(parts), note=note)


# --- the six targets ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TargetContext:
    """What the targets need to know of the config."""

    sites: tuple[str, ...]
    federated: tuple[str, ...]
    most_shifted_site: str
    smallest_site: str
    methods: tuple[str, ...] = field(default=())


def best_federated_near_centralised(records: Sequence[Record], c: TargetContext) -> Decision:
    """(1) The best federated method (highest mean Dice) within 1 point of centralised,
    paired per seed and site. The best is picked on the same data, which favours it."""
    name = "(1) best federated method within 1 Dice point of centralised"
    fed = [m for m in c.federated if any(r["method"] == m for r in records)]
    if not fed:
        return Decision(name, Verdict.UNDECIDED, note="no federated method run")

    def mean_dice(method: str) -> float:
        rows = [r for r in records if r["method"] == method]
        return float(np.mean([site_dice(r, s) for r in rows for s in c.sites]))

    best = max(fed, key=mean_dice)
    part = compare(
        f"{best} - centralised",
        records,
        best,
        "centralised",
        Rule.WITHIN_POINT,
        measure="Dice per seed and site",
        all_sites=c.sites,
    )
    return Decision(
        name,
        part.verdict,
        part.measure,
        part.rule,
        part.difference,
        note=f"best federated method by mean Dice: {best}"
        + (f"; {part.note}" if part.note else ""),
    )


def fedbn_on_shifted_site(records: Sequence[Record], c: TargetContext) -> Decision:
    """(2) fedbn >= fedavg on the most shifted site (read as non-inferiority within one
    Dice point), paired per seed."""
    site = c.most_shifted_site
    return compare(
        f"(2) fedbn >= fedavg on the most shifted site ({site}; within 1 point)",
        records,
        "fedbn",
        "fedavg",
        Rule.WITHIN_POINT,
        measure=f"Dice on {site} per seed",
        site=site,
    )


def fedgs_small_lesions(records: Sequence[Record], c: TargetContext) -> Decision:
    """(3) fedgs > fedavg on lesion recall under 10 mm (pooled over the sites, per seed)
    and not worse overall (Dice within 1 point, per seed and site)."""
    from models.lesion_size import LesionSizeBin

    small = LesionSizeBin.SMALL
    recall = compare(
        f"fedgs > fedavg: recall of lesions {small.description}",
        records,
        "fedgs",
        "fedavg",
        Rule.GREATER,
        measure=f"recall {small.description}, all sites pooled, per seed",
        figure=lambda r: pooled_recall(r, small.value),
    )
    overall = compare(
        "fedgs not worse than fedavg overall (within 1 point)",
        records,
        "fedgs",
        "fedavg",
        Rule.WITHIN_POINT,
        measure="Dice per seed and site",
        all_sites=c.sites,
    )
    return _all(
        f"(3) fedgs > fedavg on lesion recall {small.description}, and not worse overall",
        [recall, overall],
    )


def federated_beat_local_on_smallest(records: Sequence[Record], c: TargetContext) -> Decision:
    """(4) Every federated method > local-only on the smallest site, paired per seed."""
    site = c.smallest_site
    parts = [
        compare(
            f"{m} > local",
            records,
            m,
            "local",
            Rule.GREATER,
            measure=f"Dice on {site} per seed",
            site=site,
        )
        for m in c.federated
    ]
    return _all(f"(4) every federated method > local-only on the smallest site ({site})", parts)


def cwt_near_fedavg(records: Sequence[Record], c: TargetContext) -> Decision:
    """(5) cwt within 1 Dice point of fedavg (the cyclic-transfer claim), per seed and site."""
    return compare(
        "(5) cwt within 1 Dice point of fedavg",
        records,
        "cwt",
        "fedavg",
        Rule.WITHIN_POINT,
        measure="Dice per seed and site",
        all_sites=c.sites,
    )


def everyone_beats_pretrained(records: Sequence[Record], c: TargetContext) -> Decision:
    """(6) Every method > the initial weights without fine-tuning on the most shifted site
    (site_b in the shipped configs), paired per seed."""
    site = c.most_shifted_site
    name = f"(6) every method > pretrained without fine-tuning on {site}"
    if not any(r["method"] == "pretrained" for r in records):
        return Decision(name, Verdict.UNDECIDED, note="pretrained not run (no initial model)")
    others = [m for m in c.methods if m != "pretrained"]
    parts = [
        compare(
            f"{m} > pretrained",
            records,
            m,
            "pretrained",
            Rule.GREATER,
            measure=f"Dice on {site} per seed",
            site=site,
        )
        for m in others
    ]
    return _all(name, parts)


TARGETS: tuple[Callable[[Sequence[Record], TargetContext], Decision], ...] = (
    best_federated_near_centralised,
    fedbn_on_shifted_site,
    fedgs_small_lesions,
    federated_beat_local_on_smallest,
    cwt_near_fedavg,
    everyone_beats_pretrained,
)


def decide_targets(records: Sequence[Record], context: TargetContext) -> list[Decision]:
    """The six targets on one task's records (every seed and method)."""
    return [target(records, context) for target in TARGETS]
