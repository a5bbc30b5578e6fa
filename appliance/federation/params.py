"""Model weights between torch, numpy and Flower's ``ArrayRecord``, and the FedBN split.

Weights travel as an ``ArrayRecord`` keyed by state-dict names. Normalisation-layer
entries (affine parameters and running statistics, see
:func:`models.networks.norm_parameter_names`) can be left out (FedBN) and merged back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord

from appliance.federation.aggregation import State

if TYPE_CHECKING:  # torch is imported where a model is: records alone need numpy only
    import torch
    from torch import nn


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def to_record(arrays: Mapping[str, np.ndarray], *, exclude: Iterable[str] = ()) -> ArrayRecord:
    """``ArrayRecord`` of ``arrays`` without the ``exclude`` keys (order kept). Shapes
    are kept exactly: a 0-d entry (BatchNorm's ``num_batches_tracked``) stays 0-d, which
    ``np.ascontiguousarray`` would make 1-d."""
    skip = set(exclude)
    return ArrayRecord(
        {k: Array(np.require(v, requirements="C")) for k, v in arrays.items() if k not in skip}
    )


def from_record(record: ArrayRecord) -> State:
    return {k: np.array(v.numpy(), copy=True) for k, v in record.items()}


def model_state(model: nn.Module) -> State:
    return state_to_numpy(model.state_dict())


def load_into(model: nn.Module, arrays: Mapping[str, np.ndarray], *, strict: bool = True) -> None:
    """Load numpy ``arrays`` into ``model`` (dtype of the model's own tensors kept)."""
    import torch

    current = model.state_dict()
    state = {}
    for key, value in arrays.items():
        if key in current:
            state[key] = torch.from_numpy(np.array(value, copy=True)).to(current[key].dtype)
        else:
            state[key] = torch.from_numpy(np.array(value, copy=True))
    model.load_state_dict(state, strict=strict)
