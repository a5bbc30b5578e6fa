"""Task specs: what a segmentation task is, independent of networks and of DICOM.

A :class:`TaskSpec` states the labels (with their coded concepts), the input channels,
the target spacing, the intensity handling, the patch size and the post-processing.
Everything downstream (networks, transforms, inference, post-processing, the DICOM
writers in ``appliance``) iterates over ``spec.labels`` and ``spec.channels``; a new
task (e.g. multi-sequence glioma sub-regions with four channels and three labels) is a
new entry in :data:`TASKS` and a new :class:`TaskName`, with no change elsewhere.

Output activation (:class:`OutputActivation`):

- ``softmax`` (default): the network has a background channel plus one channel per
  label; labels are mutually exclusive and the result is one label map. The training
  label map holds the label indices themselves.
- ``sigmoid``: one channel per label and no background channel (label ``i`` is channel
  ``i - 1``), each an independent probability, so segments may overlap (the BraTS
  sub-regions: enhancing tumour inside tumour core inside whole tumour). Training label
  maps still hold *disjoint* tissue classes (``tissue_classes``, values 1..K, 0 is
  background); label ``i`` is the union of the tissue values in ``regions[i - 1]``
  (like MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``). A label whose region is
  a subset of another's is *nested* in it: inference enforces that nesting after
  thresholding (see :func:`models.inference.segment`).

``num_classes`` is always the number of network output channels;
``training_classes`` the number of values of a training label map (background
included).

Like highdicom's constructors, every spec validates itself in ``__post_init__``: once
it exists it is valid. Enum-typed fields accept their string values too.

Axis conventions: ``target_spacing_mm`` and ``patch_size`` are in the order of the
*network's* axes, which are RAS-oriented after pre-processing (array axis 0 runs towards
the patient's right, axis 1 towards anterior, axis 2 towards superior). For an axial
series that is (column, row, slice) of the DICOM pixel array.

Coded concepts are plain strings here (``models`` never imports pydicom); the DICOM
layer turns a :class:`Code` into a ``pydicom.sr.coding.Code``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias

from .errors import SpecError

#: The most voxels (per channel) one inference may resample a series to; the appliance's
#: ``limits.max_working_voxels``. 2^27 is 512 MiB as float32: a 500 mm x 500 mm x 1 m
#: field of view at 1.5 x 1.5 x 2 mm needs 56 M.
MAX_WORKING_VOXELS = 2**27

#: Every patch edge must be a multiple of this. The networks built by
#: :mod:`models.networks` downsample at most this many times along each axis.
PATCH_MULTIPLE = 16

_MAX_LABELS = 255  # label maps are uint8


class TaskName(StrEnum):
    """The tasks this appliance knows."""

    LIVER_CT = "liver_ct"
    GLIOMA_MR = "glioma_mr"
    GLIOMA_BRATS = "glioma_brats"


class OutputActivation(StrEnum):
    """How network outputs become segments (see the module docstring)."""

    SOFTMAX = "softmax"  # background + one channel per label, mutually exclusive
    SIGMOID = "sigmoid"  # one channel per label, independent, may overlap


class Modality(StrEnum):
    """Imaging modality of a task or channel (DICOM Modality values)."""

    CT = "CT"
    MR = "MR"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept, e.g. ``Code("SCT", "10200004", "Liver")``.

    Lengths follow the DICOM value representations of the code sequence attributes:
    scheme designator SH (16), code value SH (16; longer values need LongCodeValue,
    which we do not use), code meaning LO (64).
    """

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        for attr, limit in (("scheme", 16), ("value", 16), ("meaning", 64)):
            text = getattr(self, attr)
            _require(isinstance(text, str), f"Code.{attr} must be a string")
            _require(text.strip() == text and text != "", f"Code.{attr} must be non-empty text")
            _require(len(text) <= limit, f"Code.{attr} is longer than {limit} characters")
            _require("\\" not in text, f"Code.{attr} must not contain a backslash")


# Coded concepts used by the shipped tasks. Category codes are from DICOM CID 7150
# (Segmentation Property Categories); property types from CID 7166 / CID 7159.
ANATOMICAL_STRUCTURE = Code("SCT", "91723000", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("SCT", "49755003", "Morphologically Abnormal Structure")
LIVER = Code("SCT", "10200004", "Liver")
BRAIN = Code("SCT", "12738006", "Brain")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
# BraTS sub-regions, with CID 7159 (Lesion Segmentation Types) codes only: the
# enhancing tumour and the tumour core (enhancing + necrotic/non-enhancing part) are
# neoplasm; the whole tumour also holds the peritumoural oedema, which is not neoplastic
# tissue, so it is the more general "Lesion". SNOMED CT has no CID 7159 concept for the
# enhancing part alone; the segment label says which part it is.
LESION = Code("SCT", "52988006", "Lesion")


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """One output class of a task: its index in the label map and what it means.

    ``anatomic_region`` locates a lesion type (e.g. a neoplasm *of the liver*); the DICOM
    SEG writer puts it in the segment's Anatomic Region Sequence.
    """

    index: int
    name: str
    category: Code
    property_type: Code
    color_rgb: tuple[int, int, int]
    anatomic_region: Code | None = None

    def __post_init__(self) -> None:
        _require(
            isinstance(self.index, int) and not isinstance(self.index, bool),
            "label index must be an integer",
        )
        _require(1 <= self.index <= _MAX_LABELS, f"label index must be in 1..{_MAX_LABELS}")
        _require(
            isinstance(self.name, str) and self.name.strip() != "", "label name must be non-empty"
        )
        _require(len(self.name) <= 64, "label name is longer than 64 characters")
        for attr in ("category", "property_type"):
            _require(isinstance(getattr(self, attr), Code), f"LabelSpec.{attr} must be a Code")
        _require(
            self.anatomic_region is None or isinstance(self.anatomic_region, Code),
            "LabelSpec.anatomic_region must be a Code or None",
        )
        color = tuple(self.color_rgb)
        _require(
            len(color) == 3
            and all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color
            ),
            "color_rgb must be three integers in 0..255",
        )
        object.__setattr__(self, "color_rgb", color)


@dataclass(frozen=True, slots=True)
class CTWindow:
    """CT intensity handling: clip to [lower_hu, upper_hu], then scale linearly to [0, 1]."""

    lower_hu: float
    upper_hu: float

    def __post_init__(self) -> None:
        _require(
            _is_finite_number(self.lower_hu) and _is_finite_number(self.upper_hu),
            "CT window bounds must be finite numbers",
        )
        _require(self.lower_hu < self.upper_hu, "CT window needs lower_hu < upper_hu")


@dataclass(frozen=True, slots=True)
class MRZScore:
    """MR intensity handling: z-score each channel with the mean and standard deviation of
    its foreground voxels.

    Foreground voxels are those brighter than ``foreground_threshold`` times the channel's
    mean intensity (0 means: every voxel above zero). A relative threshold keeps the rule
    independent of a scanner's arbitrary intensity scale. All voxels are normalised with
    the foreground statistics, so background becomes negative.
    """

    foreground_threshold: float = 0.5

    def __post_init__(self) -> None:
        _require(
            _is_finite_number(self.foreground_threshold) and self.foreground_threshold >= 0,
            "foreground_threshold must be a finite number >= 0",
        )


IntensitySpec: TypeAlias = CTWindow | MRZScore


@dataclass(frozen=True, slots=True)
class BodyCrop:
    """Sliding windows only over the body (a CT task's option, see
    :func:`models.inference.segment`): the box of the input voxels above ``threshold_hu``
    (before the intensity window), grown by ``margin_mm`` on every side; the prediction
    outside it is background."""

    threshold_hu: float = -500.0
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        _require(_is_finite_number(self.threshold_hu), "body_crop.threshold_hu must be finite")
        _require(
            _is_finite_number(self.margin_mm) and self.margin_mm >= 0,
            "body_crop.margin_mm must be a finite number >= 0",
        )


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One input channel: its name, modality and which series kinds may fill it.

    ``accepted_series`` are the routing layer's series-kind tags (e.g. ``"T1C"`` for T1
    post-contrast, ``"FLAIR"``); a channel accepting several takes whichever is present.
    """

    name: str
    modality: Modality
    accepted_series: tuple[str, ...]

    def __post_init__(self) -> None:
        _require(
            isinstance(self.name, str) and self.name.strip() != "", "channel name must be non-empty"
        )
        try:
            object.__setattr__(self, "modality", Modality(self.modality))
        except ValueError as exc:
            raise SpecError(f"unknown modality {self.modality!r}") from exc
        series = tuple(self.accepted_series)
        _require(len(series) > 0, f"channel {self.name!r} must accept at least one series kind")
        _require(
            all(isinstance(s, str) and s.strip() != "" for s in series),
            "series kinds must be non-empty strings",
        )
        _require(len(set(series)) == len(series), "series kinds of a channel must be unique")
        object.__setattr__(self, "accepted_series", series)


@dataclass(frozen=True, slots=True)
class ParentConstraint:
    """Components of label ``child`` are kept only where they lie within
    ``max_distance_mm`` of label ``parent`` (e.g. liver tumours near or in the liver)."""

    child: int
    parent: int
    max_distance_mm: float

    def __post_init__(self) -> None:
        _require(self.child != self.parent, "a label cannot be its own parent")
        _require(
            _is_finite_number(self.max_distance_mm) and self.max_distance_mm > 0,
            "max_distance_mm must be a finite number > 0",
        )


@dataclass(frozen=True, slots=True)
class PostprocessSpec:
    """Clean-up applied to the label map on the input grid (see :mod:`models.postprocess`).

    - ``largest_component``: labels of which only the largest connected component is
      kept (computed together with their child labels, so a tumour does not split its
      organ);
    - ``inside_parent``: child labels whose components must touch their parent label
      dilated by ``max_distance_mm``;
    - ``min_volume_ml``: ``(label, mL)`` pairs; components smaller than that are removed;
    - ``connectivity``: 6 (faces) or 26 (faces, edges and corners) neighbourhood.
    """

    largest_component: tuple[int, ...] = ()
    inside_parent: tuple[ParentConstraint, ...] = ()
    min_volume_ml: tuple[tuple[int, float], ...] = ()
    connectivity: int = 26

    def __post_init__(self) -> None:
        largest = tuple(self.largest_component)
        parents = tuple(self.inside_parent)
        volumes = tuple((int(label), float(ml)) for label, ml in self.min_volume_ml)
        _require(len(set(largest)) == len(largest), "largest_component lists a label twice")
        _require(
            all(isinstance(c, ParentConstraint) for c in parents),
            "inside_parent must hold ParentConstraint values",
        )
        children = [c.child for c in parents]
        _require(len(set(children)) == len(children), "a label can have only one parent")
        _require(
            not set(children) & {c.parent for c in parents},
            "parent constraints must not chain (a child cannot be a parent)",
        )
        labels = [label for label, _ in volumes]
        _require(len(set(labels)) == len(labels), "min_volume_ml lists a label twice")
        _require(
            all(math.isfinite(ml) and ml >= 0 for _, ml in volumes),
            "minimum volumes must be finite and >= 0 mL",
        )
        _require(self.connectivity in (6, 26), "connectivity must be 6 or 26")
        object.__setattr__(self, "largest_component", largest)
        object.__setattr__(self, "inside_parent", parents)
        object.__setattr__(self, "min_volume_ml", volumes)

    @property
    def referenced_labels(self) -> frozenset[int]:
        """Every label index this spec mentions."""
        found = set(self.largest_component)
        found.update(label for label, _ in self.min_volume_ml)
        for c in self.inside_parent:
            found.update((c.child, c.parent))
        return frozenset(found)

    def min_volume(self, label: int) -> float:
        """Minimum component volume in mL for ``label`` (0 when not configured)."""
        return dict(self.min_volume_ml).get(label, 0.0)

    def children_of(self, label: int) -> tuple[int, ...]:
        return tuple(c.child for c in self.inside_parent if c.parent == label)

    def with_min_volume(self, label: int, ml: float) -> PostprocessSpec:
        """A copy with ``label``'s minimum component volume set to ``ml`` (site config)."""
        volumes = dict(self.min_volume_ml)
        volumes[label] = ml
        return replace(self, min_volume_ml=tuple(sorted(volumes.items())))


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything that defines a segmentation task, apart from the network."""

    name: TaskName
    description: str
    modality: Modality
    labels: tuple[LabelSpec, ...]
    channels: tuple[ChannelSpec, ...]
    target_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    intensity: IntensitySpec
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    #: how outputs become segments; ``sigmoid`` needs ``tissue_classes`` and ``regions``
    activation: OutputActivation = OutputActivation.SOFTMAX
    #: sigmoid tasks: names of the training label map's disjoint classes 1..K
    tissue_classes: tuple[str, ...] = ()
    #: sigmoid tasks: per label (in label order) the tissue values it is the union of
    regions: tuple[tuple[int, ...], ...] = ()
    #: CT tasks: run the network only inside the body's box (None: over the whole image)
    body_crop: BodyCrop | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "activation", OutputActivation(self.activation))
        except ValueError as exc:
            raise SpecError(
                f"unknown output activation {self.activation!r}; use softmax or sigmoid"
            ) from exc
        try:
            object.__setattr__(self, "name", TaskName(self.name))
        except ValueError as exc:
            raise SpecError(f"unknown task name {self.name!r}") from exc
        try:
            object.__setattr__(self, "modality", Modality(self.modality))
        except ValueError as exc:
            raise SpecError(f"unknown modality {self.modality!r}") from exc
        _require(isinstance(self.description, str), "description must be a string")

        labels = tuple(self.labels)
        _require(len(labels) > 0, "a task needs at least one label")
        _require(all(isinstance(x, LabelSpec) for x in labels), "labels must be LabelSpec values")
        indices = [x.index for x in labels]
        _require(
            indices == list(range(1, len(labels) + 1)),
            f"label indices must be 1..N in order without gaps, got {indices}",
        )
        names = [x.name for x in labels]
        _require(len(set(names)) == len(names), "label names must be unique")

        channels = tuple(self.channels)
        _require(len(channels) > 0, "a task needs at least one input channel")
        _require(
            all(isinstance(c, ChannelSpec) for c in channels), "channels must be ChannelSpec values"
        )
        channel_names = [c.name for c in channels]
        _require(len(set(channel_names)) == len(channel_names), "channel names must be unique")

        spacing = tuple(self.target_spacing_mm)
        _require(
            len(spacing) == 3 and all(_is_finite_number(s) and s > 0 for s in spacing),
            "target_spacing_mm must be three finite numbers > 0",
        )
        patch = tuple(self.patch_size)
        _require(
            len(patch) == 3
            and all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in patch),
            "patch_size must be three positive integers",
        )
        _require(
            all(p % PATCH_MULTIPLE == 0 for p in patch),
            f"patch_size {patch} must be multiples of {PATCH_MULTIPLE}",
        )

        _require(
            isinstance(self.intensity, CTWindow | MRZScore),
            "intensity must be a CTWindow or an MRZScore",
        )
        _require(
            not isinstance(self.intensity, CTWindow) or self.modality is Modality.CT,
            "a CT window only makes sense for a CT task",
        )
        _require(
            isinstance(self.postprocess, PostprocessSpec), "postprocess must be a PostprocessSpec"
        )
        _require(
            self.body_crop is None
            or (isinstance(self.body_crop, BodyCrop) and isinstance(self.intensity, CTWindow)),
            "body_crop must be a BodyCrop, and only a CT task (CT window) may have one",
        )
        unknown = self.postprocess.referenced_labels - set(indices)
        _require(not unknown, f"post-processing refers to unknown labels {sorted(unknown)}")
        tissues, regions = self._checked_regions(labels)

        object.__setattr__(self, "tissue_classes", tissues)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "target_spacing_mm", tuple(float(s) for s in spacing))
        object.__setattr__(self, "patch_size", patch)

    def _checked_regions(
        self, labels: tuple[LabelSpec, ...]
    ) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
        """Validate ``tissue_classes``/``regions`` against the activation."""
        _require(
            isinstance(self.tissue_classes, tuple | list)
            and isinstance(self.regions, tuple | list),
            "tissue_classes and regions must be tuples",
        )
        tissues = tuple(self.tissue_classes)
        if self.activation is OutputActivation.SOFTMAX:
            _require(
                not tissues and not self.regions,
                "tissue_classes and regions are for sigmoid tasks; a softmax task's training "
                "labels are its label indices",
            )
            return (), ()
        _require(
            all(isinstance(t, str) and t.strip() != "" for t in tissues),
            "tissue class names must be non-empty strings",
        )
        _require(len(tissues) > 0, "a sigmoid task needs tissue_classes (training label values)")
        _require(len(tissues) <= _MAX_LABELS, f"at most {_MAX_LABELS} tissue classes")
        _require(len(set(tissues)) == len(tissues), "tissue class names must be unique")
        _require(
            all(t.strip().lower() != "background" for t in tissues)
            and all(x.name.strip().lower() != "background" for x in labels),
            "a sigmoid task has no background channel: value 0 of the training label map is "
            "background; do not name a tissue class or label 'background'",
        )
        _require(
            len(self.regions) == len(labels),
            f"a sigmoid task needs one region per label: {len(labels)} labels, "
            f"{len(self.regions)} regions",
        )
        regions: list[tuple[int, ...]] = []
        for label, region in zip(labels, self.regions, strict=True):
            _require(
                isinstance(region, tuple | list | frozenset | set),
                f"region of label {label.index} must be a tuple of tissue values",
            )
            values = tuple(region)
            _require(len(values) > 0, f"region of label {label.index} ({label.name}) is empty")
            _require(
                all(isinstance(v, int) and not isinstance(v, bool) for v in values),
                f"region of label {label.index} must hold integer tissue values",
            )
            _require(
                0 not in values,
                f"region of label {label.index} ({label.name}) contains 0: background is not "
                "a tissue class and a sigmoid task has no background channel",
            )
            _require(
                all(1 <= v <= len(tissues) for v in values),
                f"region of label {label.index} ({label.name}) has values outside the tissue "
                f"classes 1..{len(tissues)}: {sorted(values)}",
            )
            _require(
                len(set(values)) == len(values),
                f"region of label {label.index} lists a tissue value twice",
            )
            regions.append(tuple(sorted(values)))
        _require(
            len(set(regions)) == len(regions),
            "two labels have the same region; each label must be a different union of tissues",
        )
        covered = {v for region in regions for v in region}
        missing = [i for i in range(1, len(tissues) + 1) if i not in covered]
        _require(not missing, f"tissue classes {missing} belong to no region")
        pp = self.postprocess
        _require(
            not pp.largest_component and not pp.inside_parent,
            "a sigmoid task's post-processing supports only min_volume_ml (per label); "
            "nesting follows from the regions",
        )
        return tissues, tuple(regions)

    @property
    def is_sigmoid(self) -> bool:
        return self.activation is OutputActivation.SIGMOID

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus one per label (softmax), or one per
        label (sigmoid)."""
        if self.is_sigmoid:
            return len(self.labels)
        return len(self.labels) + 1

    @property
    def training_classes(self) -> int:
        """Values of a training label map, background (0) included: the label indices
        (softmax) or the tissue classes (sigmoid)."""
        if self.is_sigmoid:
            return len(self.tissue_classes) + 1
        return len(self.labels) + 1

    def nesting(self) -> tuple[tuple[int, int], ...]:
        """``(inner, outer)`` label pairs of a sigmoid task whose regions nest (inner's
        tissues are a proper subset of outer's), smallest inner regions first."""
        if not self.is_sigmoid:
            return ()
        order = sorted(range(len(self.regions)), key=lambda i: (len(self.regions[i]), i))
        pairs = []
        for i in order:
            for j in range(len(self.regions)):
                if i != j and set(self.regions[i]) < set(self.regions[j]):
                    pairs.append((i + 1, j + 1))
        return tuple(pairs)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def label(self, index: int) -> LabelSpec:
        for spec in self.labels:
            if spec.index == index:
                return spec
        raise SpecError(f"task {self.name} has no label {index}")


LIVER_CT_SPEC = TaskSpec(
    name=TaskName.LIVER_CT,
    description="Liver and liver tumour on contrast or non-contrast abdominal CT",
    modality=Modality.CT,
    labels=(
        LabelSpec(1, "Liver", ANATOMICAL_STRUCTURE, LIVER, (221, 130, 101)),
        LabelSpec(
            2,
            "Liver tumour",
            MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            NEOPLASM,
            (255, 215, 0),
            anatomic_region=LIVER,
        ),
    ),
    channels=(ChannelSpec("ct", Modality.CT, ("CT",)),),
    target_spacing_mm=(1.5, 1.5, 2.0),
    patch_size=(96, 96, 64),
    intensity=CTWindow(lower_hu=-100.0, upper_hu=250.0),
    postprocess=PostprocessSpec(
        largest_component=(1,),
        inside_parent=(ParentConstraint(child=2, parent=1, max_distance_mm=5.0),),
        min_volume_ml=((1, 1.0), (2, 0.02)),
    ),
    body_crop=BodyCrop(threshold_hu=-500.0, margin_mm=10.0),
)

GLIOMA_MR_SPEC = TaskSpec(
    name=TaskName.GLIOMA_MR,
    description="Glioma, whole tumour, from one MR series (T1 post-contrast or FLAIR)",
    modality=Modality.MR,
    labels=(
        LabelSpec(
            1,
            "Glioma",
            MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            NEOPLASM,
            (230, 80, 80),
            anatomic_region=BRAIN,
        ),
    ),
    channels=(ChannelSpec("t1c_or_flair", Modality.MR, ("T1C", "FLAIR")),),
    target_spacing_mm=(2.0, 2.0, 2.0),
    patch_size=(64, 64, 64),
    intensity=MRZScore(foreground_threshold=0.5),
    postprocess=PostprocessSpec(min_volume_ml=((1, 0.1),)),
)

GLIOMA_BRATS_SPEC = TaskSpec(
    name=TaskName.GLIOMA_BRATS,
    description=(
        "Glioma sub-regions (enhancing tumour, tumour core, whole tumour; overlapping) "
        "from four co-registered MR series: T1 post-contrast, T1, T2 and FLAIR (BraTS)"
    ),
    modality=Modality.MR,
    labels=(
        LabelSpec(
            1,
            "Enhancing tumour",
            MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            NEOPLASM,
            (255, 230, 60),
            anatomic_region=BRAIN,
        ),
        LabelSpec(
            2,
            "Tumour core",
            MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            NEOPLASM,
            (220, 60, 60),
            anatomic_region=BRAIN,
        ),
        LabelSpec(
            3,
            "Whole tumour",
            MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            LESION,
            (80, 170, 230),
            anatomic_region=BRAIN,
        ),
    ),
    # the MONAI brats_mri_segmentation bundle's channel order
    channels=(
        ChannelSpec("t1c", Modality.MR, ("T1C",)),
        ChannelSpec("t1", Modality.MR, ("T1",)),
        ChannelSpec("t2", Modality.MR, ("T2",)),
        ChannelSpec("flair", Modality.MR, ("FLAIR",)),
    ),
    target_spacing_mm=(2.0, 2.0, 2.0),
    patch_size=(64, 64, 64),
    # every voxel above zero, per channel: NormalizeIntensityd(nonzero=True,
    # channel_wise=True) as in the MONAI bundle (skull-stripped BraTS data is exactly 0
    # outside the head; the phantoms' Rician noise floor is small next to tissue)
    intensity=MRZScore(foreground_threshold=0.0),
    postprocess=PostprocessSpec(min_volume_ml=((1, 0.05), (2, 0.1), (3, 0.1))),
    activation=OutputActivation.SIGMOID,
    tissue_classes=("necrotic/non-enhancing core", "oedema", "enhancing"),
    regions=((3,), (1, 3), (1, 2, 3)),
)

#: The shipped tasks, by name.
TASKS: Mapping[TaskName, TaskSpec] = MappingProxyType(
    {spec.name: spec for spec in (LIVER_CT_SPEC, GLIOMA_MR_SPEC, GLIOMA_BRATS_SPEC)}
)


def get_task(name: TaskName | str) -> TaskSpec:
    """The spec of a shipped task; :class:`SpecError` for an unknown name."""
    try:
        return TASKS[TaskName(name)]
    except (ValueError, KeyError) as exc:
        raise SpecError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from exc
