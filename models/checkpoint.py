"""Training checkpoints: one file per run, written atomically, read back safely.

A checkpoint holds everything :func:`models.training.train` needs to continue a run as
if it had never stopped: model and optimiser state, the AMP grad-scaler state, the step
reached, the random number generators (numpy sampler, torch CPU and CUDA), the losses
and step scales so far and the FedGS accumulated update. It also holds a *fingerprint*
of the run (configuration, digest of the starting weights, case shapes), so that a
checkpoint is never resumed by a different run.

Files are written to ``<name>.tmp`` in the same folder, flushed to disk and renamed over
``<name>`` (``os.replace``), so a crash while writing leaves the previous checkpoint
intact. They are read with ``torch.load(weights_only=True)``: no code runs on load.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ModelsError

#: Written into every checkpoint; a file with another value is refused.
CHECKPOINT_FORMAT = "models.training.checkpoint/1"


class CheckpointError(ModelsError):
    """A checkpoint cannot be written, read, or does not belong to this run."""


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``state`` (in key order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` (plus the format tag) to ``path`` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save({"format": CHECKPOINT_FORMAT, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the training checkpoint {path.name}: {exc}") from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        # what the weights-only unpickler raises on some other garbage
        KeyError,
        IndexError,
        ValueError,
        TypeError,
    ) as exc:
        raise CheckpointError(f"cannot read the training checkpoint {path.name}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path.name} is not a training checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return payload
