"""Model cards: what a registered model is, where it came from and how to rebuild it.

A :class:`ModelCard` travels with the weights in every registry bundle
(``model_card.json``, see :mod:`models.registry`). Like the task specs, a card validates
everything in ``__post_init__``: once it exists it is valid, and its nested values
(architecture, pre-processing, metrics, source) are frozen copies, so nobody can change a
card after the registry has written it. Errors name the offending field.

JSON layout (``format_version`` 1)::

    {
      "format_version": 1,
      "name": "Liver CT DynUNet",
      "task": "liver_ct",
      "version": "1.2.0",
      "labels": [
        {"index": 1, "name": "Liver",
         "codes": {"category": ["SCT", "91723000", "Anatomical Structure"],
                   "type": ["SCT", "10200004", "Liver"]}},
        {"index": 2, "name": "Liver tumour",
         "codes": {"category": ["SCT", "49755003", "Morphologically Abnormal Structure"],
                   "type": ["SCT", "108369006", "Neoplasm"],
                   "anatomic_region": ["SCT", "10200004", "Liver"]}}
      ],
      "architecture": {"network": "DynUNet", "kwargs": {"spatial_dims": 3, ...}},
      "preprocessing": {"target_spacing_mm": [1.5, 1.5, 2.0], "patch_size": [96, 96, 64],
                        "intensity": {...},
                        "bundle": {"out_channels": 105, "activation": "softmax",
                                   "channel_labels": {"5": 1},
                                   "channel_def": {"0": "background", ...}}},
      "intended_use": "...", "training_data": "...",
      "metrics": {"dice_liver": 0.96},
      "federated_round": null, "parent_version": null,
      "created_at": "2025-01-01T12:00:00+00:00",
      "weights_sha256": "<64 lowercase hex>", "weights_file": "weights.pt",
      "source": {"kind": "monai_bundle", ...}
    }

Task names and versions name directories in the registry, so their rules live here,
next to the card that carries them: :func:`check_task_name`, :func:`check_version` and
the semver-like :class:`Version` ordering (``1.2.10 > 1.2.9``, ``1.0.0-rc.1 < 1.0.0``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .cascade_spec import CASCADE_NETWORK, REFINER_KEY, RefinerSettings, stage_architectures
from .channel_map import ChannelMap

if TYPE_CHECKING:
    from .bundle_pipeline import BundlePipeline
from .errors import ChannelMapError, ModelsError, NetworkConfigError, SpecError
from .tasks import Code, LabelSpec, TaskSpec

#: The card layout this code writes and reads.
CARD_FORMAT_VERSION = 1

#: What the shipped demo weights say about themselves.
DEMO_INTENDED_USE = "Demonstration only: trained on synthetic phantoms. Not for clinical use."

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_TASK_NAME = 64
_MAX_VERSION = 64
_MAX_FILE_NAME = 128
# MAJOR.MINOR.PATCH, no leading zeros, optional -prerelease of dot-separated identifiers
# (semver 2.0.0 without build metadata: "+" is not allowed in a directory name here).
_VERSION_RE = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
    r"(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*))?"
)
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 4096
_MAX_NAME = 64  # DICOM AlgorithmName / SoftwareVersions are LO (64)


class InvalidNameError(ModelsError, ValueError):
    """A task name, version or file name is not safe or not well formed."""


class ModelCardError(ModelsError, ValueError):
    """A model card (or its JSON) is invalid; the message names the field."""


# -- names and versions --------------------------------------------------------------------


def _check_simple_name(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidNameError(f"{what} must be a string, got {type(value).__name__}")
    if not 1 <= len(value) <= limit:
        raise InvalidNameError(f"{what} must be 1..{limit} characters long")
    if _NAME_RE.fullmatch(value) is None or ".." in value:
        raise InvalidNameError(
            f"{what} {value!r} may only contain A-Z a-z 0-9 . _ - , must start with a letter "
            "or digit and must not contain '..'"
        )
    return value


def check_task_name(value: object) -> str:
    """``value`` if it is a safe task name (it names a directory), else
    :class:`InvalidNameError`."""
    return _check_simple_name(value, "task name", _MAX_TASK_NAME)


def check_version(value: object) -> str:
    """``value`` if it is a valid version (``MAJOR.MINOR.PATCH[-prerelease]``), else
    :class:`InvalidNameError`. Versions name directories, so they are checked strictly."""
    text = _check_simple_name(value, "version", _MAX_VERSION)
    if _VERSION_RE.fullmatch(text) is None:
        raise InvalidNameError(
            f"version {text!r} must look like MAJOR.MINOR.PATCH or MAJOR.MINOR.PATCH-prerelease "
            "(e.g. 1.2.0, 1.3.0-rc.1, 2.0.0-fed.r12), without leading zeros"
        )
    return text


def check_file_name(value: object) -> str:
    """``value`` if it is a plain file name inside a bundle (no directories)."""
    return _check_simple_name(value, "file name", _MAX_FILE_NAME)


@dataclass(frozen=True, slots=True)
class Version:
    """A parsed version that orders like semver: numerically by MAJOR.MINOR.PATCH, a
    pre-release before its release, pre-release identifiers numeric < alphanumeric."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.fullmatch(check_version(text))
        assert match is not None  # check_version guarantees it
        pre: tuple[int | str, ...] = ()
        if match.group(4):
            pre = tuple(int(p) if p.isdigit() else p for p in match.group(4).split("."))
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre)

    def sort_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release (no pre-release) sorts after every pre-release of the same core.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: Version) -> bool:
        return self.sort_key() < other.sort_key()

    def __le__(self, other: Version) -> bool:
        return self.sort_key() <= other.sort_key()

    def __gt__(self, other: Version) -> bool:
        return self.sort_key() > other.sort_key()

    def __ge__(self, other: Version) -> bool:
        return self.sort_key() >= other.sort_key()

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{'.'.join(str(p) for p in self.prerelease)}" if self.prerelease else core


def version_key(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
    """Sort key for version strings: ``sorted(versions, key=version_key)``."""
    return Version.parse(text).sort_key()


# -- JSON-like values ----------------------------------------------------------------------


def _freeze(value: Any, where: str) -> Any:
    """A deep, immutable copy of a JSON-like value (dict -> MappingProxyType, list -> tuple)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelCardError(f"model card field {where!r}: numbers must be finite")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelCardError(f"model card field {where!r}: keys must be strings")
            out[key] = _freeze(item, f"{where}.{key}")
        return MappingProxyType(out)
    if isinstance(value, list | tuple):
        return tuple(_freeze(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise ModelCardError(f"model card field {where!r}: {type(value).__name__} is not a JSON value")


def thaw(value: Any) -> Any:
    """A plain, mutable copy of a frozen JSON-like value (MappingProxyType -> dict, tuple ->
    list), e.g. to pass ``card.architecture["kwargs"]`` to a constructor."""
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(item) for item in value]
    return value


def _text(value: object, where: str, *, limit: int = _MAX_TEXT, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ModelCardError(f"model card field {where!r} must be a string")
    if not empty and value.strip() == "":
        raise ModelCardError(f"model card field {where!r} must not be empty")
    if len(value) > limit:
        raise ModelCardError(f"model card field {where!r} is longer than {limit} characters")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelCardError(f"model card field {where!r} must be a JSON object")
    frozen = _freeze(value, where)
    assert isinstance(frozen, Mapping)
    return frozen


# -- labels --------------------------------------------------------------------------------


def _code(value: object, where: str) -> Code:
    if isinstance(value, Code):
        return value
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, str) for v in value)
    ):
        raise ModelCardError(
            f"model card field {where!r} must be [scheme, value, meaning] (three strings)"
        )
    try:
        return Code(value[0], value[1], value[2])
    except SpecError as exc:
        raise ModelCardError(f"model card field {where!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CardLabel:
    """One output class of the model: label-map index, name and coded concepts.

    ``category`` and ``property_type`` are the DICOM SEG segmented property category and
    type; ``anatomic_region`` optionally locates a lesion (e.g. neoplasm *of the liver*).
    Codes accept :class:`models.tasks.Code` or ``[scheme, value, meaning]``.
    """

    index: int
    name: str
    category: Code
    property_type: Code
    anatomic_region: Code | None = None

    def __post_init__(self) -> None:
        where = f"labels[{self.name!r}]" if isinstance(self.name, str) else "labels"
        if not _is_int(self.index) or not 1 <= self.index <= 255:
            raise ModelCardError(f"model card field '{where}.index' must be an integer in 1..255")
        _text(self.name, f"{where}.name", limit=_MAX_NAME)
        object.__setattr__(self, "category", _code(self.category, f"{where}.codes.category"))
        object.__setattr__(self, "property_type", _code(self.property_type, f"{where}.codes.type"))
        if self.anatomic_region is not None:
            object.__setattr__(
                self,
                "anatomic_region",
                _code(self.anatomic_region, f"{where}.codes.anatomic_region"),
            )

    @classmethod
    def from_label_spec(cls, spec: LabelSpec) -> CardLabel:
        return cls(spec.index, spec.name, spec.category, spec.property_type, spec.anatomic_region)

    def to_dict(self) -> dict[str, Any]:
        codes: dict[str, list[str]] = {
            "category": _code_list(self.category),
            "type": _code_list(self.property_type),
        }
        if self.anatomic_region is not None:
            codes["anatomic_region"] = _code_list(self.anatomic_region)
        return {"index": self.index, "name": self.name, "codes": codes}

    @classmethod
    def from_dict(cls, data: object, where: str = "labels[]") -> CardLabel:
        if not isinstance(data, Mapping):
            raise ModelCardError(f"model card field {where!r} must be a JSON object")
        unknown = set(data) - {"index", "name", "codes"}
        if unknown:
            raise ModelCardError(f"model card field {where!r} has unknown keys {sorted(unknown)}")
        for key in ("index", "name", "codes"):
            if key not in data:
                raise ModelCardError(f"model card field '{where}.{key}' is missing")
        codes = data["codes"]
        if not isinstance(codes, Mapping):
            raise ModelCardError(f"model card field '{where}.codes' must be a JSON object")
        unknown = set(codes) - {"category", "type", "anatomic_region"}
        if unknown:
            raise ModelCardError(
                f"model card field '{where}.codes' has unknown keys {sorted(unknown)}"
            )
        for key in ("category", "type"):
            if key not in codes:
                raise ModelCardError(f"model card field '{where}.codes.{key}' is missing")
        region = codes.get("anatomic_region")
        return cls(
            index=data["index"],
            name=data["name"],
            category=_code(codes["category"], f"{where}.codes.category"),
            property_type=_code(codes["type"], f"{where}.codes.type"),
            anatomic_region=None
            if region is None
            else _code(region, f"{where}.codes.anatomic_region"),
        )


def _code_list(code: Code) -> list[str]:
    return [code.scheme, code.value, code.meaning]


def labels_for_task(spec: TaskSpec) -> tuple[CardLabel, ...]:
    """The card labels of a shipped task spec (same indices, names and codes)."""
    return tuple(CardLabel.from_label_spec(label) for label in spec.labels)


def preprocessing_for_task(spec: TaskSpec) -> dict[str, Any]:
    """The card's ``preprocessing`` entry for a task spec: spacing, patch, intensity,
    channels; for a sigmoid task also the output activation and its regions."""
    intensity: dict[str, Any] = {"kind": type(spec.intensity).__name__}
    for name in spec.intensity.__slots__:
        intensity[name] = getattr(spec.intensity, name)
    out: dict[str, Any] = {
        "target_spacing_mm": list(spec.target_spacing_mm),
        "patch_size": list(spec.patch_size),
        "intensity": intensity,
        "channels": [c.name for c in spec.channels],
    }
    if spec.is_sigmoid:  # softmax cards stay as they were
        out["output_activation"] = str(spec.activation)
        out["tissue_classes"] = list(spec.tissue_classes)
        out["regions"] = [list(region) for region in spec.regions]
    return out


# -- the card ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelProvenance:
    """What every output object records about the model that made it."""

    name: str
    task: str
    version: str
    weights_sha256: str
    federated_round: int | None


@dataclass(frozen=True)
class ModelCard:
    """Everything known about one registered model version (see the module docstring).

    ``architecture`` must hold ``"network"`` (a MONAI network class name) and
    ``"kwargs"`` (its constructor arguments), enough to rebuild it with
    :func:`models.registry.build_network`. ``source`` is free-form provenance (e.g. the
    MONAI bundle a model was imported from). Nested values are frozen on construction;
    use :func:`thaw` to get plain dicts back.
    """

    name: str
    task: str
    version: str
    labels: tuple[CardLabel, ...]
    architecture: Mapping[str, Any]
    preprocessing: Mapping[str, Any]
    intended_use: str
    training_data: str
    weights_sha256: str
    weights_file: str
    created_at: str
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    federated_round: int | None = None
    parent_version: str | None = None
    source: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "name", _text(self.name, "name", limit=_MAX_NAME))
        try:
            check_task_name(self.task)
        except InvalidNameError as exc:
            raise ModelCardError(f"model card field 'task': {exc}") from exc
        try:
            check_version(self.version)
        except InvalidNameError as exc:
            raise ModelCardError(f"model card field 'version': {exc}") from exc

        labels = self.labels
        if isinstance(labels, str | bytes) or not isinstance(labels, Iterable):
            raise ModelCardError("model card field 'labels' must be a list of labels")
        labels = tuple(labels)
        if not labels:
            raise ModelCardError("model card field 'labels' must name at least one label")
        if not all(isinstance(label, CardLabel) for label in labels):
            raise ModelCardError("model card field 'labels' must hold CardLabel values")
        indices = [label.index for label in labels]
        if indices != sorted(set(indices)):
            raise ModelCardError(
                f"model card field 'labels': indices must be unique and ascending, got {indices}"
            )
        names = [label.name for label in labels]
        if len(set(names)) != len(names):
            raise ModelCardError("model card field 'labels': names must be unique")
        set_(self, "labels", labels)

        architecture = _mapping(self.architecture, "architecture")
        network = architecture.get("network")
        if not isinstance(network, str) or not network.isidentifier():
            raise ModelCardError(
                "model card field 'architecture.network' must be a network class name"
            )
        if not isinstance(architecture.get("kwargs"), Mapping):
            raise ModelCardError("model card field 'architecture.kwargs' must be a JSON object")
        cascade = network == CASCADE_NETWORK
        if cascade:
            try:
                stage_architectures(architecture)
            except NetworkConfigError as exc:
                raise ModelCardError(f"model card field 'architecture': {exc}") from exc
        set_(self, "architecture", architecture)

        preprocessing = _mapping(self.preprocessing, "preprocessing")
        for key in ("target_spacing_mm", "patch_size"):
            if key in preprocessing:
                value = preprocessing[key]
                ok = isinstance(value, tuple) and len(value) == 3
                ok = ok and all(
                    (_is_int(v) if key == "patch_size" else _is_number(v)) and v > 0 for v in value
                )
                if not ok:
                    raise ModelCardError(
                        f"model card field 'preprocessing.{key}' must be three positive "
                        + ("integers" if key == "patch_size" else "numbers")
                    )
        if cascade != (REFINER_KEY in preprocessing):
            raise ModelCardError(
                f"a {CASCADE_NETWORK} card needs 'preprocessing.{REFINER_KEY}' (stage 2's grid), "
                "and only a cascade card may have it"
            )
        if cascade:
            if "bundle" in preprocessing or preprocessing.get("output_activation") == "sigmoid":
                raise ModelCardError(
                    f"a {CASCADE_NETWORK} card runs the task's own softmax pipeline; "
                    "'preprocessing.bundle' and sigmoid outputs are not allowed with it"
                )
            try:
                RefinerSettings.from_dict(thaw(preprocessing[REFINER_KEY]))
            except SpecError as exc:
                raise ModelCardError(f"model card field 'preprocessing': {exc}") from exc
        if "bundle" in preprocessing:
            try:
                channels = ChannelMap.from_card(preprocessing["bundle"])
            except ChannelMapError as exc:
                raise ModelCardError(f"model card field 'preprocessing.bundle': {exc}") from exc
            unknown = set(channels.channel_labels.values()) - set(indices)
            if unknown:
                raise ModelCardError(
                    "model card field 'preprocessing.bundle.channel_labels' maps to labels "
                    f"{sorted(unknown)} that the card does not have"
                )
        if "bundle_pipeline" in preprocessing:
            if "bundle" not in preprocessing:
                raise ModelCardError(
                    "model card field 'preprocessing.bundle_pipeline' needs "
                    "'preprocessing.bundle' (how its output channels map to the labels)"
                )
            from .bundle_pipeline import BundlePipeline  # torch/MONAI: only when needed

            try:
                BundlePipeline.from_dict(thaw(preprocessing["bundle_pipeline"]))
            except (ModelsError, ValueError, TypeError) as exc:
                raise ModelCardError(
                    f"model card field 'preprocessing.bundle_pipeline': {exc}"
                ) from exc
        set_(self, "preprocessing", preprocessing)

        set_(self, "intended_use", _text(self.intended_use, "intended_use"))
        set_(self, "training_data", _text(self.training_data, "training_data", empty=True))

        if not isinstance(self.weights_sha256, str) or not _SHA256_RE.fullmatch(
            self.weights_sha256
        ):
            raise ModelCardError(
                "model card field 'weights_sha256' must be 64 lowercase hexadecimal digits"
            )
        try:
            check_file_name(self.weights_file)
        except InvalidNameError as exc:
            raise ModelCardError(f"model card field 'weights_file': {exc}") from exc

        if not isinstance(self.created_at, str):
            raise ModelCardError("model card field 'created_at' must be an ISO 8601 string")
        try:
            created = datetime.fromisoformat(self.created_at)
        except ValueError as exc:
            raise ModelCardError(
                f"model card field 'created_at' is not an ISO 8601 time: {self.created_at!r}"
            ) from exc
        if created.tzinfo is None:
            raise ModelCardError("model card field 'created_at' must include a UTC offset")

        metrics = _mapping(self.metrics, "metrics")
        for key, value in metrics.items():
            if not _is_number(value):
                raise ModelCardError(f"model card field 'metrics.{key}' must be a finite number")
        set_(self, "metrics", MappingProxyType({k: float(v) for k, v in metrics.items()}))

        if self.federated_round is not None and (
            not _is_int(self.federated_round) or self.federated_round < 0
        ):
            raise ModelCardError(
                "model card field 'federated_round' must be an integer >= 0 or null"
            )
        if self.parent_version is not None:
            try:
                check_version(self.parent_version)
            except InvalidNameError as exc:
                raise ModelCardError(f"model card field 'parent_version': {exc}") from exc
        set_(self, "source", _mapping(self.source, "source"))
        if self.format_version != CARD_FORMAT_VERSION or not _is_int(self.format_version):
            raise ModelCardError(
                f"model card field 'format_version' is {self.format_version!r}; this software "
                f"reads format {CARD_FORMAT_VERSION}"
            )

    # -- convenience ---------------------------------------------------------------------

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)

    @property
    def num_classes(self) -> int:
        """Network output channels for a softmax model: background plus one per label
        (a sigmoid task's spec says otherwise: :attr:`models.tasks.TaskSpec.num_classes`,
        and so does a card that records ``output_activation = "sigmoid"``: one per label)."""
        if self.preprocessing.get("output_activation") == "sigmoid":
            return len(self.labels)
        return len(self.labels) + 1

    @property
    def channel_map(self) -> ChannelMap | None:
        """How an imported bundle's output channels map to the labels (None: the network's
        outputs are laid out like the task, background + one per label, softmax)."""
        entry = self.preprocessing.get("bundle")
        return None if entry is None else ChannelMap.from_card(entry)

    @property
    def bundle_pipeline(self) -> BundlePipeline | None:
        """The imported bundle's own pipeline, which its jobs run (None: the task's)."""
        entry = self.preprocessing.get("bundle_pipeline")
        if entry is None:
            return None
        from .bundle_pipeline import BundlePipeline

        return BundlePipeline.from_dict(thaw(entry))

    @property
    def refiner(self) -> RefinerSettings | None:
        """Stage 2's grid of a two-stage card (:mod:`models.cascade`); None otherwise."""
        entry = self.preprocessing.get(REFINER_KEY)
        return None if entry is None else RefinerSettings.from_dict(thaw(entry))

    @property
    def out_channels(self) -> int:
        """The network's output channels: the imported bundle's, else :attr:`num_classes`."""
        channels = self.channel_map
        return self.num_classes if channels is None else channels.out_channels

    @property
    def provenance(self) -> ModelProvenance:
        return ModelProvenance(
            self.name, self.task, self.version, self.weights_sha256, self.federated_round
        )

    @staticmethod
    def now() -> str:
        """The current UTC time in the card's ``created_at`` format."""
        return datetime.now(UTC).isoformat(timespec="seconds")

    # -- JSON ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "task": self.task,
            "version": self.version,
            "labels": [label.to_dict() for label in self.labels],
            "architecture": thaw(self.architecture),
            "preprocessing": thaw(self.preprocessing),
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "metrics": dict(self.metrics),
            "federated_round": self.federated_round,
            "parent_version": self.parent_version,
            "created_at": self.created_at,
            "weights_sha256": self.weights_sha256,
            "weights_file": self.weights_file,
            "source": thaw(self.source),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> ModelCard:
        if not isinstance(data, Mapping):
            raise ModelCardError("a model card must be a JSON object")
        fmt = data.get("format_version")
        if fmt != CARD_FORMAT_VERSION:
            raise ModelCardError(
                f"model card field 'format_version' is {fmt!r}; this software reads format "
                f"{CARD_FORMAT_VERSION}"
            )
        required = (
            "name",
            "task",
            "version",
            "labels",
            "architecture",
            "preprocessing",
            "intended_use",
            "training_data",
            "weights_sha256",
            "weights_file",
            "created_at",
        )
        optional = ("metrics", "federated_round", "parent_version", "source", "format_version")
        missing = [key for key in required if key not in data]
        if missing:
            raise ModelCardError(f"model card field {missing[0]!r} is missing")
        unknown = set(data) - set(required) - set(optional)
        if unknown:
            raise ModelCardError(f"model card has unknown fields {sorted(unknown)}")
        labels = data["labels"]
        if not isinstance(labels, list):
            raise ModelCardError("model card field 'labels' must be a list")
        return cls(
            name=data["name"],
            task=data["task"],
            version=data["version"],
            labels=tuple(
                CardLabel.from_dict(item, f"labels[{i}]") for i, item in enumerate(labels)
            ),
            architecture=data["architecture"],
            preprocessing=data["preprocessing"],
            intended_use=data["intended_use"],
            training_data=data["training_data"],
            weights_sha256=data["weights_sha256"],
            weights_file=data["weights_file"],
            created_at=data["created_at"],
            metrics=data.get("metrics", {}),
            federated_round=data.get("federated_round"),
            parent_version=data.get("parent_version"),
            source=data.get("source", {}),
            format_version=fmt,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelCardError(f"model card is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a model card")
