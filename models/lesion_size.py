"""The one definition of lesion size bins, shared by evaluation, model cards and federation.

A lesion's size is its *equivalent-sphere diameter*: the diameter of the sphere with the
lesion's volume, ``(6 V / π)^(1/3)`` in millimetres. The bins are half-open intervals:

- :attr:`LesionSizeBin.SMALL`: below 10 mm (the "small lesion" of every report);
- :attr:`LesionSizeBin.MEDIUM`: 10 mm up to (not including) 20 mm;
- :attr:`LesionSizeBin.LARGE`: 20 mm and over.

So a lesion of exactly 10 mm is medium and one of exactly 20 mm is large.
"""

from __future__ import annotations

import math
from enum import StrEnum

from .errors import InputError

#: Lesions with an equivalent-sphere diameter below this are small (mm).
SMALL_LESION_DIAMETER_MM = 10.0
#: Lesions from :data:`SMALL_LESION_DIAMETER_MM` up to below this are medium (mm).
LARGE_LESION_DIAMETER_MM = 20.0


class LesionSizeBin(StrEnum):
    """Size bin of a lesion by equivalent-sphere diameter (see the module docstring)."""

    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

    @property
    def lower_mm(self) -> float:
        """Smallest diameter in the bin (inclusive)."""
        return _BOUNDS[self][0]

    @property
    def upper_mm(self) -> float:
        """Diameter the bin stops below (exclusive; ``inf`` for the last bin)."""
        return _BOUNDS[self][1]

    @property
    def description(self) -> str:
        """e.g. ``"< 10 mm"``, ``"10-20 mm"``, ``">= 20 mm"``."""
        low, high = _BOUNDS[self]
        if low == 0.0:
            return f"< {high:g} mm"
        if math.isinf(high):
            return f">= {low:g} mm"
        return f"{low:g}-{high:g} mm"

    @classmethod
    def of(cls, diameter_mm: float) -> LesionSizeBin:
        """The bin of a lesion with equivalent-sphere diameter ``diameter_mm``."""
        if not (math.isfinite(diameter_mm) and diameter_mm >= 0.0):
            raise InputError(f"a lesion diameter must be a finite number >= 0, not {diameter_mm}")
        for size_bin, (low, high) in _BOUNDS.items():
            if low <= diameter_mm < high:
                return size_bin
        raise AssertionError("the bins cover [0, inf)")  # pragma: no cover


_BOUNDS: dict[LesionSizeBin, tuple[float, float]] = {
    LesionSizeBin.SMALL: (0.0, SMALL_LESION_DIAMETER_MM),
    LesionSizeBin.MEDIUM: (SMALL_LESION_DIAMETER_MM, LARGE_LESION_DIAMETER_MM),
    LesionSizeBin.LARGE: (LARGE_LESION_DIAMETER_MM, math.inf),
}


def equivalent_diameter_mm(voxels: float, voxel_ml: float) -> float:
    """Equivalent-sphere diameter (mm) of ``voxels`` voxels of ``voxel_ml`` mL each."""
    if voxels < 0 or not voxel_ml > 0:
        raise InputError("need a voxel count >= 0 and a voxel volume > 0")
    return float((6.0 * voxels * voxel_ml * 1000.0 / math.pi) ** (1.0 / 3.0))
