"""Import a MONAI-bundle-style folder into the model registry.

This is how a site brings real pretrained weights. The folder follows the MONAI bundle
specification::

    <bundle>/
      configs/metadata.json    version, name, task, description, authors, changelog,
                               monai_version, network_data_format {inputs, outputs}, ...
      configs/inference.json   must hold "network_def": {"_target_": "DynUNet", ...kwargs}
      models/model.pt          a state dict, or a checkpoint dict with the state dict under
                               "model", "state_dict" or "network"

Configs may be JSON or YAML (``.yaml``/``.yml``, read with the safe loader). They are read
as data by :mod:`models.bundle_config`, never given to MONAI's ``ConfigParser``: nothing
in them is imported, instantiated or run. Within ``network_def``:

- ``_target_`` must name a class in :data:`models.registry.ALLOWED_NETWORKS` (short name
  or ``monai.networks.nets....``); nothing else is constructed and nothing is imported;
- ``"@id"`` references to other values of the config are resolved (e.g.
  ``"out_channels": "@num_classes"``), and ``"$..."`` expressions are evaluated only when
  they are plain (literals, references, arithmetic, ``x if c else y``:
  :func:`models.bundle_config.evaluate`); anything that would call or import is refused;
- ``%`` macros (which may read other files) and the special keys ``_requires_``,
  ``_mode_``, ``_disabled_`` and nested ``_target_`` components are refused.

The resolved definition, now plain values only, is instantiated with MONAI's
:class:`~monai.bundle.ConfigParser` (:func:`models.registry.build_network`). The weights
are loaded with ``torch.load(..., weights_only=True)`` and then into the network with
``strict=True``, which proves they fit the architecture before anything is registered.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle_config import lookup, read_config, resolve
from .errors import BundleImportError, NetworkConfigError
from .model_card import (
    CardLabel,
    InvalidNameError,
    ModelCardError,
    check_task_name,
    check_version,
    labels_for_task,
    preprocessing_for_task,
)
from .registry import (
    ModelBundle,
    ModelRegistry,
    build_network,
    check_network_kwargs,
    resolve_network,
)
from .tasks import TASKS, TaskName, TaskSpec

__all__ = [
    "IMPORTED_INTENDED_USE",
    "INFERENCE_FILE",
    "METADATA_FILE",
    "MODEL_FILE",
    "BundleImportError",
    "MonaiBundle",
    "import_monai_bundle",
    "read_monai_bundle",
]

METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
MODEL_FILE = "models/model.pt"

#: Intended use recorded for imported weights unless the caller or the bundle says more.
IMPORTED_INTENDED_USE = (
    "Imported MONAI bundle, not yet validated at this site. Research use only; not for diagnosis."
)

_MAX_REF_DEPTH = 32
_CHECKPOINT_KEYS = ("model", "state_dict", "network", "model_state_dict")
_NETWORK_DEF = "network_def"
_ALLOWED_DEF_KEYS = frozenset({"_target_", "_desc_"})
_SPECIAL_KEY = re.compile(r"_[A-Za-z]+_")


# -- reading the folder --------------------------------------------------------------------


def _network_def(
    inference: Mapping[str, Any], file: str = INFERENCE_FILE
) -> tuple[str, str, dict[str, Any]]:
    """(original _target_, canonical network name, plain kwargs) of ``network_def``."""
    if _NETWORK_DEF not in inference:
        raise BundleImportError(f"{file} has no {_NETWORK_DEF!r} entry")
    raw: Any = inference[_NETWORK_DEF]
    chain: tuple[str, ...] = (_NETWORK_DEF,)
    # network_def may itself be a reference to another entry ("@network_config").
    while isinstance(raw, str) and raw.startswith("@"):
        ref = raw[1:]
        if ref in chain or len(chain) > _MAX_REF_DEPTH:
            raise BundleImportError(f"{file}: {_NETWORK_DEF}: circular reference {raw!r}")
        try:
            raw = lookup(inference, ref)
        except KeyError:
            raise BundleImportError(
                f"{file}: {_NETWORK_DEF} refers to {raw!r}, which is not defined"
            ) from None
        chain = (*chain, ref)
    if not isinstance(raw, Mapping) or "_target_" not in raw:
        raise BundleImportError(
            f"{file}: {_NETWORK_DEF} must be an object with a '_target_' naming a MONAI network"
        )
    special = sorted(k for k in raw if _SPECIAL_KEY.fullmatch(k) and k not in _ALLOWED_DEF_KEYS)
    if special:
        raise BundleImportError(
            f"{file}: {_NETWORK_DEF}: keys {special} are not allowed "
            "(only _target_ and plain constructor arguments)"
        )
    target = raw["_target_"]
    if not isinstance(target, str):
        raise BundleImportError(f"{file}: {_NETWORK_DEF}._target_ must be a string")
    try:
        name = resolve_network(target)
    except NetworkConfigError as exc:
        raise BundleImportError(f"{file}: {_NETWORK_DEF}._target_: {exc}") from exc
    kwargs = {k: v for k, v in raw.items() if k not in _ALLOWED_DEF_KEYS}
    resolved = resolve(kwargs, inference, _NETWORK_DEF, file=file, chain=chain)
    try:
        plain = check_network_kwargs(resolved, _NETWORK_DEF)
    except NetworkConfigError as exc:
        raise BundleImportError(f"{file}: {exc}") from exc
    return target, name, plain


def _extract_state_dict(loaded: object, src: Path) -> dict[str, torch.Tensor]:
    def is_state_dict(obj: object) -> bool:
        return (
            isinstance(obj, Mapping)
            and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
        )

    state: object = loaded
    if not is_state_dict(state) and isinstance(loaded, Mapping):
        for key in _CHECKPOINT_KEYS:
            if is_state_dict(loaded.get(key)):
                state = loaded[key]
                break
    if not is_state_dict(state):
        keys = sorted(str(k) for k in loaded)[:8] if isinstance(loaded, Mapping) else []
        raise BundleImportError(
            f"MONAI bundle {src.name}: {MODEL_FILE} holds neither a state dict nor a "
            f"checkpoint with one under {list(_CHECKPOINT_KEYS)} (top-level keys: {keys})"
        )
    assert isinstance(state, Mapping)
    tensors = {str(k): v for k, v in state.items()}
    # Weights saved from DataParallel / DistributedDataParallel carry a "module." prefix.
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _load_weights(src: Path) -> tuple[dict[str, torch.Tensor], str]:
    path = src / MODEL_FILE
    if not path.is_file():
        hint = ""
        if (src / "models" / "model.ts").is_file():
            hint = " (models/model.ts exists, but TorchScript weights are not supported)"
        raise BundleImportError(f"MONAI bundle {src.name}: {MODEL_FILE} is missing{hint}")
    data = path.read_bytes()
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        raise BundleImportError(
            f"MONAI bundle {src.name}: {MODEL_FILE} cannot be loaded as plain tensors "
            f"(weights_only=True): {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    return _extract_state_dict(loaded, src), hashlib.sha256(data).hexdigest()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def _effective_kwarg(name: str, kwargs: Mapping[str, Any], key: str) -> Any:
    """``kwargs[key]``, or the constructor's default for it, or None when unknown."""
    if key in kwargs:
        return kwargs[key]
    import monai.networks.nets as nets

    try:
        parameter = inspect.signature(getattr(nets, name)).parameters.get(key)
    except (TypeError, ValueError):
        return None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


# -- the bundle as read --------------------------------------------------------------------


class MonaiBundle:
    """A MONAI bundle folder, read and checked, ready to register (see
    :func:`read_monai_bundle`)."""

    def __init__(
        self,
        src: Path,
        metadata: dict[str, Any],
        target: str,
        network: str,
        kwargs: dict[str, Any],
        state_dict: dict[str, torch.Tensor],
        files_sha256: dict[str, str],
        *,
        metadata_file: str = METADATA_FILE,
        inference_file: str = INFERENCE_FILE,
    ) -> None:
        self.metadata_file = metadata_file
        self.inference_file = inference_file
        self.src = src
        self.metadata = metadata
        self.target = target
        self.network = network
        self.kwargs = kwargs
        self.state_dict = state_dict
        self.files_sha256 = files_sha256

    @property
    def architecture(self) -> dict[str, Any]:
        return {"network": self.network, "kwargs": self.kwargs}

    def build(self) -> torch.nn.Module:
        """A fresh network of the bundle's architecture with its weights (strict)."""
        try:
            network = build_network(self.architecture)
        except NetworkConfigError as exc:
            raise BundleImportError(f"{self.inference_file}: {_NETWORK_DEF}: {exc}") from exc
        try:
            network.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            raise BundleImportError(
                f"MONAI bundle {self.src.name}: {MODEL_FILE} does not match the network in "
                f"{self.inference_file} ({self.network}): {_summarise_load_error(exc)}"
            ) from exc
        return network


def _summarise_load_error(exc: RuntimeError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[1:] if len(lines) > 1 else lines)
    return text if len(text) <= 600 else text[:600] + " ..."


def read_monai_bundle(src: Path) -> MonaiBundle:
    """Read and check a MONAI bundle folder: both configs, the network definition (against
    the whitelist) and the weights, which must load into the network with ``strict=True``.
    Registers nothing. Errors are :class:`BundleImportError` naming the file."""
    src = Path(src)
    if not src.is_dir():
        raise BundleImportError(f"MONAI bundle folder {str(src)!r} does not exist")
    metadata, metadata_file, metadata_sha = read_config(src, "metadata")
    inference, inference_file, inference_sha = read_config(src, "inference")
    target, network, kwargs = _network_def(inference, inference_file)
    state_dict, weights_sha = _load_weights(src)
    bundle = MonaiBundle(
        src=src,
        metadata=metadata,
        target=target,
        network=network,
        kwargs=kwargs,
        state_dict=state_dict,
        files_sha256={
            metadata_file: metadata_sha,
            inference_file: inference_sha,
            MODEL_FILE: weights_sha,
        },
        metadata_file=metadata_file,
        inference_file=inference_file,
    )
    bundle.build()  # proves the weights fit the architecture
    return bundle


# -- import --------------------------------------------------------------------------------


def _metadata_text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _metrics(metadata: Mapping[str, Any]) -> dict[str, float]:
    raw = metadata.get("eval_metrics")
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == value and abs(value) != float("inf"):
            out[str(key)] = float(value)
    return out


def _source(bundle: MonaiBundle) -> dict[str, Any]:
    metadata = bundle.metadata
    source: dict[str, Any] = {
        "kind": "monai_bundle",
        "folder": bundle.src.name,
        "network_target": bundle.target,
        "files_sha256": dict(bundle.files_sha256),
    }
    for key in (
        "name",
        "version",
        "task",
        "description",
        "authors",
        "authorship",
        "copyright",
        "license",
        "monai_version",
        "pytorch_version",
        "data_source",
        "data_type",
        "references",
    ):
        value = metadata.get(key)
        if isinstance(value, str | int | float | list) and not isinstance(value, bool):
            source[f"bundle_{key}"] = value
    fmt = metadata.get("network_data_format")
    if isinstance(fmt, Mapping):
        source["network_data_format"] = fmt
    changelog = metadata.get("changelog")
    if isinstance(changelog, Mapping):
        source["changelog"] = {str(k): v for k, v in changelog.items() if isinstance(v, str)}
    return source


def _check_channels(
    bundle: MonaiBundle, labels: Sequence[CardLabel], spec: TaskSpec | None
) -> None:
    kwargs = bundle.kwargs
    dims = _effective_kwarg(bundle.network, kwargs, "spatial_dims")
    if dims is not None and dims != 3:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}.spatial_dims is {dims}; this appliance "
            "segments volumes (3)"
        )
    out_channels = _effective_kwarg(bundle.network, kwargs, "out_channels")
    if out_channels is not None and out_channels != len(labels) + 1:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}.out_channels is {out_channels}, but "
            f"{len(labels)} label(s) need {len(labels) + 1} (background + one per label)"
        )
    in_channels = _effective_kwarg(bundle.network, kwargs, "in_channels")
    if spec is not None and in_channels is not None and in_channels != spec.in_channels:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}.in_channels is {in_channels}, but task "
            f"{spec.name} has {spec.in_channels} input channel(s)"
        )


def _shipped_task(task: str) -> TaskSpec | None:
    try:
        return TASKS.get(TaskName(task))
    except ValueError:
        return None


def import_monai_bundle(
    src: Path,
    registry: ModelRegistry,
    *,
    task: str,
    version: str | None = None,
    labels: Sequence[CardLabel] | None = None,
    name: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    intended_use: str | None = None,
    training_data: str | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ModelBundle:
    """Import the MONAI bundle folder ``src`` into ``registry`` as ``task/version``.

    ``version`` defaults to the bundle's ``metadata.json`` version. ``labels`` and
    ``preprocessing`` default to the shipped task spec when ``task`` is one of
    :data:`models.tasks.TASKS`; for any other task they must be given. The card records
    the architecture from ``network_def``, the metadata's description, authors, changelog
    and data format under ``source``, and its ``eval_metrics`` as ``metrics``.

    The imported model is only registered: making it a candidate / active is the store's
    business. Errors: :class:`BundleImportError` (the folder), ``InvalidNameError``
    (task/version), ``BundleExistsError`` (the version exists).
    """
    src = Path(src)
    check_task_name(task)
    if version is not None:
        check_version(version)
    spec = _shipped_task(task)
    if labels is None:
        if spec is None:
            raise BundleImportError(
                f"task {task!r} is not a shipped task; pass labels= (with their codes)"
            )
        labels = labels_for_task(spec)
    if preprocessing is None:
        if spec is None:
            raise BundleImportError(
                f"task {task!r} is not a shipped task; pass preprocessing= (spacing, "
                "intensity handling, patch size)"
            )
        preprocessing = preprocessing_for_task(spec)

    bundle = read_monai_bundle(src)
    metadata = bundle.metadata
    if version is None:
        meta_version = metadata.get("version")
        if meta_version is None:
            raise BundleImportError(
                f"MONAI bundle {src.name}: {bundle.metadata_file} has no 'version'; pass version="
            )
        try:
            version = check_version(meta_version)
        except InvalidNameError as exc:
            raise BundleImportError(
                f"MONAI bundle {src.name}: {bundle.metadata_file} field 'version': {exc}; "
                "pass version="
            ) from exc
    _check_channels(bundle, labels, spec)

    card_name = name or _metadata_text(metadata, "name") or src.name
    data_source = _metadata_text(metadata, "data_source") or ""
    try:
        return registry.add(
            task,
            version,
            bundle.state_dict,
            name=card_name,
            labels=labels,
            architecture=bundle.architecture,
            preprocessing=preprocessing,
            intended_use=intended_use
            or _metadata_text(metadata, "intended_use")
            or IMPORTED_INTENDED_USE,
            training_data=training_data if training_data is not None else data_source,
            metrics=metrics if metrics is not None else _metrics(metadata),
            source=_source(bundle),
        )
    except ModelCardError as exc:
        raise BundleImportError(f"MONAI bundle {src.name}: {exc}") from exc
