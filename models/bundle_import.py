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

Then the bundle must fit the task:

- **channels**: ``network_def.out_channels`` must equal the number of channels the
  metadata's ``network_data_format.outputs.pred.channel_def`` names, and the channels are
  mapped to the task's labels by name (:mod:`models.channel_map`, which also states which
  labels are required). Softmax vs sigmoid is read from the postprocessing's
  ``Activations``/``Activationsd`` (``sigmoid=True`` -> sigmoid, otherwise softmax). The
  mapping goes on the card as ``preprocessing["bundle"]`` = ``{"out_channels": N,
  "activation": "softmax"|"sigmoid", "channel_labels": {"<channel>": <label index>},
  "channel_def": {...}}``; the card's ``labels`` stay the task's;
- **MONAI versions**: the bundle's ``monai_version`` (``source.bundle_monai_version``)
  and the installed one (``source.installed_monai_version``) are recorded. Constructor
  arguments that the installed MONAI removed are dropped only where that is known to be
  harmless (SwinUNETR ``img_size``, removed in 1.5), with a note in
  ``source.translations``; any other argument the installed network does not take is
  refused, naming the argument and both versions;
- **one forward pass** on the CPU under ``torch.no_grad`` (:func:`models.probe.run_probe`)
  on an input of the declared shape: the inferer's ``roi_size``, else the metadata's
  numeric ``inputs.image.spatial_shape``, else the smallest cube the network takes. The
  output must have ``out_channels`` channels, the input's spatial shape and be finite.
  This is slow for large rois on a CPU (BraTS SegResNet at 240 x 240 x 160: ~45 s on a
  2-core machine; wholeBody SegResNet at 96^3 with 105 outputs: ~10 s), and it is done
  anyway: an import happens once, and a model that does not run at its own shape must
  not be registered.
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
from .bundle_pipeline import BundlePipeline, check_channel_labels, parse_pipeline
from .channel_map import ChannelMap, map_channels, parse_channel_def
from .errors import BundleImportError, NetworkConfigError, SpecError
from .model_card import (
    CardLabel,
    InvalidNameError,
    ModelCardError,
    check_task_name,
    check_version,
    labels_for_task,
    preprocessing_for_task,
)
from .probe import BundleProbeError, probe_shape, run_probe
from .registry import (
    ModelBundle,
    ModelRegistry,
    build_network,
    check_network_kwargs,
    resolve_network,
)
from .tasks import TASKS, OutputActivation, TaskName, TaskSpec

__all__ = [
    "IMPORTED_INTENDED_USE",
    "INFERENCE_FILE",
    "MAX_PROBE_VOXELS",
    "METADATA_FILE",
    "MODEL_FILE",
    "BundleImportError",
    "MonaiBundle",
    "declared_input_shape",
    "import_monai_bundle",
    "installed_monai_version",
    "read_monai_bundle",
]

METADATA_FILE = "configs/metadata.json"
INFERENCE_FILE = "configs/inference.json"
MODEL_FILE = "models/model.pt"

#: Intended use recorded for imported weights unless the caller or the bundle says more.
IMPORTED_INTENDED_USE = (
    "Imported MONAI bundle, not yet validated at this site. Research use only; not for diagnosis."
)

#: The largest input (voxels per channel) the import's forward pass may allocate: a
#: declared ``roi_size`` beyond it is refused. 240 x 240 x 160 (BraTS) is 9.2 M.
MAX_PROBE_VOXELS = 2**24

#: Constructor arguments that MONAI removed and that can be dropped without changing the
#: network: (network, argument) -> the note recorded in the card's ``source.translations``.
_REMOVED_ARGUMENTS: Mapping[tuple[str, str], str] = {
    ("SwinUNETR", "img_size"): (
        "SwinUNETR: img_size dropped (removed in MONAI 1.5; the network takes any input "
        "divisible by 32)"
    ),
}
_ACTIVATIONS = frozenset({"Activations", "Activationsd"})

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


def installed_monai_version() -> str:
    """The MONAI version this appliance runs (``monai.__version__``)."""
    import monai

    return str(monai.__version__)


def _translate(
    name: str, kwargs: dict[str, Any], bundle_monai: str, file: str
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``kwargs`` made acceptable to the installed MONAI's ``name``: arguments MONAI
    removed harmlessly (:data:`_REMOVED_ARGUMENTS`) are dropped with a note; any other
    argument the installed constructor does not take is refused."""
    import monai.networks.nets as nets

    try:
        parameters = inspect.signature(getattr(nets, name)).parameters
    except (TypeError, ValueError):  # no signature to check against: MONAI decides
        return kwargs, ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return kwargs, ()
    out = dict(kwargs)
    notes: list[str] = []
    for key in list(out):
        if key in parameters:
            continue
        note = _REMOVED_ARGUMENTS.get((name, key))
        if note is None:
            raise BundleImportError(
                f"{file}: {_NETWORK_DEF}: {name} in the installed MONAI "
                f"{installed_monai_version()} has no argument {key!r} (the bundle was written "
                f"for MONAI {bundle_monai}); this argument cannot be translated"
            )
        del out[key]
        notes.append(note)
    return out, tuple(notes)


def _find_activation(node: Any, config: Mapping[str, Any], file: str, depth: int = 0) -> Any:
    """The first Activations/Activationsd component under ``node`` (following ``@``
    references of whole entries), or None."""
    if depth > _MAX_REF_DEPTH:
        return None
    if isinstance(node, str) and node.startswith("@"):
        try:
            return _find_activation(lookup(config, node[1:]), config, file, depth + 1)
        except KeyError:
            return None
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if isinstance(target, str) and target.rsplit(".", 1)[-1] in _ACTIVATIONS:
            return node
        children: Any = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_activation(child, config, file, depth + 1)
        if found is not None:
            return found
    return None


def _activation(inference: Mapping[str, Any], file: str) -> OutputActivation:
    """Sigmoid when the postprocessing's first ``Activations``/``Activationsd`` says
    ``sigmoid=True`` (values resolved with :func:`~models.bundle_config.resolve`), else
    softmax (MONAI's segmentation bundles' default: softmax + argmax)."""
    component = _find_activation(inference.get("postprocessing"), inference, file)
    if component is None:
        return OutputActivation.SOFTMAX
    value = component.get("sigmoid", False)
    sigmoid = resolve(value, inference, "postprocessing.Activations.sigmoid", file=file)
    return OutputActivation.SIGMOID if sigmoid is True else OutputActivation.SOFTMAX


def _sizes(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * 3
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    return None


def declared_input_shape(bundle: MonaiBundle, in_channels: int) -> tuple[tuple[int, ...], str]:
    """``((1, in_channels, *spatial), where it came from)``: the inferer's ``roi_size``
    (resolved), else ``network_data_format.inputs.image.spatial_shape`` when it is numeric,
    else the probe's smallest cube for the architecture (:func:`models.probe.probe_shape`)."""
    inference = bundle.inference
    inferer = inference.get("inferer")
    if isinstance(inferer, str) and inferer.startswith("@"):
        try:
            inferer = lookup(inference, inferer[1:])
        except KeyError:
            inferer = None
    if isinstance(inferer, Mapping) and "roi_size" in inferer:
        try:
            roi = _sizes(
                resolve(
                    inferer["roi_size"], inference, "inferer.roi_size", file=bundle.inference_file
                )
            )
        except BundleImportError:
            roi = None
        if roi is not None:
            return (1, in_channels, *roi), f"{bundle.inference_file} inferer.roi_size"
    fmt = bundle.metadata.get("network_data_format")
    try:
        spatial = fmt["inputs"]["image"]["spatial_shape"]  # type: ignore[index]
    except (KeyError, TypeError):
        spatial = None
    shape = _sizes(spatial)
    if shape is not None:
        return (
            (1, in_channels, *shape),
            f"{bundle.metadata_file} network_data_format.inputs.image.spatial_shape",
        )
    return probe_shape(bundle.architecture, in_channels), "the smallest cube the network takes"


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
        inference: dict[str, Any] | None = None,
        translations: tuple[str, ...] = (),
    ) -> None:
        self.inference = inference if inference is not None else {}
        self.translations = translations
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
    bundle_monai = metadata.get("monai_version")
    kwargs, translations = _translate(
        network, kwargs, str(bundle_monai) if bundle_monai else "(not stated)", inference_file
    )
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
        inference=inference,
        translations=translations,
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
    source["installed_monai_version"] = installed_monai_version()
    if bundle.translations:
        source["translations"] = list(bundle.translations)
    return source


def _check_network(bundle: MonaiBundle, spec: TaskSpec | None) -> tuple[int, int]:
    """(in_channels, out_channels) of the bundle's network, checked against the task."""
    kwargs = bundle.kwargs
    dims = _effective_kwarg(bundle.network, kwargs, "spatial_dims")
    if dims is not None and dims != 3:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}.spatial_dims is {dims}; this appliance "
            "segments volumes (3)"
        )
    in_channels = _effective_kwarg(bundle.network, kwargs, "in_channels")
    if spec is not None and in_channels is not None and in_channels != spec.in_channels:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}.in_channels is {in_channels}, but task "
            f"{spec.name} has {spec.in_channels} input channel(s)"
        )
    out_channels = _effective_kwarg(bundle.network, kwargs, "out_channels")
    if out_channels is None:  # e.g. DiNTS-like "num_classes"; not in the whitelist today
        out_channels = _effective_kwarg(bundle.network, kwargs, "num_classes")
    if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
        raise BundleImportError(
            f"{bundle.inference_file}: {_NETWORK_DEF}: the number of output channels "
            f"({out_channels!r}) is not a positive integer"
        )
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        in_channels = spec.in_channels if spec is not None else 1
    return in_channels, out_channels


def _channel_map(
    bundle: MonaiBundle,
    labels: Sequence[CardLabel],
    task: str,
    out_channels: int,
    label_map: Mapping[int, str] | None,
) -> ChannelMap:
    where = (
        f"MONAI bundle {bundle.src.name}: {bundle.metadata_file} "
        "network_data_format.outputs.pred.channel_def"
    )
    try:
        raw = bundle.metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    except (KeyError, TypeError):
        raw = None
    return map_channels(
        labels,
        out_channels=out_channels,
        activation=_activation(bundle.inference, bundle.inference_file),
        channel_def=None if raw is None else parse_channel_def(raw, where),
        override=label_map,
        bundle=bundle.src.name,
        task=task,
    )


def _pipeline(bundle: MonaiBundle, channels: ChannelMap) -> BundlePipeline:
    """The bundle's own pre-processing, inferer and post-processing, which its jobs run
    (:mod:`models.bundle_pipeline`); it must agree with the channel map."""
    pipeline = parse_pipeline(bundle.inference, bundle.inference_file)
    sigmoid = channels.activation is OutputActivation.SIGMOID
    if pipeline.multi_label != sigmoid:
        raise BundleImportError(
            f"MONAI bundle {bundle.src.name}: {bundle.inference_file} postprocessing "
            f"{'thresholds' if pipeline.multi_label else 'takes the argmax of'} the outputs, "
            f"but its activation is {channels.activation.value}"
        )
    try:
        check_channel_labels(pipeline, channels.channel_labels)
    except SpecError as exc:
        raise BundleImportError(f"MONAI bundle {bundle.src.name}: {exc}") from exc
    return pipeline


def _probe(bundle: MonaiBundle, in_channels: int, out_channels: int) -> tuple[int, ...]:
    """One forward pass at the declared input shape (:func:`declared_input_shape`)."""
    shape, origin = declared_input_shape(bundle, in_channels)
    voxels = shape[2] * shape[3] * shape[4] if len(shape) == 5 else 0
    if not 0 < voxels <= MAX_PROBE_VOXELS:
        raise BundleImportError(
            f"MONAI bundle {bundle.src.name}: the declared input {list(shape[2:])} ({origin}) "
            f"is larger than the {MAX_PROBE_VOXELS} voxels this appliance tests a network on"
        )
    network = bundle.build()
    try:
        run_probe(network, shape, out_channels, f"MONAI bundle {bundle.src.name}")
    except BundleProbeError as exc:
        raise BundleImportError(f"{exc} (input shape from {origin})") from exc
    return shape


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
    label_map: Mapping[int, str] | None = None,
) -> ModelBundle:
    """Import the MONAI bundle folder ``src`` into ``registry`` as ``task/version``.

    ``version`` defaults to the bundle's ``metadata.json`` version. ``labels`` and
    ``preprocessing`` default to the shipped task spec when ``task`` is one of
    :data:`models.tasks.TASKS`; for any other task they must be given. The card records
    the architecture from ``network_def``, the metadata's description, authors, changelog
    and data format under ``source``, and its ``eval_metrics`` as ``metrics``.

    Output channels are mapped to the labels by the metadata's ``channel_def``
    (:func:`models.channel_map.map_channels`; ``label_map`` is the site's override,
    :func:`models.channel_map.parse_label_map`) and recorded as ``preprocessing["bundle"]``;
    optional labels the bundle lacks are listed in ``source["missing_labels"]``. The
    network's constructor arguments are translated to the installed MONAI where that is
    safe (``source["translations"]``), and before anything is registered the network runs
    once on an input of the declared shape (:func:`declared_input_shape`).

    The imported model is only registered: making it a candidate / active is the store's
    business. Errors: :class:`BundleImportError` (the folder; its subclass
    :class:`~models.errors.ChannelMapError` when the channels do not fit the task),
    ``InvalidNameError`` (task/version), ``BundleExistsError`` (the version exists).
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
    in_channels, out_channels = _check_network(bundle, spec)
    channels = _channel_map(bundle, labels, task, out_channels, label_map)
    pipeline = _pipeline(bundle, channels)
    _probe(bundle, in_channels, out_channels)
    source = _source(bundle)
    if channels.missing:
        source["missing_labels"] = list(channels.missing)
    if label_map:
        source["label_map_override"] = {str(c): label for c, label in label_map.items()}

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
            preprocessing={
                **preprocessing,
                "bundle": channels.to_card(),
                "bundle_pipeline": pipeline.to_dict(),
            },
            intended_use=intended_use
            or _metadata_text(metadata, "intended_use")
            or IMPORTED_INTENDED_USE,
            training_data=training_data if training_data is not None else data_source,
            metrics=metrics if metrics is not None else _metrics(metadata),
            source=source,
        )
    except ModelCardError as exc:
        raise BundleImportError(f"MONAI bundle {src.name}: {exc}") from exc
