"""Binary dilation and erosion for the tests (face-connected neighbours, any number of
dimensions; the edge of the array counts as background), without scipy."""

from __future__ import annotations

import numpy as np


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    out = np.asarray(mask, dtype=bool)
    for _ in range(steps):
        padded = np.pad(out, 1)
        grown = padded.copy()
        for axis in range(out.ndim):
            grown |= np.roll(padded, 1, axis) | np.roll(padded, -1, axis)
        out = grown[(slice(1, -1),) * out.ndim]
    return out


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    return ~dilate(~np.asarray(mask, dtype=bool), steps)
