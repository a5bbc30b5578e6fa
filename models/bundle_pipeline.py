"""A MONAI bundle's own pre-processing, inferer and post-processing, read as data and run
faithfully.

:func:`parse_pipeline` reads ``preprocessing``, ``inferer`` and ``postprocessing`` of a
bundle's inference config (already read by :func:`models.bundle_config.read_config`)
into a frozen :class:`BundlePipeline`: every transform becomes a :class:`Step` holding its
resolved parameters and what the appliance does with it (:class:`Action`: run it, a
no-op because the appliance already did it, or ignored with the reason). A transform the
appliance cannot run faithfully (an unknown transform, code such as a ``"$lambda"``, an
argument that would change the result and is not supported) is refused with a
:class:`~models.errors.BundleImportError` naming the file, the position and the
transform. The config is never given to MONAI's ``ConfigParser``.

Decisions:

- ``inferer`` must be present (``SlidingWindowInferer`` or ``SimpleInferer``): the
  appliance does not guess how a network is meant to be applied to a whole volume.
- ``postprocessing`` must contain exactly one ``AsDiscrete(d)`` (``argmax=True`` or a
  ``threshold``): without it the bundle produces no segmentation.
- ``LoadImage(d)``: the appliance supplies the loaded image as MONAI's ``LoadImage``
  reads a DICOM series: channel-first, spatial axes ``(column, row, slice)``, RAS
  affine. Only matters for a bundle without ``Orientation(d)`` (e.g. BraTS), whose
  network sees the array in the loader's axis order.
- ``Invert(d)`` runs where it stands in the chain (on probabilities with
  ``nearest_interp=False``, or on the label map after ``AsDiscrete``); without one the
  appliance inverts at the end with nearest neighbour: the result is always on the
  input grid.
- ``Lambda(d)`` is accepted only after ``AsDiscrete`` and followed by nothing but
  ``SaveImage(d)``: there it re-encodes labels for the file written, which the appliance
  does through its own channel -> label mapping. Anywhere else it is refused.
- ``KeepLargestConnectedComponent(d)`` is refused: MONAI runs it with scikit-image (or
  cuCIM), which the appliance does not ship.
- ``Orientation(d)`` is MONAI's own ``Orientationd`` (it needs nibabel, which is a
  dependency of the appliance); resampling is computed in float32 (a bundle's ``dtype``
  is ignored).

Execution is :mod:`models.bundle_run`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from .bundle_config import lookup, resolve
from .errors import (
    BundleImportError,
    ModelsError,
    SpecError,
)
from .transforms import IMAGE_KEY

#: ``to_dict()["format"]``.
PIPELINE_FORMAT: Final = "bundle-pipeline/1"
#: The key MONAI's evaluators use for the network output.
PRED_KEY: Final = "pred"
_MAX_TEXT: Final = 500


class Stage(StrEnum):
    """The part of the inference config a step comes from."""

    PREPROCESSING = "preprocessing"
    INFERER = "inferer"
    POSTPROCESSING = "postprocessing"


class Action(StrEnum):
    """What the appliance does with a step."""

    RUN = "run"  #: run with the recorded parameters
    NO_OP = "no-op"  #: already done by the appliance (loading, channel-first, types)
    IGNORED = "ignored"  #: does not change the segmentation; ``note`` says why


class Op(StrEnum):
    """The MONAI transform (array-form name) or inferer a step is."""

    LOAD_IMAGE = "LoadImage"
    ENSURE_CHANNEL_FIRST = "EnsureChannelFirst"
    ENSURE_TYPE = "EnsureType"
    ORIENTATION = "Orientation"
    SPACING = "Spacing"
    SCALE_INTENSITY_RANGE = "ScaleIntensityRange"
    NORMALIZE_INTENSITY = "NormalizeIntensity"
    SCALE_INTENSITY = "ScaleIntensity"
    CROP_FOREGROUND = "CropForeground"
    SLIDING_WINDOW = "SlidingWindowInferer"
    SIMPLE = "SimpleInferer"
    ACTIVATIONS = "Activations"
    AS_DISCRETE = "AsDiscrete"
    INVERT = "Invert"
    LABEL_ENCODING = "Lambda"
    SAVE_IMAGE = "SaveImage"


# -- argument checks (each normalises, and is idempotent on its own output) ---------------


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false, not {value!r}")


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, not {value!r}")
    return float(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else _number(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer, not {value!r}")
    return value


def _fraction(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"must be in [0, 1), not {value!r}")
    return number


def _triple(check: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def checked(value: Any) -> tuple[Any, ...]:
        items = list(value) if isinstance(value, list | tuple) else [value] * 3
        if len(items) != 3:
            raise ValueError(f"needs 3 values (one per spatial axis), not {value!r}")
        return tuple(check(item) for item in items)

    return checked


def _positive_number(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError(f"must be positive, not {value!r}")
    return number


def _non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a non-negative integer, not {value!r}")
    return value


def _choice(*options: str | int) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            raise ValueError(f"must be one of {', '.join(map(str, options))}, not {value!r}")
        return value

    return checked


def _axcodes(value: Any) -> str:
    codes = value.upper() if isinstance(value, str) else ""
    pairs = ("LR", "AP", "IS")
    if len(codes) != 3 or sorted(p for c in codes for p in pairs if c in p) != sorted(pairs):
        raise ValueError(f"must name each of L/R, A/P, I/S once (e.g. 'RAS'), not {value!r}")
    return codes


def _optional_ints(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, list | tuple) else [value]
    return tuple(_non_negative_int(item) for item in items)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {value!r}")
    return value[:_MAX_TEXT]


def _optional_int(value: Any) -> int | None:
    return None if value is None else _positive_int(value)


def _optional_threshold(value: Any) -> float | None:
    return _optional_number(value)


#: ``_Arg.default`` of an argument the config must give.
_REQUIRED: Final = "<required>"


@dataclass(frozen=True, slots=True)
class _Arg:
    default: Any
    check: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _OpSpec:
    stage: Stage
    action: Action
    note: str
    #: recorded (and used) arguments with MONAI's default
    params: Mapping[str, _Arg] = field(default_factory=dict)
    #: arguments accepted only at this value (the appliance runs MONAI's default)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    #: arguments that do not change the segmentation; not resolved, listed as ignored
    ignored: frozenset[str] = frozenset()
    #: every argument is ignored (the step itself is a no-op / ignored)
    ignore_all: bool = False
    #: a check across arguments: the reason they cannot be run, or None
    validate: Callable[[Mapping[str, Any]], str | None] | None = None


_KEYS: Final = frozenset({"keys", "allow_missing_keys", "meta_keys", "meta_key_postfix"})
_DTYPE: Final = frozenset({"dtype"})


def _check_scale_range(p: Mapping[str, Any]) -> str | None:
    if p["a_min"] == p["a_max"]:
        return "a_min equals a_max"
    if (p["b_min"] is None) != (p["b_max"] is None):
        return "b_min and b_max must both be given or both be None"
    return None


def _check_activations(p: Mapping[str, Any]) -> str | None:
    return "softmax and sigmoid are both set" if p["softmax"] and p["sigmoid"] else None


def _check_discrete(p: Mapping[str, Any]) -> str | None:
    if p["argmax"] == (p["threshold"] is not None):
        return "exactly one of argmax=True or a threshold is needed to make a segmentation"
    return None


_SPECS: Final[Mapping[Op, _OpSpec]] = MappingProxyType(
    {
        Op.LOAD_IMAGE: _OpSpec(
            Stage.PREPROCESSING,
            Action.NO_OP,
            "the appliance supplies the loaded image (channel-first, axes column, row, "
            "slice, RAS affine), as MONAI's LoadImage reads a DICOM series",
            ignore_all=True,
        ),
        Op.ENSURE_CHANNEL_FIRST: _OpSpec(
            Stage.PREPROCESSING,
            Action.NO_OP,
            "the appliance supplies a channel-first image",
            ignore_all=True,
        ),
        Op.ENSURE_TYPE: _OpSpec(
            Stage.PREPROCESSING,
            Action.NO_OP,
            "the appliance supplies a float32 MetaTensor",
            ignore_all=True,
        ),
        Op.ORIENTATION: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI Orientationd",
            params={"axcodes": _Arg(_REQUIRED, _axcodes)},
            fixed={"as_closest_canonical": False, "labels": None, "lazy": False},
            ignored=_KEYS,
        ),
        Op.SPACING: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI Spacingd, computed in float32",
            params={
                "pixdim": _Arg(_REQUIRED, _triple(_positive_number)),
                "mode": _Arg("bilinear", _choice("bilinear", "nearest", "bicubic", 0, 1, 2, 3)),
                "padding_mode": _Arg("border", _choice("border", "zeros", "reflection")),
                "align_corners": _Arg(False, _bool),
            },
            fixed={
                "diagonal": False,
                "scale_extent": False,
                "recompute_affine": False,
                "min_pixdim": None,
                "max_pixdim": None,
                "ensure_same_shape": True,
                "lazy": False,
            },
            ignored=_KEYS | _DTYPE,
        ),
        Op.SCALE_INTENSITY_RANGE: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI ScaleIntensityRanged",
            params={
                "a_min": _Arg(_REQUIRED, _number),
                "a_max": _Arg(_REQUIRED, _number),
                "b_min": _Arg(None, _optional_number),
                "b_max": _Arg(None, _optional_number),
                "clip": _Arg(False, _bool),
            },
            ignored=_KEYS | _DTYPE,
            validate=_check_scale_range,
        ),
        Op.NORMALIZE_INTENSITY: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI NormalizeIntensityd (mean and standard deviation of the image)",
            params={"nonzero": _Arg(False, _bool), "channel_wise": _Arg(False, _bool)},
            fixed={"subtrahend": None, "divisor": None},
            ignored=_KEYS | _DTYPE,
        ),
        Op.SCALE_INTENSITY: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI ScaleIntensityd (min-max to [minv, maxv])",
            params={
                "minv": _Arg(0.0, _number),
                "maxv": _Arg(1.0, _number),
                "channel_wise": _Arg(False, _bool),
            },
            fixed={"factor": None},
            ignored=_KEYS | _DTYPE,
        ),
        Op.CROP_FOREGROUND: _OpSpec(
            Stage.PREPROCESSING,
            Action.RUN,
            "MONAI CropForegroundd with the default select_fn (image > 0)",
            params={
                "margin": _Arg(0, _triple(_non_negative_int)),
                "allow_smaller": _Arg(False, _bool),
                "k_divisible": _Arg(1, _triple(_positive_int)),
                "channel_indices": _Arg(None, _optional_ints),
                "mode": _Arg("constant", _choice("constant", "edge", "reflect", "replicate")),
            },
            fixed={"lazy": False},
            ignored=_KEYS | frozenset({"source_key", "start_coord_key", "end_coord_key"}),
        ),
        Op.SLIDING_WINDOW: _OpSpec(
            Stage.INFERER,
            Action.RUN,
            "MONAI SlidingWindowInferer",
            params={
                "roi_size": _Arg(_REQUIRED, _triple(_positive_int)),
                "sw_batch_size": _Arg(1, _positive_int),
                "overlap": _Arg(0.25, _fraction),
                "mode": _Arg("constant", _choice("constant", "gaussian")),
                "sigma_scale": _Arg(0.125, _triple(_positive_number)),
                "padding_mode": _Arg(
                    "constant", _choice("constant", "reflect", "replicate", "circular")
                ),
                "cval": _Arg(0.0, _number),
            },
            fixed={"with_coord": False},
            ignored=frozenset(
                {
                    "sw_device",
                    "device",
                    "progress",
                    "cache_roi_weight_map",
                    "cpu_thresh",
                    "buffer_steps",
                    "buffer_dim",
                }
            ),
        ),
        Op.SIMPLE: _OpSpec(Stage.INFERER, Action.RUN, "the network on the whole image"),
        Op.ACTIVATIONS: _OpSpec(
            Stage.POSTPROCESSING,
            Action.RUN,
            "MONAI Activations over the channels",
            params={"softmax": _Arg(False, _bool), "sigmoid": _Arg(False, _bool)},
            fixed={"other": None, "dim": 0},
            ignored=_KEYS,
            validate=_check_activations,
        ),
        Op.AS_DISCRETE: _OpSpec(
            Stage.POSTPROCESSING,
            Action.RUN,
            "MONAI AsDiscrete (a one-hot output is returned as the label map it encodes)",
            params={
                "argmax": _Arg(False, _bool),
                "threshold": _Arg(None, _optional_threshold),
            },
            fixed={"rounding": None, "dim": 0, "keepdim": True},
            ignored=_KEYS | frozenset({"to_onehot"}),
            validate=_check_discrete,
        ),
        Op.INVERT: _OpSpec(
            Stage.POSTPROCESSING,
            Action.RUN,
            "the appliance inverts the pre-processing here, onto the input grid",
            params={"nearest_interp": _Arg(True, _bool)},
            fixed={"post_func": None},
            ignored=_KEYS
            | frozenset({"transform", "orig_keys", "orig_meta_keys", "to_tensor", "device"}),
        ),
        Op.LABEL_ENCODING: _OpSpec(
            Stage.POSTPROCESSING,
            Action.IGNORED,
            "output label encoding for the file written: the appliance maps channels to "
            "task labels itself",
            params={"func": _Arg(_REQUIRED, _text)},
            ignored=_KEYS | frozenset({"inv_func", "track_meta", "overwrite"}),
        ),
        Op.SAVE_IMAGE: _OpSpec(
            Stage.POSTPROCESSING,
            Action.IGNORED,
            "output writing is done by the appliance",
            ignore_all=True,
        ),
    }
)

_TARGET_NAMES: Final[Mapping[str, Op]] = MappingProxyType(
    {
        **{op.value: op for op in Op},
        **{f"{op.value}{suffix}": op for op in Op for suffix in ("d", "D", "Dict")},
    }
)
#: Transforms refused with a specific reason (array-form names).
_REFUSED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "KeepLargestConnectedComponent": "MONAI runs it with scikit-image (or cuCIM), which "
        "the appliance does not ship; use the task's own post-processing",
    }
)
_LOADER_KEYS: Final = frozenset({"_target_", "_requires_", "_desc_", "_disabled_", "_mode_"})


# -- the description -----------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Step:
    """One transform (or the inferer) of a bundle's pipeline.

    ``index``: position in the stage's ``transforms`` list (None for the inferer).
    ``transform``: the ``_target_`` as written. ``params``: the resolved parameters the
    appliance uses (MONAI's defaults filled in), for steps with ``action`` RUN (and the
    label-encoding text of an ignored ``Lambdad``). ``ignored_args``: arguments present in
    the config that do not change the segmentation. ``note``: what the appliance does.
    """

    stage: Stage
    index: int | None
    transform: str
    op: Op
    action: Action
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    ignored_args: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        try:
            stage, op, action = Stage(self.stage), Op(self.op), Action(self.action)
        except ValueError as exc:
            raise BundleImportError(f"invalid pipeline step: {exc}") from None
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "action", action)
        where = _where(stage, self.index)
        if self.index is not None and (
            isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0
        ):
            raise BundleImportError(f"{where}: invalid index {self.index!r}")
        if (stage is Stage.INFERER) != (self.index is None):
            raise BundleImportError(f"{where}: only the inferer has no index")
        if not isinstance(self.transform, str) or not self.transform:
            raise BundleImportError(f"{where}: the transform name is missing")
        if not isinstance(self.note, str):
            raise BundleImportError(f"{where}: the note must be text")
        spec = _SPECS[op]
        if spec.stage is not stage:
            raise BundleImportError(f"{where}: {op} does not belong in the {stage}")
        params = dict(self.params)
        if action is spec.action:
            if set(params) != set(spec.params):
                raise BundleImportError(
                    f"{where}: {op} needs the parameters {sorted(spec.params)}, "
                    f"not {sorted(params)}"
                )
            try:
                params = {name: spec.params[name].check(params[name]) for name in spec.params}
            except ValueError as exc:
                raise BundleImportError(f"{where}: {op}: {exc}") from None
            reason = spec.validate(params) if spec.validate else None
            if reason:
                raise BundleImportError(f"{where}: {op} cannot be run: {reason}")
        elif action is not Action.IGNORED or params or stage is Stage.INFERER:
            raise BundleImportError(f"{where}: {op} cannot be recorded as {action}")
        object.__setattr__(self, "params", MappingProxyType(params))
        ignored = tuple(self.ignored_args)
        if not all(isinstance(a, str) for a in ignored):
            raise BundleImportError(f"{where}: ignored_args must be names")
        object.__setattr__(self, "ignored_args", ignored)

    @property
    def where(self) -> str:
        """``preprocessing.transforms[3]`` or ``inferer``."""
        return _where(self.stage, self.index)

    @property
    def runs(self) -> bool:
        return self.action is Action.RUN

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": str(self.stage),
            "index": self.index,
            "transform": self.transform,
            "op": str(self.op),
            "action": str(self.action),
            "params": {k: _thaw(v) for k, v in self.params.items()},
            "ignored_args": list(self.ignored_args),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        expected = {"stage", "index", "transform", "op", "action", "params", "ignored_args", "note"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise BundleImportError(f"a pipeline step needs exactly the keys {sorted(expected)}")
        params = data["params"]
        if not isinstance(params, Mapping) or not isinstance(data["ignored_args"], list):
            raise BundleImportError("a pipeline step's params/ignored_args are malformed")
        return cls(
            stage=data["stage"],
            index=data["index"],
            transform=data["transform"],
            op=data["op"],
            action=data["action"],
            params={str(k): _freeze(v) for k, v in params.items()},
            ignored_args=tuple(data["ignored_args"]),
            note=data["note"],
        )


def _where(stage: Stage | str, index: int | None) -> str:
    return str(stage) if index is None else f"{stage}.transforms[{index}]"


@dataclass(frozen=True, slots=True)
class BundlePipeline:
    """What a bundle's inference config says to run, as the appliance runs it.

    Valid once it exists: the inferer is one the appliance runs, the post-processing
    has exactly one discretisation, at most one activation (before it) and one inversion,
    and an ignored label encoding only where it feeds the file output.
    """

    file: str
    preprocessing: tuple[Step, ...]
    inferer: Step
    postprocessing: tuple[Step, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "preprocessing", tuple(self.preprocessing))
        object.__setattr__(self, "postprocessing", tuple(self.postprocessing))
        file = self.file
        if not isinstance(file, str) or not file:
            raise BundleImportError("a pipeline needs the name of its config file")
        for stage, steps in (
            (Stage.PREPROCESSING, self.preprocessing),
            (Stage.POSTPROCESSING, self.postprocessing),
        ):
            for position, step in enumerate(steps):
                if not isinstance(step, Step) or step.stage is not stage:
                    raise BundleImportError(f"{file}: {stage} step {position} is misplaced")
            indices = [s.index for s in steps]
            if indices != sorted(set(indices)):  # type: ignore[type-var]
                raise BundleImportError(f"{file}: {stage} steps are out of order")
        if not isinstance(self.inferer, Step) or self.inferer.stage is not Stage.INFERER:
            raise BundleImportError(f"{file}: the inferer is missing")
        _check_postprocessing(self.postprocessing, file)

    # -- what it does

    def running(self, op: Op) -> tuple[Step, ...]:
        """The steps of ``op`` that run."""
        return tuple(s for s in self.steps if s.op is op and s.runs)

    @property
    def steps(self) -> tuple[Step, ...]:
        return (*self.preprocessing, self.inferer, *self.postprocessing)

    @property
    def discretisation(self) -> Step:
        return self.running(Op.AS_DISCRETE)[0]

    @property
    def multi_label(self) -> bool:
        """True when the output is thresholded channels (one mask per label)."""
        return self.discretisation.params["threshold"] is not None

    @property
    def activation(self) -> str | None:
        """``"softmax"``, ``"sigmoid"`` or None."""
        for step in self.running(Op.ACTIVATIONS):
            for name in ("softmax", "sigmoid"):
                if step.params[name]:
                    return name
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"format", "file", "preprocessing": [step], "inferer": step,
        "postprocessing": [step]}`` with each step as :meth:`Step.to_dict`."""
        return {
            "format": PIPELINE_FORMAT,
            "file": self.file,
            "preprocessing": [s.to_dict() for s in self.preprocessing],
            "inferer": self.inferer.to_dict(),
            "postprocessing": [s.to_dict() for s in self.postprocessing],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundlePipeline:
        expected = {"format", "file", "preprocessing", "inferer", "postprocessing"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise BundleImportError(f"a bundle pipeline needs exactly the keys {sorted(expected)}")
        if data["format"] != PIPELINE_FORMAT:
            raise BundleImportError(f"unknown bundle pipeline format {data['format']!r}")
        if not isinstance(data["preprocessing"], list) or not isinstance(
            data["postprocessing"], list
        ):
            raise BundleImportError("a bundle pipeline's stages must be lists")
        return cls(
            file=data["file"],
            preprocessing=tuple(Step.from_dict(s) for s in data["preprocessing"]),
            inferer=Step.from_dict(data["inferer"]),
            postprocessing=tuple(Step.from_dict(s) for s in data["postprocessing"]),
        )


def _check_postprocessing(steps: Sequence[Step], file: str) -> None:
    def refuse(step: Step, reason: str) -> BundleImportError:
        return BundleImportError(
            f"{file}: transform {step.transform} at {step.where} cannot be run faithfully "
            f"by the appliance: {reason}"
        )

    discrete_at: int | None = None
    seen: set[Op] = set()
    for position, step in enumerate(steps):
        if step.op is Op.LABEL_ENCODING:
            rest = steps[position + 1 :]
            if discrete_at is None or not rest or any(s.op is not Op.SAVE_IMAGE for s in rest):
                raise refuse(
                    step,
                    "a Lambda is only accepted after AsDiscrete, feeding SaveImage "
                    "(an output label encoding); anywhere else it is code the appliance "
                    "does not run",
                )
            continue
        if not step.runs:
            continue
        if step.op in (Op.ACTIVATIONS, Op.AS_DISCRETE, Op.INVERT) and step.op in seen:
            raise refuse(step, f"a second {step.op}")
        seen.add(step.op)
        if step.op is Op.AS_DISCRETE:
            discrete_at = position
        elif step.op is Op.ACTIVATIONS and discrete_at is not None:
            raise refuse(step, "an activation after AsDiscrete")
    if discrete_at is None:
        raise BundleImportError(
            f"{file}: postprocessing has no AsDiscrete(d) (argmax=True or a threshold), so "
            "the bundle makes no segmentation the appliance can return"
        )


# -- parsing -------------------------------------------------------------------------------


def parse_pipeline(inference: Mapping[str, Any], file: str) -> BundlePipeline:
    """The pipeline of a bundle's inference config ``inference`` (read from ``file``).

    Raises :class:`BundleImportError` naming ``file``, the position and the transform
    for anything the appliance cannot run faithfully.
    """
    pre_entries = _compose_entries(inference, Stage.PREPROCESSING, file)
    post_entries = _compose_entries(inference, Stage.POSTPROCESSING, file)
    image_key = _resolved_text(inference, "image_key", IMAGE_KEY, file)
    preprocessing = tuple(
        _parse_step(inference, Stage.PREPROCESSING, i, entry, image_key, file)
        for i, entry in enumerate(pre_entries)
    )
    if "inferer" not in inference:
        raise BundleImportError(
            f"{file}: there is no 'inferer'; the appliance does not guess how the network "
            "is applied to a whole image"
        )
    inferer_entry = _component(inference, inference["inferer"], "inferer", file)
    inferer = _parse_step(inference, Stage.INFERER, None, inferer_entry, image_key, file)
    postprocessing = tuple(
        _parse_step(inference, Stage.POSTPROCESSING, i, entry, PRED_KEY, file)
        for i, entry in enumerate(post_entries)
    )
    pipeline = BundlePipeline(
        file=file, preprocessing=preprocessing, inferer=inferer, postprocessing=postprocessing
    )
    from .bundle_run import build_preprocess  # the execution side imports this module

    try:
        build_preprocess(pipeline)  # MONAI checks the arguments once more
    except ModelsError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise BundleImportError(f"{file}: MONAI refuses the pre-processing: {exc}") from exc
    return pipeline


def _resolved_text(config: Mapping[str, Any], key: str, default: str, file: str) -> str:
    if key not in config:
        return default
    value = resolve(config[key], config, key, file=file)
    if not isinstance(value, str) or not value:
        raise BundleImportError(f"{file}: {key} must be text")
    return value


def _component(config: Mapping[str, Any], value: Any, where: str, file: str) -> Mapping[str, Any]:
    """``value`` with "@" references followed, as a component mapping."""
    chain: list[str] = []
    while isinstance(value, str) and value.startswith("@"):
        ref = value[1:]
        if ref in chain or len(chain) > 32:
            raise BundleImportError(f"{file}: {where}: circular reference {value}")
        chain.append(ref)
        try:
            value = lookup(config, ref)
        except KeyError:
            raise BundleImportError(
                f"{file}: {where} refers to {value}, which is not defined"
            ) from None
    if not isinstance(value, Mapping) or not isinstance(value.get("_target_"), str):
        shown = str(value)[:80]
        raise BundleImportError(
            f"{file}: {where} must be a component with a _target_, not {shown!r} "
            "(expressions are not run)"
        )
    return value


def _compose_entries(config: Mapping[str, Any], stage: Stage, file: str) -> list[Mapping[str, Any]]:
    if stage not in config:
        if stage is Stage.PREPROCESSING:
            raise BundleImportError(f"{file}: there is no 'preprocessing'")
        raise BundleImportError(
            f"{file}: there is no 'postprocessing', so the bundle makes no segmentation "
            "(an AsDiscrete step is needed)"
        )
    compose = _component(config, config[stage], str(stage), file)
    target = compose["_target_"]
    if target not in ("Compose", "monai.transforms.Compose"):
        raise BundleImportError(f"{file}: {stage} must be a Compose, not {target}")
    unknown = set(compose) - _LOADER_KEYS - {"transforms", "log_stats", "map_items"}
    if unknown:
        raise BundleImportError(
            f"{file}: {stage}: Compose arguments {sorted(unknown)} are not supported"
        )
    transforms = compose.get("transforms")
    if isinstance(transforms, str) and transforms.startswith("@"):
        ref = transforms[1:]
        try:
            transforms = lookup(config, ref)
        except KeyError:
            raise BundleImportError(
                f"{file}: {stage}.transforms refers to {transforms}, which is not defined"
            ) from None
    if not isinstance(transforms, list):
        raise BundleImportError(f"{file}: {stage}.transforms must be a list")
    return [_component(config, entry, _where(stage, i), file) for i, entry in enumerate(transforms)]


def _op_of(target: str) -> Op | None:
    name = target
    if "." in target:
        if not target.startswith(("monai.transforms.", "monai.inferers.")):
            return None
        name = target.rsplit(".", 1)[1]
    return _TARGET_NAMES.get(name)


def _parse_step(
    config: Mapping[str, Any],
    stage: Stage,
    position: int | None,
    entry: Mapping[str, Any],
    key: str,
    file: str,
) -> Step:
    where = _where(stage, position)
    target = entry["_target_"]
    op = _op_of(target)

    def refuse(reason: str) -> BundleImportError:
        return BundleImportError(
            f"{file}: transform {target} at {where} cannot be run faithfully by the "
            f"appliance{': ' + reason if reason else ''}"
        )

    if op is None or _SPECS[op].stage is not stage:
        name = target.rsplit(".", 1)[-1]
        raise refuse(_REFUSED.get(name) or _REFUSED.get(name.removesuffix("d"), ""))
    spec = _SPECS[op]
    if entry.get("_mode_", "default") != "default":
        raise refuse(f"_mode_ {entry['_mode_']!r}")
    disabled = resolve(entry.get("_disabled_", False), config, f"{where}._disabled_", file=file)
    args = {k: v for k, v in entry.items() if k not in _LOADER_KEYS}
    if disabled is True:
        return Step(stage, position, target, op, Action.IGNORED, note="disabled in the config")
    if "keys" in args and stage is not Stage.INFERER:
        keys = resolve(args["keys"], config, f"{where}.keys", file=file)
        key_list = keys if isinstance(keys, list) else [keys]
        if key not in key_list:
            if spec.action is Action.RUN and op is not Op.INVERT:
                return Step(
                    stage,
                    position,
                    target,
                    op,
                    Action.IGNORED,
                    ignored_args=tuple(args),
                    note=f"does not apply to {key!r}",
                )
            key_index, key_count = 0, 1
        else:
            key_index, key_count = key_list.index(key), len(key_list)
    else:
        key_index, key_count = 0, 1
    if op is Op.CROP_FOREGROUND:
        if "select_fn" in args:
            raise refuse("only the default select_fn (image > 0) is supported; a function is code")
        source = resolve(args.get("source_key"), config, f"{where}.source_key", file=file)
        if source != key:
            raise refuse(f"source_key {source!r} is not the image {key!r}")
    if spec.ignore_all:
        return Step(
            stage, position, target, op, spec.action, ignored_args=tuple(args), note=spec.note
        )
    unknown = sorted(set(args) - set(spec.params) - set(spec.fixed) - spec.ignored)
    if unknown:
        raise refuse(f"unsupported arguments {', '.join(unknown)}")
    params: dict[str, Any] = {}
    for name, arg in spec.params.items():
        if name not in args:
            if arg.default == _REQUIRED:
                raise refuse(f"{name} is missing")
            params[name] = arg.default
            continue
        if op is Op.LABEL_ENCODING:
            value = args[name]  # recorded as text, never evaluated
        else:
            value = resolve(args[name], config, f"{where}.{name}", file=file)
        if key_count > 1 and isinstance(value, list) and len(value) == key_count:
            value = value[key_index]
        try:
            params[name] = arg.check(value)
        except ValueError as exc:
            raise refuse(f"{name} {exc}") from None
    for name, required in spec.fixed.items():
        if name in args:
            value = resolve(args[name], config, f"{where}.{name}", file=file)
            if value != required:
                raise refuse(f"{name}={value!r} is not supported (only {required!r})")
    reason = spec.validate(params) if spec.validate else None
    if reason:
        raise refuse(reason)
    ignored = tuple(a for a in args if a in spec.ignored)
    return Step(stage, position, target, op, spec.action, params, ignored, spec.note)


# -- description ---------------------------------------------------------------------------


def working_spacing(pipeline: BundlePipeline) -> tuple[float, float, float] | None:
    """The grid spacing (mm) the network works at: the last running Spacing step's
    ``pixdim``; None when the bundle does not resample (the input's own spacing)."""
    spacings = pipeline.running(Op.SPACING)
    if not spacings:
        return None
    pixdim = spacings[-1].params["pixdim"]
    return (float(pixdim[0]), float(pixdim[1]), float(pixdim[2]))


def describe(pipeline: BundlePipeline) -> list[str]:
    """Short lines saying what the appliance runs, step by step (for the CLI and cards)."""
    lines = [f"pipeline of {pipeline.file}:"]
    for step in pipeline.steps:
        params = ", ".join(f"{k}={_show(v)}" for k, v in step.params.items())
        head = f"  {step.where}: {step.transform}"
        if step.runs:
            extra = f" (ignoring {', '.join(step.ignored_args)})" if step.ignored_args else ""
            lines.append(f"{head}({params}) - run{extra}")
        else:
            lines.append(f"{head} - {step.action}: {step.note}")
    if not pipeline.running(Op.INVERT):
        lines.append("  (no Invertd: the appliance inverts onto the input grid at the end)")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_channel_labels(pipeline: BundlePipeline, channel_labels: Mapping[int, int]) -> int:
    """Check the network-channel -> task-label mapping against ``pipeline``; return the
    number of task labels. Every label 1..max needs a channel; for a thresholded
    (multi-label) output, exactly one. Raises :class:`SpecError`."""
    labels: dict[int, int] = {}
    for channel, label in channel_labels.items():
        for name, value, low in (("channel", channel, 0), ("label", label, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 255:
                raise SpecError(f"{name} {value!r} in the channel labels is not in 0..255")
        labels[channel] = label
    count = max(labels.values(), default=0)
    if count < 1:
        raise SpecError("the channel labels map no network channel to a task label")
    for label in range(1, count + 1):
        channels = [c for c, lab in labels.items() if lab == label]
        if not channels:
            raise SpecError(f"task label {label} has no network channel")
        if pipeline.multi_label and len(channels) > 1:
            raise SpecError(
                f"task label {label} has channels {channels}; a thresholded output needs one"
            )
    return count
