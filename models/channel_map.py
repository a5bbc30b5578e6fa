"""Which network output channel is which task label: a bundle's ``channel_def``, by name.

A MONAI bundle says what its output channels are in ``metadata.json``
(``network_data_format.outputs.pred.channel_def``, e.g. ``{"0": "background", "5":
"liver", ...}``); a task says which labels a result must contain. :func:`map_channels`
joins the two **by name**: every task label has one vocabulary of synonyms
(:data:`VOCABULARIES`, keyed by the label's normalised name) and a channel whose name is
one of them feeds that label. Names are compared normalised (:func:`normalise`: case,
``_``, ``-`` and repeated spaces do not matter), so ``"Liver_Tumor"`` is
``"liver tumor"``. A few generic words (``"tumor"``, ``"lesion"``) mean the liver tumour
only when another channel of the same bundle is the liver. A channel_def value that is a
coded concept, ``"SCT:10200004"`` (scheme ``:`` value; ``SRT`` counts as ``SCT``), matches
the label whose property type has that code.

The result, :class:`ChannelMap`, maps network output channel -> task label index;
channels that map to nothing are background (softmax: they lose the argmax to nothing
the task shows; sigmoid: they are ignored). A site overrides or completes the mapping
with ``--label-map "5=Liver,6=2"`` (:func:`parse_label_map`; channel = label name,
synonym or index): an override entry replaces whatever the automatic mapping said about
that channel and that label.

**Which labels are required.** A task's organ labels (category *Anatomical Structure*)
are required: a bundle without one is refused, with a message that says what the bundle
segments, what the task needs and how to name the channel with ``--label-map``. Lesion
labels (every other category) may be missing, because a bundle that segments the organ is
still useful for it (e.g. ``wholeBody_ct_segmentation`` has a liver but no liver
tumour); they are listed in :attr:`ChannelMap.missing`, which the importer records on
the model card (``source.missing_labels``) and the CLI reports as a warning. A bundle
that supplies none of the task's labels is always refused.

**OutputActivation.** Softmax bundles (the default) have one channel per class including
background; sigmoid bundles (one independent channel per, possibly overlapping, region,
no background, e.g. BraTS) are recognised by the importer from the postprocessing's
``Activations``/``Activationsd`` with ``sigmoid=True``. Without a ``channel_def`` the
bundle must be laid out like the task: softmax ``0 = background, i = label i``, sigmoid
``i = label i + 1``.

Imports nothing but :mod:`models.errors` and :mod:`models.tasks` (no torch): the CLI
parses ``--label-map`` with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from .errors import ChannelMapError
from .tasks import ANATOMICAL_STRUCTURE, Code, OutputActivation

__all__ = [
    "VOCABULARIES",
    "ChannelMap",
    "ChannelMapError",
    "LabelVocabulary",
    "TaskLabel",
    "map_channels",
    "normalise",
    "parse_channel_def",
    "parse_label_map",
]

#: The most channels a channel_def (or a network) may have here.
MAX_CHANNELS: Final = 1024
#: How many channel names a message lists before it abbreviates.
_LISTED: Final = 12
_BACKGROUND: Final = frozenset({"background", "bg", "bkg"})
_CODE_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,15}):([0-9A-Za-z.]{1,16})")
_SCHEME_ALIASES: Final = MappingProxyType({"SRT": "SCT", "SNOMED": "SCT", "SNM3": "SCT"})


class TaskLabel(Protocol):
    """What :func:`map_channels` needs of a label (:class:`~models.tasks.LabelSpec` and
    :class:`~models.model_card.CardLabel` both have it)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def category(self) -> Code: ...
    @property
    def property_type(self) -> Code: ...


def normalise(name: str) -> str:
    """``name`` lower-cased, ``_``/``-`` as spaces, whitespace collapsed."""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


@dataclass(frozen=True, slots=True)
class LabelVocabulary:
    """The channel names that mean one task label.

    ``names`` always mean the label; ``generic`` words mean it only when another channel
    of the bundle is one of ``context``'s names (e.g. ``"tumor"`` is the liver tumour when
    the bundle also has a ``"liver"`` channel). All are stored normalised.
    """

    names: tuple[str, ...]
    generic: tuple[str, ...] = ()
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("names", "generic", "context"):
            words = tuple(normalise(w) for w in getattr(self, attr))
            if any(not w for w in words):
                raise ChannelMapError(f"LabelVocabulary.{attr} holds an empty name")
            object.__setattr__(self, attr, words)
        if not self.names:
            raise ChannelMapError("LabelVocabulary.names must not be empty")
        if bool(self.generic) != bool(self.context):
            raise ChannelMapError("LabelVocabulary: generic names need a context and back")

    def matches(self, channel_name: str, others: Sequence[str]) -> bool:
        """Whether a channel called ``channel_name`` (normalised) is this label, given the
        normalised names of the bundle's other channels."""
        if channel_name in self.names:
            return True
        return channel_name in self.generic and any(o in self.context for o in others)


_LIVER: Final = ("liver", "hepatic", "liver parenchyma")
_TUMOUR_WORDS: Final = ("tumour", "tumor", "lesion", "neoplasm", "cancer", "mass")

#: One vocabulary per task label, keyed by the label's normalised name: the one place
#: where channel names of bundles meet the task labels.
VOCABULARIES: Final[Mapping[str, LabelVocabulary]] = MappingProxyType(
    {
        "liver": LabelVocabulary(names=_LIVER),
        "liver tumour": LabelVocabulary(
            names=(
                *(f"{organ} {word}" for organ in ("liver", "hepatic") for word in _TUMOUR_WORDS),
                *(f"{organ} {word}s" for organ in ("liver", "hepatic") for word in _TUMOUR_WORDS),
                "hepatocellular carcinoma",
                "hcc",
            ),
            generic=(*_TUMOUR_WORDS, *(f"{word}s" for word in _TUMOUR_WORDS)),
            context=_LIVER,
        ),
        "glioma": LabelVocabulary(
            names=("glioma", "brain tumour", "brain tumor", "whole tumour", "whole tumor", "wt")
        ),
        "enhancing tumour": LabelVocabulary(
            names=("enhancing tumour", "enhancing tumor", "et", "enhancing")
        ),
        "tumour core": LabelVocabulary(names=("tumour core", "tumor core", "tc")),
        "whole tumour": LabelVocabulary(names=("whole tumour", "whole tumor", "wt")),
    }
)


def _vocabulary(label: TaskLabel) -> LabelVocabulary:
    key = normalise(label.name)
    return VOCABULARIES.get(key) or LabelVocabulary(names=(key,))


def _is_required(label: TaskLabel) -> bool:
    return (label.category.scheme, label.category.value) == (
        ANATOMICAL_STRUCTURE.scheme,
        ANATOMICAL_STRUCTURE.value,
    )


def _as_code(name: str) -> tuple[str, str] | None:
    match = _CODE_RE.fullmatch(name.strip())
    if match is None:
        return None
    scheme = match.group(1).upper()
    return _SCHEME_ALIASES.get(scheme, scheme), match.group(2)


def _code_key(code: Code) -> tuple[str, str]:
    scheme = code.scheme.upper()
    return _SCHEME_ALIASES.get(scheme, scheme), code.value


def is_background(name: str) -> bool:
    return normalise(name) in _BACKGROUND


# -- the result ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelMap:
    """Network output channel -> task label index, as imported (see the module docstring).

    ``missing`` are the names of the task's (optional) labels no channel feeds;
    ``channel_def`` is the bundle's own naming, channel -> name, as given.
    """

    out_channels: int
    activation: OutputActivation
    channel_labels: Mapping[int, int]
    channel_def: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        out = self.out_channels
        if not isinstance(out, int) or isinstance(out, bool) or not 1 <= out <= MAX_CHANNELS:
            raise ChannelMapError(f"out_channels must be an integer in 1..{MAX_CHANNELS}")
        try:
            object.__setattr__(self, "activation", OutputActivation(self.activation))
        except ValueError as exc:
            raise ChannelMapError(
                f"activation must be one of {[a.value for a in OutputActivation]}, "
                f"got {self.activation!r}"
            ) from exc
        labels: dict[int, int] = {}
        for channel, label in dict(self.channel_labels).items():
            if not _is_index(channel) or not 0 <= channel < out:
                raise ChannelMapError(f"channel {channel!r} is not one of 0..{out - 1}")
            if not _is_index(label) or not 1 <= label <= 255:
                raise ChannelMapError(f"channel {channel} maps to {label!r}, not a label 1..255")
            labels[channel] = label
        if len(set(labels.values())) != len(labels):
            raise ChannelMapError("two output channels map to the same label")
        if not labels:
            raise ChannelMapError("no output channel maps to a label")
        names: dict[int, str] = {}
        for channel, name in dict(self.channel_def).items():
            if not _is_index(channel) or not 0 <= channel < out or not isinstance(name, str):
                raise ChannelMapError(f"channel_def entry {channel!r}: {name!r} is not valid")
            names[channel] = name
        object.__setattr__(self, "channel_labels", MappingProxyType(dict(sorted(labels.items()))))
        object.__setattr__(self, "channel_def", MappingProxyType(dict(sorted(names.items()))))
        object.__setattr__(self, "missing", tuple(self.missing))

    def to_card(self) -> dict[str, Any]:
        """The model card's ``preprocessing["bundle"]`` entry (JSON keys are strings)."""
        return {
            "out_channels": self.out_channels,
            "activation": self.activation.value,
            "channel_labels": {str(c): label for c, label in self.channel_labels.items()},
            "channel_def": {str(c): name for c, name in self.channel_def.items()},
        }

    @classmethod
    def from_card(cls, entry: object) -> ChannelMap:
        """Read back :meth:`to_card`'s output (:class:`ChannelMapError` when malformed)."""
        if not isinstance(entry, Mapping):
            raise ChannelMapError("must be a JSON object")
        unknown = set(entry) - {"out_channels", "activation", "channel_labels", "channel_def"}
        if unknown:
            raise ChannelMapError(f"has unknown keys {sorted(unknown)}")
        labels = entry.get("channel_labels")
        names = entry.get("channel_def", {})
        if not isinstance(labels, Mapping) or not isinstance(names, Mapping):
            raise ChannelMapError("channel_labels and channel_def must be JSON objects")
        return cls(
            out_channels=entry.get("out_channels"),  # type: ignore[arg-type]
            activation=entry.get("activation"),  # type: ignore[arg-type]
            channel_labels={_channel_key(k): v for k, v in labels.items()},
            channel_def={_channel_key(k): v for k, v in names.items()},
        )


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _channel_key(key: object) -> int:
    if isinstance(key, str) and key.isdigit() and len(key) <= 4:
        return int(key)
    raise ChannelMapError(f"channel {key!r} is not a channel number")


# -- reading what the bundle and the site say -----------------------------------------------


def parse_channel_def(raw: object, where: str = "channel_def") -> dict[int, str]:
    """``{"0": "background", "1": "spleen"}`` as ``{0: "background", 1: "spleen"}``;
    channels must be 0..N-1 without gaps and names non-empty strings."""
    if not isinstance(raw, Mapping) or not raw:
        raise ChannelMapError(f"{where} must be a non-empty JSON object")
    if len(raw) > MAX_CHANNELS:
        raise ChannelMapError(f"{where} has more than {MAX_CHANNELS} channels")
    out: dict[int, str] = {}
    for key, name in raw.items():
        try:
            channel = _channel_key(str(key))
        except ChannelMapError:
            raise ChannelMapError(f"{where}: key {key!r} is not a channel number") from None
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise ChannelMapError(f"{where}[{key!r}] must be a non-empty name")
        out[channel] = name.strip()
    if sorted(out) != list(range(len(out))):
        raise ChannelMapError(f"{where}: channels must be 0..{len(out) - 1} without gaps")
    return dict(sorted(out.items()))


def parse_label_map(text: str) -> dict[int, str]:
    """``"5=liver"`` or ``"5=1, 6=Liver tumour"`` as ``{channel: label}`` (label: a name
    or an index, checked against the task by :func:`map_channels`). Syntax only."""
    entries: dict[int, str] = {}
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise ChannelMapError(
            f"--label-map {text!r}: expected CHANNEL=LABEL[,CHANNEL=LABEL...], e.g. 5=liver"
        )
    for part in parts:
        channel_text, sep, label = (s.strip() for s in part.partition("="))
        if not sep or not channel_text.isdigit() or len(channel_text) > 4 or not label:
            raise ChannelMapError(
                f"--label-map entry {part!r}: expected CHANNEL=LABEL with CHANNEL a number "
                "and LABEL a label name or index, e.g. 5=liver"
            )
        channel = int(channel_text)
        if channel in entries:
            raise ChannelMapError(f"--label-map names channel {channel} twice")
        entries[channel] = label
    return entries


def _override_label(label: str, labels: Sequence[TaskLabel], task: str) -> TaskLabel:
    if label.isdigit():
        for candidate in labels:
            if candidate.index == int(label):
                return candidate
    else:
        wanted = normalise(label)
        for candidate in labels:
            if normalise(candidate.name) == wanted:
                return candidate
        for candidate in labels:
            if wanted in _vocabulary(candidate).names:
                return candidate
    known = ", ".join(f"{lab.index}={lab.name}" for lab in labels)
    raise ChannelMapError(f"--label-map: task {task} has no label {label!r} (labels: {known})")


# -- the join ------------------------------------------------------------------------------


def _listing(channel_def: Mapping[int, str]) -> str:
    names = list(channel_def.values())
    shown = ", ".join(names[:_LISTED])
    return shown if len(names) <= _LISTED else f"{shown}, ... ({len(names)} channels)"


def _automatic(channel_def: Mapping[int, str], labels: Sequence[TaskLabel]) -> dict[int, int]:
    normalised = {c: normalise(n) for c, n in channel_def.items()}
    mapping: dict[int, int] = {}
    for label in labels:
        vocabulary = _vocabulary(label)
        code = _code_key(label.property_type)
        for channel, name in normalised.items():
            if channel in mapping:
                continue
            others = [n for c, n in normalised.items() if c != channel]
            if vocabulary.matches(name, others) or _as_code(channel_def[channel]) == code:
                mapping[channel] = label.index
                break
    return mapping


def _by_layout(
    out_channels: int, activation: OutputActivation, labels: Sequence[TaskLabel], bundle: str
) -> dict[int, int]:
    offset = 1 if activation is OutputActivation.SOFTMAX else 0
    needed = len(labels) + offset
    if out_channels != needed:
        layout = "background + one per label" if offset else "one per label (sigmoid)"
        raise ChannelMapError(
            f"{bundle}: network_def.out_channels is {out_channels}, but {len(labels)} "
            f"label(s) need {needed} ({layout}), and its metadata has no channel_def to map "
            "channels by name (give --label-map CHANNEL=LABEL,...)"
        )
    return {i + offset: label.index for i, label in enumerate(labels)}


def map_channels(
    labels: Sequence[TaskLabel],
    *,
    out_channels: int,
    activation: OutputActivation = OutputActivation.SOFTMAX,
    channel_def: Mapping[int, str] | None = None,
    override: Mapping[int, str] | None = None,
    bundle: str = "the bundle",
    task: str = "the task",
) -> ChannelMap:
    """Map the bundle's output channels to ``labels`` (see the module docstring).

    ``channel_def`` is the bundle's channel naming (:func:`parse_channel_def`), None when
    its metadata has none; ``override`` the site's ``--label-map`` (:func:`parse_label_map`).
    ``bundle`` and ``task`` name both in messages. Raises :class:`ChannelMapError`.
    """
    activation = OutputActivation(activation)
    if channel_def is not None and len(channel_def) != out_channels:
        raise ChannelMapError(
            f"{bundle}: network_def.out_channels is {out_channels}, but its metadata's "
            f"channel_def names {len(channel_def)} channel(s)"
        )
    names = dict(channel_def or {})
    if channel_def is not None:
        mapping = _automatic(names, labels)
    elif override:
        mapping = {}
    else:
        mapping = _by_layout(out_channels, activation, labels, bundle)

    resolved: dict[int, TaskLabel] = {}
    for channel, label_text in (override or {}).items():
        if not 0 <= channel < out_channels:
            raise ChannelMapError(
                f"--label-map: channel {channel} is not an output channel of {bundle} "
                f"(0..{out_channels - 1})"
            )
        if channel in names and is_background(names[channel]):
            raise ChannelMapError(f"--label-map: channel {channel} is {bundle}'s background")
        label = _override_label(label_text, labels, task)
        if any(other.index == label.index for other in resolved.values()):
            raise ChannelMapError(f"--label-map maps two channels to {label.name}")
        resolved[channel] = label
    for channel, label in resolved.items():
        mapping = {c: i for c, i in mapping.items() if i != label.index and c != channel}
        mapping[channel] = label.index

    mapped = set(mapping.values())
    missing = [label for label in labels if label.index not in mapped]
    required = [label for label in missing if _is_required(label)]
    if required or len(missing) == len(labels):
        absent = required or missing
        segments = _listing(names) if names else f"{out_channels} unnamed channels"
        needs = ", ".join(label.name for label in labels)
        first = absent[0].name
        raise ChannelMapError(
            f"{bundle} segments {segments}; task {task} needs {needs}: no output channel for "
            f"{', '.join(label.name for label in absent)} (give --label-map CHANNEL={first} "
            f"if one of the bundle's channels is {normalise(first)})"
        )
    return ChannelMap(
        out_channels=out_channels,
        activation=activation,
        channel_labels=mapping,
        channel_def=names,
        missing=tuple(label.name for label in missing),
    )
