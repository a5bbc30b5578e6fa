"""What a two-stage (cascade) card says, without torch: the stages' architectures and
stage 2's grid (:class:`RefinerSettings`, the card's ``preprocessing.refiner``). The
cascade itself (network, region of interest, inference) is :mod:`models.cascade`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import NetworkConfigError, SpecError
from .tasks import PATCH_MULTIPLE, TaskSpec

#: ``architecture.network`` of a cascade card; its kwargs are ``{"locator": {...},
#: "refiner": {...}}``, each an ordinary ``{"network", "kwargs"}`` architecture.
CASCADE_NETWORK = "Cascade"
#: the card's ``preprocessing`` key holding :class:`RefinerSettings`
REFINER_KEY = "refiner"
LOCATOR = "locator"
REFINER = "refiner"

_MAX_MARGIN_MM = 200.0


def _triple(value: object, what: str, kind: type) -> tuple[Any, Any, Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 3:
        raise SpecError(f"{what} must be three numbers, not {value!r}")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise SpecError(f"{what} must be three numbers, not {value!r}")
        if kind is int and (not float(item).is_integer()):
            raise SpecError(f"{what} must be three integers, not {value!r}")
        out.append(kind(item))
    return (out[0], out[1], out[2])


@dataclass(frozen=True, slots=True)
class RefinerSettings:
    """Stage 2's grid and box: ``target_spacing_mm`` (x, y, z as the task's), its
    ``patch_size`` (multiples of 16) and the ``margin_mm`` added around stage 1's labels."""

    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        spacing = _triple(self.target_spacing_mm, "refiner.target_spacing_mm", float)
        if not all(math.isfinite(s) and 0.1 <= s <= 20.0 for s in spacing):
            raise SpecError(
                f"refiner.target_spacing_mm must be in [0.1, 20] mm, not {self.target_spacing_mm}"
            )
        patch = _triple(self.patch_size, "refiner.patch_size", int)
        if not all(PATCH_MULTIPLE <= p <= 512 and p % PATCH_MULTIPLE == 0 for p in patch):
            raise SpecError(
                f"refiner.patch_size must be multiples of {PATCH_MULTIPLE} in "
                f"[{PATCH_MULTIPLE}, 512], not {self.patch_size}"
            )
        margin = self.margin_mm
        if isinstance(margin, bool) or not isinstance(margin, int | float):
            raise SpecError(f"refiner.margin_mm must be a number, not {margin!r}")
        if not (math.isfinite(margin) and 0.0 <= margin <= _MAX_MARGIN_MM):
            raise SpecError(f"refiner.margin_mm must be in [0, {_MAX_MARGIN_MM:g}], not {margin}")
        object.__setattr__(self, "target_spacing_mm", spacing)
        object.__setattr__(self, "patch_size", patch)
        object.__setattr__(self, "margin_mm", float(margin))

    def to_dict(self) -> dict[str, Any]:
        """The card's ``preprocessing.refiner`` entry."""
        return {
            "target_spacing_mm": list(self.target_spacing_mm),
            "patch_size": list(self.patch_size),
            "margin_mm": self.margin_mm,
        }

    @classmethod
    def from_dict(cls, data: object) -> RefinerSettings:
        if not isinstance(data, Mapping):
            raise SpecError("preprocessing.refiner must be a JSON object")
        unknown = set(data) - {"target_spacing_mm", "patch_size", "margin_mm"}
        if unknown:
            raise SpecError(f"preprocessing.refiner: unknown keys {sorted(unknown)}")
        for key in ("target_spacing_mm", "patch_size"):
            if key not in data:
                raise SpecError(f"preprocessing.refiner needs {key!r}")
        return cls(
            target_spacing_mm=data["target_spacing_mm"],
            patch_size=data["patch_size"],
            margin_mm=data.get("margin_mm", 10.0),
        )


def refiner_spec(spec: TaskSpec, settings: RefinerSettings) -> TaskSpec:
    """The task as stage 2 sees it: same labels, channels and intensity, its own grid."""
    if spec.is_sigmoid:
        raise SpecError(f"task {spec.name} has overlapping segments; cascades are softmax only")
    return replace(
        spec, target_spacing_mm=settings.target_spacing_mm, patch_size=settings.patch_size
    )


def cascade_architecture(locator: Mapping[str, Any], refiner: Mapping[str, Any]) -> dict[str, Any]:
    """A cascade card's ``architecture`` from the two stages' architectures."""
    return {
        "network": CASCADE_NETWORK,
        "kwargs": {LOCATOR: dict(locator), REFINER: dict(refiner)},
    }


def stage_architectures(architecture: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """``(locator, refiner)`` of a cascade architecture; :class:`NetworkConfigError` when
    it is not one."""
    if architecture.get("network") != CASCADE_NETWORK:
        raise NetworkConfigError("not a cascade architecture")
    kwargs = architecture.get("kwargs")
    if not isinstance(kwargs, Mapping) or set(kwargs) != {LOCATOR, REFINER}:
        raise NetworkConfigError(
            f"a {CASCADE_NETWORK} architecture's kwargs must be exactly "
            f"{{'{LOCATOR}': ..., '{REFINER}': ...}}"
        )
    stages = []
    for name in (LOCATOR, REFINER):
        stage = kwargs[name]
        if not isinstance(stage, Mapping) or not isinstance(stage.get("network"), str):
            raise NetworkConfigError(f"architecture.kwargs.{name} must name a network")
        if stage["network"] == CASCADE_NETWORK:
            raise NetworkConfigError(f"architecture.kwargs.{name} cannot itself be a cascade")
        stages.append(stage)
    return tuple(stages)
