"""95 % intervals for evaluation figures: a seeded percentile bootstrap over cases.

scipy is not a dependency, so there is no t-quantile function; and most headline figures
are ratios of sums over cases (pooled Dice, lesion recall), for which a t-interval does
not fit anyway. Every figure is written as ``Σ numerator / Σ denominator`` over the cases
it rests on (a plain mean is ``numerator = value, denominator = 1``; a mean over some
cases puts 0/0 for the others). :func:`bootstrap_indices` draws ``resamples`` resamples of
the cases with replacement from a seeded generator, once per summary, and
:func:`ratio_interval` takes the 2.5th and 97.5th percentiles of the figure over those
resamples (resamples where the denominator sums to 0 are left out). The same seed and
cases give the same interval; it narrows roughly as ``1/√n`` with the number of cases.
With one case the interval is that case's value (no spread can be seen): read ``n``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: Resamples of the bootstrap and the seed of its generator (summaries use these).
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    """A figure (``value``) with its bootstrap interval ``[low, high]`` over ``n`` cases
    (all ``nan`` when no case carries the figure)."""

    value: float
    low: float
    high: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise InputError("an interval rests on n >= 0 cases")
        finite = [math.isfinite(v) for v in (self.value, self.low, self.high)]
        if any(finite) and not all(finite):
            raise InputError("an interval is either all finite or all nan")
        if all(finite) and self.low > self.high:
            raise InputError(f"interval low {self.low} is above high {self.high}")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def bootstrap_indices(
    cases: int, *, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES
) -> np.ndarray:
    """``(resamples, cases)`` case indices drawn with replacement (seeded)."""
    if cases < 1:
        raise InputError("a bootstrap needs at least one case")
    if resamples < 1:
        raise InputError("a bootstrap needs at least one resample")
    return np.random.default_rng(seed).integers(0, cases, size=(resamples, cases))


def ratio_interval(
    numerator: np.ndarray,
    denominator: np.ndarray,
    indices: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
) -> Interval:
    """``Σ numerator / Σ denominator`` over the cases and its percentile interval over the
    resamples ``indices`` (from :func:`bootstrap_indices`)."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise InputError("numerator and denominator must be 1-D arrays of one length")
    if indices.ndim != 2 or indices.shape[1] != num.size:
        raise InputError("bootstrap indices must be (resamples, cases)")
    if not 0.0 < confidence < 1.0:
        raise InputError("confidence must be in (0, 1)")
    if not (np.isfinite(num).all() and np.isfinite(den).all() and (den >= 0).all()):
        raise InputError("figures need finite numerators and denominators >= 0")
    n = int(np.count_nonzero(den))
    total = float(den.sum())
    if total <= 0.0:
        return Interval(math.nan, math.nan, math.nan, 0)
    value = float(num.sum()) / total
    sums_den = den[indices].sum(axis=1)
    keep = sums_den > 0
    ratios = num[indices].sum(axis=1)[keep] / sums_den[keep]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return Interval(value, float(low), float(high), n)
