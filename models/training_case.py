"""The labelled case every trainer and scorer takes, in a module of its own (numpy only):
a site that only counts or loads its cases (a federated ``query``) does not import torch
or MONAI for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class TrainingCase:
    """One labelled case in the boundary format: ``image`` ``(slice, row, column)`` or
    ``(C, slice, row, column)``, ``labels`` uint8 ``(slice, row, column)`` with the
    task's label indices (a sigmoid task: its tissue classes, see
    :attr:`models.tasks.TaskSpec.tissue_classes`), ``affine`` index -> LPS mm."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
