"""Blob loss: a Dice term per lesion instance, so that small lesions count as much as
large ones.

Kofler et al., "blob loss: instance imbalance aware loss functions for semantic
segmentation" (IPMI 2023). A Dice computed over a whole patch is dominated by its
largest structure: a 5 mm lesion next to a 30 mm one moves it by a fraction of a
percent. Blob loss adds, for every connected component ("blob") of a lesion class in
the target, the Dice of that blob alone against the class probability with the *other*
blobs of the class masked out (so finding blob A is not penalised when scoring blob B,
while false positives elsewhere count against every blob). The mean over the batch's
blobs is added to the usual loss with a weight; a patch without lesions adds nothing.

Components are found on the CPU (26-connectivity, as the lesion metrics of
:mod:`models.evaluation` count them) from the integer target, which carries no gradient.

:func:`false_blob_loss` is its counterpart for false positives (not in the paper): the
mean probability over each predicted lesion component that touches no lesion, every
such component counting the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError
from .postprocess import label_components

#: Smoothing of each blob's soft Dice (keeps it defined; small against any blob's size).
BLOB_SMOOTH = 1e-5

#: The most blobs per sample and class (the largest are kept: a patch
#: holding more tiny components than this is noise, not lesions).
MAX_BLOBS = 64


def _check_inputs(
    what: str,
    probabilities: torch.Tensor,
    target: torch.Tensor,
    lesion_classes: Sequence[int],
    max_blobs: int,
) -> None:
    """Raise :class:`InputError` (naming ``what``) unless the shapes, lesion classes and
    ``max_blobs`` are what the blob losses take."""
    if probabilities.dim() != 5 or target.dim() != 5 or target.shape[1] != 1:
        raise InputError(
            f"{what} needs (B, C, X, Y, Z) probabilities and a (B, 1, X, Y, Z) target, "
            f"got {tuple(probabilities.shape)} and {tuple(target.shape)}"
        )
    if probabilities.shape[0] != target.shape[0] or probabilities.shape[2:] != target.shape[2:]:
        raise InputError(
            f"{what}: probabilities {tuple(probabilities.shape)} and target "
            f"{tuple(target.shape)} differ in batch or grid"
        )
    channels = int(probabilities.shape[1])
    for cls in lesion_classes:
        if not 0 < int(cls) < channels:
            raise InputError(f"{what}: lesion class {cls} is not in 1..{channels - 1}")
    if max_blobs < 1:
        raise InputError(f"{what}: max_blobs must be >= 1")


def blob_dice_loss(
    probabilities: torch.Tensor,
    target: torch.Tensor,
    lesion_classes: Sequence[int],
    *,
    max_blobs: int = MAX_BLOBS,
) -> torch.Tensor:
    """Mean over the lesion blobs of ``target`` of ``1 - soft Dice`` of each blob.

    ``probabilities``: ``(B, C, X, Y, Z)`` class probabilities (softmax output);
    ``target``: ``(B, 1, X, Y, Z)`` integer class map; ``lesion_classes``: the classes
    whose connected components are blobs. Returns a scalar (0, still attached to the
    graph, when the batch has no blob)."""
    _check_inputs("blob loss", probabilities, target, lesion_classes, max_blobs)
    labels = target[:, 0].detach().cpu().numpy()
    terms: list[torch.Tensor] = []
    for b in range(labels.shape[0]):
        for cls in lesion_classes:
            present = labels[b] == int(cls)
            if not present.any():
                continue
            components, count = label_components(present, 26)
            if count == 0:
                continue
            sizes = np.bincount(components.reshape(-1), minlength=count + 1)[1:]
            order = np.argsort(-sizes, kind="stable")[:max_blobs]
            comp = torch.as_tensor(components, device=probabilities.device)
            cls_mask = torch.as_tensor(present, device=probabilities.device)
            prob = probabilities[b, int(cls)].float()
            for k in order:
                blob = comp == int(k) + 1
                # the class's probability with the other blobs' voxels masked out
                seen = prob * (blob | ~cls_mask)
                blob_f = blob.float()
                inter = (seen * blob_f).sum()
                denominator = seen.sum() + blob_f.sum()
                terms.append(1.0 - (2.0 * inter + BLOB_SMOOTH) / (denominator + BLOB_SMOOTH))
    if not terms:
        return probabilities.sum() * 0.0
    return torch.stack(terms).mean()


def false_blob_loss(
    probabilities: torch.Tensor,
    target: torch.Tensor,
    lesion_classes: Sequence[int],
    *,
    max_blobs: int = MAX_BLOBS,
) -> torch.Tensor:
    """Mean over the *false* blobs of the prediction of the class's mean probability over
    each: the counterpart of :func:`blob_dice_loss` for false positives.

    A false blob is a connected component of the arg-max prediction of a lesion class
    that touches no voxel of that class in ``target``. Each counts the same whatever its
    size, as each lesion does in the blob loss: a 0.05 mL false "lesion" in the liver
    parenchyma costs as much as a 2 mL one, where Dice and cross-entropy over the patch
    barely notice a small one (and a patch without lesions adds nothing to the blob
    loss). Shapes as :func:`blob_dice_loss`; returns 0 (attached to the graph) when
    there is no false blob. The components are found on the CPU from the detached
    prediction; the gradient flows through the probabilities only."""
    _check_inputs("false-blob loss", probabilities, target, lesion_classes, max_blobs)
    predicted = probabilities.detach().argmax(dim=1).cpu().numpy()
    labels = target[:, 0].detach().cpu().numpy()
    terms: list[torch.Tensor] = []
    for b in range(predicted.shape[0]):
        for cls in lesion_classes:
            found = predicted[b] == int(cls)
            if not found.any():
                continue
            components, count = label_components(found, 26)
            touched = np.unique(components[(labels[b] == int(cls)) & found])
            false = np.setdiff1d(np.arange(1, count + 1), touched)
            if false.size == 0:
                continue
            sizes = np.bincount(components.reshape(-1), minlength=count + 1)
            false = false[np.argsort(-sizes[false], kind="stable")][:max_blobs]
            comp = torch.as_tensor(components, device=probabilities.device)
            prob = probabilities[b, int(cls)].float()
            for k in false:
                blob = comp == int(k)
                terms.append(prob[blob].mean())
    if not terms:
        return probabilities.sum() * 0.0
    return torch.stack(terms).mean()
