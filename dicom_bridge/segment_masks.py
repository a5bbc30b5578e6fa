"""Segment masks: one binary mask per segment, so that segments may overlap.

The SEG and SR writers (:func:`dicom_bridge.seg.write_seg`,
:func:`dicom_bridge.sr.measure_segments`, :func:`dicom_bridge.sr.write_sr`) accept a mask
in one of two forms, told apart by the number of axes alone:

- a **label map**: 3-D integer array ``(slice, row, column)``; each voxel holds the
  ``label_index`` of its segment (0: background). Segments cannot overlap.
- **segment masks**: 4-D array ``(S, slice, row, column)`` of dtype ``bool`` (or an
  integer dtype holding only 0 and 1); ``mask[i]`` is the binary mask of the segment whose
  ``label_index`` is ``i + 1``. ``S`` must equal the number of segment descriptions, and
  those must be numbered ``1..S``. Segments may overlap (nested BraTS regions: whole
  tumour contains tumour core contains enhancing tumour); a voxel in several segments
  belongs to each of them.

The label-map form is handled by each writer as it always was; :class:`SegmentMasks`
validates the segment-mask form once and hands each consumer what it needs: a segment's
boolean mask (:meth:`SegmentMasks.segment`) or highdicom's stacked ``(frames, rows,
columns, segments)`` pixel array (:meth:`SegmentMasks.stacked_frames`). Error messages
carry shapes, dtypes and numbers only, never patient data; the exception type is the
caller's (``SegmentationWriteError`` for the SEG, ``ReportWriteError`` for the SR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = [
    "LABEL_MAP_NDIM",
    "SEGMENT_MASKS_NDIM",
    "SegmentMasks",
    "is_segment_masks",
]

#: Axes of a label map: (slice, row, column).
LABEL_MAP_NDIM: Final = 3
#: Axes of segment masks: (segment, slice, row, column).
SEGMENT_MASKS_NDIM: Final = 4


def is_segment_masks(mask: object) -> bool:
    """Whether ``mask`` is in the segment-mask form (a 4-D array), not a label map."""
    return isinstance(mask, np.ndarray) and mask.ndim == SEGMENT_MASKS_NDIM


@dataclass(frozen=True, slots=True, eq=False)
class SegmentMasks:
    """Validated segment masks: ``masks[i]`` (bool, ``(slice, row, column)``) is the
    segment with ``label_index == i + 1``. Build with :meth:`from_array`."""

    masks: np.ndarray

    @classmethod
    def from_array(
        cls,
        mask: np.ndarray,
        label_indices: Sequence[int],
        *,
        error: type[Exception],
        grid_shape: tuple[int, int, int] | None = None,
        in_plane: tuple[int, int] | None = None,
    ) -> SegmentMasks:
        """Check ``mask`` (4-D segment masks) against the segments' ``label_indices`` and,
        when given, the source grid's ``grid_shape`` or just its ``in_plane`` (rows,
        columns). Raises ``error`` with a message naming what is wrong."""
        if not isinstance(mask, np.ndarray) or mask.ndim != SEGMENT_MASKS_NDIM:
            raise error(
                "segment masks must be a 4D numpy array (segment, slice, row, column), "
                f"not {getattr(mask, 'ndim', '?')}D"
            )
        count = int(mask.shape[0])
        numbers = sorted(int(i) for i in label_indices)
        if count != len(numbers):
            raise error(
                f"mask holds {count} segment masks but {len(numbers)} segment descriptions "
                "are given: mask[i] is the segment with label_index i + 1"
            )
        if numbers != list(range(1, count + 1)):
            raise error(
                f"segment masks need segment label indices 1..{count} "
                f"(mask[i] is label_index i + 1), not {numbers[:10]}"
            )
        shape = tuple(int(n) for n in mask.shape[1:])
        if grid_shape is not None and shape != tuple(grid_shape):
            raise error(
                f"segment masks have shape {shape} per segment, the source volume grid is "
                f"{tuple(grid_shape)}"
            )
        if in_plane is not None and shape[1:] != tuple(in_plane):
            raise error(
                f"segment masks are {shape[1]}x{shape[2]} per slice, the images "
                f"{in_plane[0]}x{in_plane[1]}"
            )
        if mask.dtype == np.bool_:
            binary = mask
        elif np.issubdtype(mask.dtype, np.integer):
            if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 1):
                raise error("segment masks must hold only 0 and 1 (or False and True)")
            binary = mask.astype(np.bool_)
        else:
            raise error(f"segment masks must be bool or integer 0/1, not {mask.dtype}")
        return cls(masks=binary)

    @property
    def count(self) -> int:
        """Number of segments (S)."""
        return int(self.masks.shape[0])

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)`` of each segment's mask."""
        s, r, c = (int(n) for n in self.masks.shape[1:])
        return (s, r, c)

    def segment(self, label_index: int) -> np.ndarray:
        """The boolean mask ``(slice, row, column)`` of segment ``label_index`` (1..S)."""
        if not 1 <= label_index <= self.count:
            raise KeyError(label_index)
        mask: np.ndarray = self.masks[label_index - 1]
        return mask

    def voxel_count(self, label_index: int) -> int:
        """Voxels of segment ``label_index``, whether or not other segments share them."""
        return int(np.count_nonzero(self.segment(label_index)))

    def stacked_frames(self, frame_numbers: Sequence[int] | None = None) -> np.ndarray:
        """highdicom's *stacked segments* pixel array ``(frames, rows, columns, S)``, bool,
        where ``[..., i]`` is segment ``i + 1``. Frames are in slice order, or, with
        ``frame_numbers`` (``SourceGrid.frame_numbers``: the 1-based stored frame of each
        slice of a multi-frame source), in stored frame order."""
        by_slice = np.moveaxis(self.masks, 0, -1)  # (slice, row, column, segment)
        if frame_numbers is None:
            return np.ascontiguousarray(by_slice)
        if sorted(frame_numbers) != list(range(1, by_slice.shape[0] + 1)):
            raise ValueError("frame_numbers must be a permutation of 1..slices")
        stored = np.empty_like(by_slice)
        stored[np.asarray(frame_numbers, dtype=np.intp) - 1] = by_slice
        return stored
