"""A SEG made from several series of one study (a task's roles, e.g. T1c, T1, T2, FLAIR)
lies on one of them (its source) and also references the others: each becomes an item
of the SEG's ReferencedSeriesSequence (Common Instance Reference module), naming its
instances."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from dicom_bridge.seg import SegmentationWriteError

_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"]


def reference_other_series(seg: Dataset, series_paths: Sequence[Sequence[Path]]) -> None:
    """Add to ``seg``'s ReferencedSeriesSequence one item per series in ``series_paths``
    (the files of each), with all its instances. Every series must be of the SEG's study
    (:class:`SegmentationWriteError` otherwise); a series already referenced is left."""
    items = seg.get("ReferencedSeriesSequence")
    if items is None:
        items = DicomSequence()
        seg.ReferencedSeriesSequence = items
    known = {str(item.SeriesInstanceUID) for item in items}
    for paths in series_paths:
        headers = [dcmread(p, stop_before_pixels=True, specific_tags=_TAGS) for p in paths]
        if not headers:
            continue
        series_uids = {str(h.SeriesInstanceUID) for h in headers}
        if len(series_uids) != 1:
            raise SegmentationWriteError("the files of a referenced series name several series")
        if any(str(h.StudyInstanceUID) != str(seg.StudyInstanceUID) for h in headers):
            raise SegmentationWriteError("a referenced series is not of the SEG's study")
        (series_uid,) = series_uids
        if series_uid in known:
            continue
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        instances = DicomSequence()
        for header in sorted(headers, key=lambda h: str(h.SOPInstanceUID)):
            ref = Dataset()
            ref.ReferencedSOPClassUID = header.SOPClassUID
            ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
            instances.append(ref)
        item.ReferencedInstanceSequence = instances
        items.append(item)
        known.add(series_uid)
