"""Training data and bundle contents for a two-stage model's refiner (:mod:`models.cascade`).

The refiner only ever sees the box the locator found: at inference the bounding box of
stage 1's labels grown by ``margin_mm``. Its training cases are cut the same way from the
truth (:func:`models.cascade.region_of_interest`), with each side's margin drawn from
``margin_mm ± jitter_mm`` (never below zero),
so the refiner learns boxes a little tighter or looser than the nominal one, as an
imperfect locator gives them. A case whose truth has no label gives no refiner case (at
inference the refiner does not run without a box).

:func:`cascade_state_dict` joins the two stages' weights into the one state dict a cascade
bundle stores (``locator.*``, ``refiner.*``); :func:`split_state_dict` takes them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .cascade import crop_affine, region_of_interest
from .cascade_spec import LOCATOR, REFINER, RefinerSettings
from .errors import InputError
from .training_case import TrainingCase

#: each side's margin of a refiner training box is drawn from ``margin_mm`` +- this (mm)
REFINER_JITTER_MM = 5.0


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
        box = region_of_interest(
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
