"""Simulated hospitals drawn from a distribution, for consortia larger than the four
:data:`models.phantoms.SITE_PRESETS`.

A generated hospital is named ``gen<seed>_<index>`` (``gen0_017``: the 17th hospital of
consortium seed 0); the name alone determines it, so every process (a SuperNode, a
simulation worker, the report) rebuilds the same scanners from it. :func:`site_hospital`
resolves a preset or a generated name.

Each hospital's CT and MR protocols are drawn independently from :class:`SiteDistribution`
(the ranges are the documentation; docs/federation.md repeats them):

- scanner calibration: ``intensity_scale`` uniform in ``ct_scale`` (CT) or log-uniform in
  ``mr_scale`` (MR: arbitrary units), ``intensity_offset`` uniform in ``ct_offset_hu`` /
  ``mr_offset``;
- noise: ``noise_sigma`` uniform in ``ct_noise_hu`` / ``mr_noise``; MR bias field uniform
  in ``mr_bias``;
- grid: slice spacing drawn from ``ct_slice_mm`` / ``mr_slice_mm`` (weighted choices, as
  protocols are), pixel spacing uniform in ``ct_pixel_mm`` / ``mr_pixel_mm``, the matrix
  sized to cover the same field of view (CT 240 mm x 400 mm x 400 mm, MR 192 x 240 x 240);
- orientation: axial, or with probability ``oblique_probability`` an oblique stack
  (tilted up to ``oblique_max_deg`` about the left-right axis and half that about the
  head-foot axis); slice numbering head to feet with probability ``reversed_probability``;
- CT contrast phase: portal venous, arterial or native with ``phase_weights``;
- lesion mix (CT): ``small`` (5-15 mm, 2-6 lesions, a screening centre), ``typical``
  (10-40 mm, 1-3) or ``large`` (20-50 mm, 1-2) with ``lesion_mix_weights``; MR tumour
  cores log-uniform between 10-20 mm and 30-55 mm;
- case count: log-normal with median ``cases_median`` and shape ``cases_sigma``, clipped
  to ``cases_range``: most hospitals have a dozen cases, a long tail of small sites has
  two or three, a few large ones have many.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

import numpy as np

from models.phantoms import (
    AXIAL,
    SITE_PRESETS,
    ContrastPhase,
    Hospital,
    LesionDistribution,
    Orientation,
    SiteProfile,
    oblique,
)

__all__ = [
    "DEFAULT_DISTRIBUTION",
    "GENERATED_NAME",
    "SiteDistribution",
    "generated_hospital",
    "generated_names",
    "is_generated",
    "shift_score",
    "site_hospital",
]

#: ``gen<seed>_<index>``: consortium seed 0-999999, hospital index 001-999.
GENERATED_NAME: Final = re.compile(r"gen(\d{1,6})_(\d{3})")
CT_FOV_MM: Final = (240.0, 400.0, 400.0)
MR_FOV_MM: Final = (192.0, 240.0, 240.0)
LESION_MIXES: Final = {
    "small": LesionDistribution(5.0, 15.0, 2, 6),
    "typical": LesionDistribution(10.0, 40.0, 1, 3),
    "large": LesionDistribution(20.0, 50.0, 1, 2),
}
PHASES: Final = (ContrastPhase.PORTAL_VENOUS, ContrastPhase.ARTERIAL, ContrastPhase.NATIVE)


def _range(name: str, pair: tuple[float, float], *, positive: bool = False) -> None:
    low, high = pair
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be (low, high) with low <= high, not {pair}")
    if positive and low <= 0:
        raise ValueError(f"{name} must be positive, not {pair}")


def _weights(name: str, weights: tuple[float, ...], count: int) -> None:
    if len(weights) != count or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"{name} needs {count} non-negative weights, not all zero")


@dataclass(frozen=True, slots=True)
class SiteDistribution:
    """What a generated hospital's protocols and case count are drawn from (module doc)."""

    ct_scale: tuple[float, float] = (0.94, 1.06)
    ct_offset_hu: tuple[float, float] = (-30.0, 30.0)
    ct_noise_hu: tuple[float, float] = (8.0, 25.0)
    ct_slice_mm: tuple[float, ...] = (1.25, 2.0, 2.5, 3.0, 5.0)
    ct_slice_weights: tuple[float, ...] = (0.15, 0.2, 0.25, 0.2, 0.2)
    ct_pixel_mm: tuple[float, float] = (0.8, 2.2)
    mr_scale: tuple[float, float] = (0.5, 2.5)
    mr_offset: tuple[float, float] = (-50.0, 50.0)
    mr_noise: tuple[float, float] = (10.0, 25.0)
    mr_bias: tuple[float, float] = (0.1, 0.35)
    mr_slice_mm: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    mr_slice_weights: tuple[float, ...] = (0.2, 0.35, 0.3, 0.15)
    mr_pixel_mm: tuple[float, float] = (0.9, 1.9)
    oblique_probability: float = 0.25
    oblique_max_deg: float = 15.0
    reversed_probability: float = 0.3
    phase_weights: tuple[float, float, float] = (0.6, 0.25, 0.15)
    lesion_mix_weights: tuple[float, float, float] = (0.25, 0.5, 0.25)
    cases_median: float = 12.0
    cases_sigma: float = 0.9
    cases_range: tuple[int, int] = (2, 200)

    def __post_init__(self) -> None:
        for name in ("ct_scale", "mr_scale", "ct_noise_hu", "mr_noise", "ct_pixel_mm"):
            _range(name, getattr(self, name), positive=name != "ct_noise_hu")
        _range("mr_pixel_mm", self.mr_pixel_mm, positive=True)
        _range("ct_offset_hu", self.ct_offset_hu)
        _range("mr_offset", self.mr_offset)
        _range("mr_bias", self.mr_bias)
        if not (self.mr_bias[0] >= 0 and self.mr_bias[1] < 1):
            raise ValueError("mr_bias must lie in [0, 1)")
        if self.ct_noise_hu[0] < 0 or self.mr_noise[0] < 0:
            raise ValueError("noise must not be negative")
        for name in ("ct_slice_mm", "mr_slice_mm"):
            if not getattr(self, name) or min(getattr(self, name)) <= 0:
                raise ValueError(f"{name} needs positive slice spacings")
        _weights("ct_slice_weights", self.ct_slice_weights, len(self.ct_slice_mm))
        _weights("mr_slice_weights", self.mr_slice_weights, len(self.mr_slice_mm))
        _weights("phase_weights", self.phase_weights, len(PHASES))
        _weights("lesion_mix_weights", self.lesion_mix_weights, len(LESION_MIXES))
        for name in ("oblique_probability", "reversed_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0 <= self.oblique_max_deg <= 45:
            raise ValueError("oblique_max_deg must be in [0, 45]")
        if self.cases_median <= 0 or self.cases_sigma < 0:
            raise ValueError("cases_median must be positive and cases_sigma not negative")
        low, high = self.cases_range
        if not 1 <= low <= high:
            raise ValueError("cases_range must be (low, high) with 1 <= low <= high")


DEFAULT_DISTRIBUTION: Final = SiteDistribution()


def is_generated(name: str) -> bool:
    return GENERATED_NAME.fullmatch(name) is not None


def generated_names(count: int, seed: int = 0) -> tuple[str, ...]:
    """The names of the first ``count`` hospitals of consortium ``seed``."""
    if not 1 <= count <= 999:
        raise ValueError(f"a generated consortium has 1 to 999 sites, not {count}")
    if not 0 <= seed <= 999_999:
        raise ValueError(f"a consortium seed is 0 to 999999, not {seed}")
    return tuple(f"gen{seed}_{index:03d}" for index in range(1, count + 1))


def _pick(
    rng: np.random.Generator, options: tuple[float, ...], weights: tuple[float, ...]
) -> float:
    p = np.asarray(weights, dtype=float)
    return float(options[int(rng.choice(len(options), p=p / p.sum()))])


def _orientation(rng: np.random.Generator, d: SiteDistribution) -> tuple[Orientation, str]:
    if rng.random() >= d.oblique_probability:
        return AXIAL, "axial"
    lr = float(rng.uniform(-d.oblique_max_deg, d.oblique_max_deg))
    si = float(rng.uniform(-d.oblique_max_deg / 2, d.oblique_max_deg / 2))
    return oblique(AXIAL, about_lr_deg=lr, about_si_deg=si), f"oblique {lr:+.0f}/{si:+.0f} deg"


def _grid(slice_mm: float, pixel_mm: float, fov: tuple[float, ...]) -> tuple[int, int, int]:
    return (
        max(8, round(fov[0] / slice_mm)),
        max(16, round(fov[1] / pixel_mm)),
        max(16, round(fov[2] / pixel_mm)),
    )


def generated_hospital(
    name: str, distribution: SiteDistribution = DEFAULT_DISTRIBUTION
) -> Hospital:
    """The hospital ``gen<seed>_<index>`` (module doc); raises :class:`ValueError` for a
    name of another form."""
    match = GENERATED_NAME.fullmatch(name)
    if match is None or int(match[2]) == 0:
        raise ValueError(f"{name!r} is not a generated site name (gen<seed>_<001-999>)")
    seed, index = int(match[1]), int(match[2])
    d = distribution
    rng = np.random.default_rng([seed, index, 0x5173])
    # CT
    ct_slice = _pick(rng, d.ct_slice_mm, d.ct_slice_weights)
    ct_pixel = float(rng.uniform(*d.ct_pixel_mm))
    ct_orientation, ct_plane = _orientation(rng, d)
    phase = PHASES[
        int(rng.choice(len(PHASES), p=np.asarray(d.phase_weights) / sum(d.phase_weights)))
    ]
    mix_names = tuple(LESION_MIXES)
    mix = mix_names[
        int(
            rng.choice(
                len(mix_names), p=np.asarray(d.lesion_mix_weights) / sum(d.lesion_mix_weights)
            )
        )
    ]
    ct = SiteProfile(
        name=f"{name}_ct",
        spacing_mm=(ct_slice, ct_pixel, ct_pixel),
        matrix=_grid(ct_slice, ct_pixel, CT_FOV_MM),
        orientation=ct_orientation,
        reverse_slice_order=bool(rng.random() < d.reversed_probability),
        intensity_scale=float(rng.uniform(*d.ct_scale)),
        intensity_offset=float(rng.uniform(*d.ct_offset_hu)),
        noise_sigma=float(rng.uniform(*d.ct_noise_hu)),
        contrast_phase=phase,
        lesions=LESION_MIXES[mix],
        seed=10_000 + 1000 * seed + index,
    )
    # MR
    mr_slice = _pick(rng, d.mr_slice_mm, d.mr_slice_weights)
    mr_pixel = float(rng.uniform(*d.mr_pixel_mm))
    mr_orientation, mr_plane = _orientation(rng, d)
    low, high = float(rng.uniform(10.0, 20.0)), float(rng.uniform(30.0, 55.0))
    mr = SiteProfile(
        name=f"{name}_mr",
        spacing_mm=(mr_slice, mr_pixel, mr_pixel),
        matrix=_grid(mr_slice, mr_pixel, MR_FOV_MM),
        orientation=mr_orientation,
        reverse_slice_order=bool(rng.random() < d.reversed_probability),
        intensity_scale=float(
            math.exp(rng.uniform(math.log(d.mr_scale[0]), math.log(d.mr_scale[1])))
        ),
        intensity_offset=float(rng.uniform(*d.mr_offset)),
        noise_sigma=float(rng.uniform(*d.mr_noise)),
        bias_field=float(rng.uniform(*d.mr_bias)),
        lesions=LesionDistribution(low, high, 1, 1),
        seed=20_000 + 1000 * seed + index,
    )
    drawn = rng.lognormal(math.log(d.cases_median), d.cases_sigma)
    cases = int(np.clip(round(drawn), *d.cases_range))
    description = (
        f"generated (consortium {seed}, hospital {index}): CT {ct_slice:g} mm slices, "
        f"{ct_pixel:.2f} mm pixels, {ct_plane}, {phase.value} phase, "
        f"{ct.intensity_offset:+.0f} HU, noise {ct.noise_sigma:.0f} HU, {mix} lesions; "
        f"MR {mr_slice:g} mm slices, {mr_plane}, scale {mr.intensity_scale:.2f}, "
        f"bias {mr.bias_field:.2f}; {cases} cases"
    )
    return Hospital(name=name, description=description, ct=ct, mr=mr, cases=cases)


def site_hospital(name: str) -> Hospital:
    """A preset of :data:`models.phantoms.SITE_PRESETS` or a generated hospital; raises
    :class:`KeyError` naming what is known for anything else."""
    if name in SITE_PRESETS:
        return SITE_PRESETS[name]
    if is_generated(name):
        try:
            return generated_hospital(name)
        except ValueError as exc:
            raise KeyError(str(exc)) from exc
    known = ", ".join(SITE_PRESETS)
    raise KeyError(f"unknown site {name!r}: one of {known}, or a generated gen<seed>_<001-999>")


def shift_score(hospital: Hospital, *, ct: bool) -> float:
    """How far a hospital's CT (``ct``) or MR protocol lies from the reference scanner
    (``site_a``: unit scale, no offset, no bias field), in units of the distribution's
    spread: |offset| / 30 HU + |ln scale| / ln 1.06 for CT; |offset| / 50 + |ln scale| /
    ln 2.5 + bias / 0.35 for MR. The largest is a simulated consortium's "most shifted"
    site (the one FedBN's local normalisation should help most)."""
    if ct:
        p = hospital.ct
        return abs(p.intensity_offset) / 30.0 + abs(math.log(p.intensity_scale)) / math.log(1.06)
    p = hospital.mr
    return (
        abs(p.intensity_offset) / 50.0
        + abs(math.log(p.intensity_scale)) / math.log(2.5)
        + p.bias_field / 0.35
    )
