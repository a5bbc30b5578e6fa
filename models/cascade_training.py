"""Training data and bundle contents for a two-stage model's refiner (:mod:`models.cascade`).

The refiner only ever sees the box the locator found: at inference the bounding box of
stage 1's labels grown by ``margin_mm``. Its training cases are cut the same way from the
truth, with each side's margin drawn from ``margin_mm ± jitter_mm`` (never below zero),
so the refiner learns boxes a little tighter or looser than the nominal one, as an
imperfect locator gives them. A case whose truth has no label gives no refiner case (at
inference the refiner does not run without a box).

:func:`cascade_state_dict` joins the two stages' weights into the one state dict a cascade
bundle stores (``locator.*``, ``refiner.*``); :func:`split_state_dict` takes them apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .cascade import crop_affine
from .cascade_spec import LOCATOR, REFINER, RefinerSettings
from .errors import InputError
from .training import TrainingCase

#: each side's margin of a refiner training box is drawn from ``margin_mm`` +- this (mm)
REFINER_JITTER_MM = 5.0


def refiner_box(
    labels: np.ndarray,
    affine_lps: np.ndarray,
    margin_mm: float,
    *,
    rng: np.random.Generator | None = None,
    jitter_mm: float = 0.0,
) -> tuple[slice, slice, slice] | None:
    """The training box of one case: the labels' bounding box grown on each side by
    ``margin_mm`` (plus, with ``rng``, a uniform draw in ``±jitter_mm`` per side), in the
    axis' own spacing, clipped to the grid; None when ``labels`` is empty."""
    if jitter_mm < 0 or margin_mm < 0:
        raise InputError("margin_mm and jitter_mm must be >= 0")
    m = np.asarray(labels) != 0
    if m.ndim != 3:
        raise InputError(f"labels must be (slice, row, column), not {m.shape}")
    spacing = np.linalg.norm(np.asarray(affine_lps, dtype=np.float64)[:3, :3], axis=0)
    box = []
    for axis in range(3):
        present = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        grow = []
        for _side in range(2):
            margin = margin_mm
            if rng is not None and jitter_mm > 0:
                margin = max(0.0, margin_mm + float(rng.uniform(-jitter_mm, jitter_mm)))
            grow.append(math.ceil(margin / float(spacing[axis]) - 1e-9))
        box.append(
            slice(
                max(0, int(present[0]) - grow[0]),
                min(m.shape[axis], int(present[-1]) + 1 + grow[1]),
            )
        )
    return (box[0], box[1], box[2])


def refiner_cases(
    cases: Sequence[TrainingCase],
    settings: RefinerSettings,
    *,
    seed: int,
    jitter_mm: float = REFINER_JITTER_MM,
) -> list[TrainingCase]:
    """Each labelled case cut to its refiner box (see the module docstring), seeded."""
    rng = np.random.default_rng([seed, 31])
    out: list[TrainingCase] = []
    for case in cases:
        box = refiner_box(
            case.labels, case.affine, settings.margin_mm, rng=rng, jitter_mm=jitter_mm
        )
        if box is None:
            continue
        out.append(
            TrainingCase(
                image=np.ascontiguousarray(case.image[(..., *box)]),
                labels=np.ascontiguousarray(case.labels[box]),
                affine=crop_affine(case.affine, box),
            )
        )
    if not out:
        raise InputError("no training case has a label, so there is nothing to refine")
    return out


def cascade_state_dict(
    locator: Mapping[str, torch.Tensor], refiner: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The one state dict of a cascade bundle (CPU, contiguous)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, state in ((LOCATOR, locator), (REFINER, refiner)):
        for name, tensor in state.items():
            out[f"{prefix}.{name}"] = tensor.detach().cpu().contiguous()
    return out


def split_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(locator, refiner)`` state dicts of a cascade state dict; :class:`InputError` for
    a key of neither stage."""
    stages: dict[str, dict[str, torch.Tensor]] = {LOCATOR: {}, REFINER: {}}
    for name, tensor in state.items():
        prefix, _, rest = name.partition(".")
        if prefix not in stages or not rest:
            raise InputError(f"{name!r} is not a weight of a cascade's locator or refiner")
        stages[prefix][rest] = tensor
    return stages[LOCATOR], stages[REFINER]
