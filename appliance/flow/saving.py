"""Writing an output dataset durably: to a temporary name, fsync'd, then renamed into place,
so a file that exists under its final name is complete."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import Dataset


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` (DICOM file format) to ``path`` atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
