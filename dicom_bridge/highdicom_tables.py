"""highdicom's IOD table look-ups, memoised.

highdicom asks its standard tables whether an IOD holds an attribute (``NumberOfFrames``
to tell multi-frame classes apart, ``PixelData`` to tell images from other objects) once
per source image: :class:`highdicom.seg.Segmentation` once per referenced slice,
``get_volume_from_series`` once per slice. Each answer walks every attribute of every
module of the IOD (about 1 ms), and depends on nothing but the attribute keyword, the
SOP Class UID and the excluded path elements, so it is computed once per combination
here. Answers are identical; an unknown SOP class still raises highdicom's ``KeyError``
(exceptions are not remembered).

:func:`install` replaces ``highdicom._standard_utils.is_attribute_in_iod``, through
which ``is_multiframe_image`` and ``does_iod_have_pixel_data`` ask; it is idempotent and
is called when :mod:`dicom_bridge.volume` and :mod:`dicom_bridge.seg` are imported.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Final

from highdicom import _standard_utils

__all__ = ["install", "installed"]

_ORIGINAL: Final[Callable[..., bool]] = _standard_utils.is_attribute_in_iod


@functools.lru_cache(maxsize=4096)
def _cached(attribute: str, sop_class_uid: str, excluded: tuple[str, ...] | None) -> bool:
    return bool(
        _ORIGINAL(attribute, sop_class_uid, list(excluded) if excluded is not None else None)
    )


def _is_attribute_in_iod(
    attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None
) -> bool:
    excluded = tuple(exclude_path_elements) if exclude_path_elements is not None else None
    return _cached(str(attribute), str(sop_class_uid), excluded)


def install() -> None:
    """Route highdicom's IOD look-ups through the memo (idempotent)."""
    _standard_utils.is_attribute_in_iod = _is_attribute_in_iod


def installed() -> bool:
    return _standard_utils.is_attribute_in_iod is _is_attribute_in_iod
