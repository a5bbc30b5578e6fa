"""Detailed anatomy for the phantoms, switched on by ``SiteProfile.detailed_anatomy``.

Each function adds layers through the generator's own ``add`` (which scales a shape to
the patient, picks the tissue's values and records the layer), drawing from the case's
generator in a fixed order, so a detailed profile stays reproducible:

- :func:`add_liver_vessel_tree` - portal and hepatic vein branches, two generations of
  bifurcations off each trunk down to about 1 mm radius, in the liver only (liver
  label); their enhancement is the trunk's, so it follows the contrast phase (darker
  than liver native, brighter portal venous);
- :func:`add_liver_lesion` - a liver tumour with texture: heterogeneous interior, an
  enhancing rim of random width and strength, a necrotic/hypodense core from 10 mm,
  optional calcification; or a near-isodense lesion (a few HU from the liver);
- :func:`add_head_detail` - the head around the brain: bright subcutaneous scalp fat
  under the skin (T1, T1C, T2), fatty skull marrow (diploe) between the cortical
  tables, dura enhancing on T1C, scalp vessels and the superior sagittal sinus (bright
  on T1C, flow voids otherwise).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from .phantoms import (
    Tissue,
    Values,
    _Capsule,
    _Difference,
    _Ellipsoid,
    _Intersection,
    _Offset,
    _random_waves,
    _Shape,
    _Texture,
    _Wavy,
)

__all__ = [
    "ISODENSE_DELTA_HU",
    "LiverLesion",
    "add_head_detail",
    "add_liver_lesion",
    "add_liver_vessel_tree",
]

#: A near-isodense lesion differs from the liver by this many HU (either sign), before
#: texture and noise.
ISODENSE_DELTA_HU: Final = (2.0, 8.0)
_CALCIFICATION_HU: Final = (350.0, 900.0)
_LIVER_ONLY: Final = frozenset({Tissue.LIVER})


class AddLayer(Protocol):
    """The generator's ``add``: one shape drawn with one tissue."""

    def __call__(
        self,
        shape: _Shape,
        tissue: Tissue,
        *,
        values: Values | None = ...,
        texture: _Texture | None = ...,
        allowed: frozenset[Tissue] | None = ...,
        lesion: int | None = ...,
        scaled: bool = ...,
    ) -> None: ...


class AddHeadLayer(Protocol):
    """The brain generator's ``add`` (values come from the tissue)."""

    def __call__(
        self,
        shape: _Shape,
        tissue: Tissue,
        *,
        texture: _Texture | None = ...,
        allowed: frozenset[Tissue] | None = ...,
        lesion: int | None = ...,
        scaled: bool = ...,
    ) -> None: ...


def _turn(rng: np.random.Generator, direction: np.ndarray, angle_deg: float) -> np.ndarray:
    """``direction`` turned by ``angle_deg`` towards a random perpendicular."""
    side = rng.normal(size=3)
    side -= (side @ direction) * direction
    side /= max(float(np.linalg.norm(side)), 1e-9)
    a = math.radians(angle_deg)
    out = math.cos(a) * direction + math.sin(a) * side
    return np.asarray(out / np.linalg.norm(out))


def add_liver_vessel_tree(
    rng: np.random.Generator,
    add: AddLayer,
    trunks: Sequence[tuple[np.ndarray, np.ndarray, float, Values]],
    *,
    generations: int = 2,
) -> None:
    """Branches off each trunk ``(start, end, end radius, values)`` (phantom-local mm):
    each segment forks twice, ``generations`` deep, clipped to the liver."""
    for start, end, radius, values in trunks:
        _branch(rng, add, np.asarray(start), np.asarray(end), radius, values, generations)


def _branch(
    rng: np.random.Generator,
    add: AddLayer,
    start: np.ndarray,
    end: np.ndarray,
    radius: float,
    values: Values,
    depth: int,
) -> None:
    if depth == 0:
        return
    axis = end - start
    length = float(np.linalg.norm(axis))
    direction = axis / max(length, 1e-9)
    for _ in range(2):
        origin = start + float(rng.uniform(0.5, 1.0)) * axis
        way = _turn(rng, direction, float(rng.uniform(25.0, 60.0)))
        child_length = max(12.0, length * float(rng.uniform(0.5, 0.8)))
        r0 = max(1.0, 0.75 * radius)
        r1 = max(0.8, 0.6 * r0)
        tip = origin + way * child_length
        add(
            _Capsule(origin, tip, r0, r1), Tissue.HEPATIC_VESSEL, values=values, allowed=_LIVER_ONLY
        )
        _branch(rng, add, origin, tip, r1, values, depth - 1)


@dataclass(frozen=True, slots=True, eq=False)
class LiverLesion:
    """What :func:`add_liver_lesion` needs of one placed lesion (local mm, no scaling)."""

    index: int
    tumour: _Shape
    position: np.ndarray
    radii: np.ndarray
    rotation: np.ndarray
    diameter: float
    outer: Values
    inner: Values

    def __post_init__(self) -> None:
        if self.diameter <= 0:
            raise ValueError("a lesion's diameter must be positive")


def add_liver_lesion(
    rng: np.random.Generator,
    add: AddLayer,
    lesion: LiverLesion,
    *,
    liver: Values,
    necrosis: Values,
    isodense: bool,
    allowed: frozenset[Tissue],
) -> None:
    """Paint one liver lesion with texture (or near-isodense: ``liver`` plus a few HU)."""
    d = lesion.diameter
    short = max(3.0, 0.3 * d)
    heterogeneity = float(rng.uniform(5.0, 16.0))

    def tex(std: float) -> _Texture:
        return _Texture(std, _random_waves(rng, 3, (short, max(short, d))))

    if isodense:
        delta = float(rng.uniform(*ISODENSE_DELTA_HU)) * (1.0 if rng.uniform() < 0.5 else -1.0)
        add(
            lesion.tumour,
            Tissue.TUMOUR,
            values={k: v + delta for k, v in liver.items()},
            texture=tex(3.0),
            allowed=allowed,
            lesion=lesion.index,
            scaled=False,
        )
        return
    rim_mm = min(float(rng.uniform(1.0, 3.0)), 0.25 * d)
    rim_gain = float(rng.uniform(0.6, 1.6))
    rim = {k: lesion.inner[k] + rim_gain * (v - lesion.inner[k]) for k, v in lesion.outer.items()}
    add(
        lesion.tumour,
        Tissue.TUMOUR,
        values=rim,
        texture=tex(0.5 * heterogeneity),
        allowed=allowed,
        lesion=lesion.index,
        scaled=False,
    )
    add(
        _Offset(lesion.tumour, -rim_mm),
        Tissue.TUMOUR,
        values=lesion.inner,
        texture=tex(heterogeneity),
        allowed=frozenset({Tissue.TUMOUR}),
        scaled=False,
    )
    has_core = rng.uniform() < 0.5
    core_size = float(rng.uniform(0.3, 0.6))
    core_waves = _random_waves(rng, 3, (short, max(short, d)))
    if has_core and d >= 10.0:
        core = _Wavy(
            _Ellipsoid(lesion.position, core_size * lesion.radii, lesion.rotation),
            0.05 * d,
            core_waves,
        )
        add(
            core,
            Tissue.TUMOUR_NECROSIS,
            values=necrosis,
            texture=tex(4.0),
            allowed=frozenset({Tissue.TUMOUR}),
            scaled=False,
        )
    calcified = rng.uniform() < 0.15
    spots = rng.uniform(-0.4, 0.4, size=(3, 3)) * lesion.radii
    spot_mm = rng.uniform(0.8, 2.0, size=3)
    hu = float(rng.uniform(*_CALCIFICATION_HU))
    if calcified and d >= 8.0:
        for centre, r in zip(spots, spot_mm.tolist(), strict=True):
            add(
                _Ellipsoid(lesion.position + centre, (r, r, r)),
                Tissue.CALCIFICATION,
                values=dict.fromkeys(lesion.inner, hu),
                allowed=frozenset({Tissue.TUMOUR, Tissue.TUMOUR_NECROSIS}),
                scaled=False,
            )


def add_head_detail(
    rng: np.random.Generator,
    add: AddHeadLayer,
    head: _Shape,
    envelope: _Shape,
    tex: Callable[[float], _Texture],
) -> None:
    """Scalp fat, skull marrow, dura and vessels, after the head, skull and CSF shells of
    the brain phantom (skull between ``envelope + 3`` and ``envelope + 9`` mm, inside
    ``head - 4`` mm)."""
    skin = float(rng.uniform(1.5, 2.5))
    fat = float(rng.uniform(3.0, 7.0))
    table = float(rng.uniform(1.0, 1.6))
    dura = float(rng.uniform(1.0, 1.5))
    scalp = frozenset({Tissue.SCALP})
    add(
        _Difference(_Offset(head, -skin), [_Offset(head, -(skin + fat))]),
        Tissue.SCALP_FAT,
        texture=tex(40.0),
        allowed=scalp,
    )
    diploe = _Difference(
        _Intersection([_Offset(envelope, 9.0 - table), _Offset(head, -4.0 - table)]),
        [_Offset(envelope, 3.0 + table)],
    )
    add(diploe, Tissue.MARROW, texture=tex(40.0), allowed=frozenset({Tissue.SKULL}))
    add(
        _Difference(_Offset(envelope, 3.0), [_Offset(envelope, 3.0 - dura)]),
        Tissue.DURA,
        allowed=frozenset({Tissue.CSF}),
    )
    # scalp arteries and veins: short polylines in the fat, over the upper head
    centre, radii = np.array([0.0, 2.0, -5.0]), np.array([76.0, 98.0, 95.0])
    vessel_over = frozenset({Tissue.SCALP, Tissue.SCALP_FAT})
    for _ in range(int(rng.integers(3, 6))):
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2]) + 0.3
        direction /= np.linalg.norm(direction)
        radius = float(rng.uniform(0.9, 1.6))
        depth = skin + fat * float(rng.uniform(0.3, 0.7))
        points = [direction]
        for _ in range(3):
            points.append(_turn(rng, points[-1], float(rng.uniform(6.0, 10.0))))
        path = [centre + p * (radii - depth) for p in points]
        for a, b in itertools.pairwise(path):
            add(_Capsule(a, b, radius, radius), Tissue.VESSEL, allowed=vessel_over)
    # superior sagittal sinus: along the midline just outside the cerebrum's CSF
    sinus_r = float(rng.uniform(2.5, 3.5))
    angles = np.radians(np.arange(-70.0, 111.0, 30.0))
    path = [np.array([0.0, 4.0 + 86.5 * math.sin(t), 10.0 + 68.5 * math.cos(t)]) for t in angles]
    sinus_over = frozenset({Tissue.SKULL, Tissue.MARROW, Tissue.CSF, Tissue.DURA})
    for a, b in itertools.pairwise(path):
        add(_Capsule(a, b, sinus_r, sinus_r), Tissue.VESSEL, allowed=sinus_over)
