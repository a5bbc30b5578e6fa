"""Routing: which task (model) a complete series goes to, decided by config rules.

Rules are tried in order; the first that matches wins. A series no rule matches is
recorded as not processed, with the reason of the closest rule's first failed condition.
A task of several series (e.g. glioma_brats: T1c, T1, T2, FLAIR) has one rule per role:
the rule's ``role`` names the task channel the series fills (see ``flow/study.py``).

Series Description is unreliable across scanners, so MR series can also be told apart by
their sequence attributes (from the series' first instance): whether a contrast agent is
named (ContrastBolusAgent), ScanningSequence values (SE, IR, GR, EP, RM), and inclusive
ranges of EchoTime, RepetitionTime and InversionTime in ms. A series without a value does
not match a rule that sets a range for it (enhanced multi-frame MR keeps these attributes
in functional groups, so there they are usually absent; see ``dicom_bridge.instance``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SeriesFacts:
    """What routing looks at: header values of a complete series (no patient data)."""

    modality: str
    body_part_examined: str = ""
    series_description: str = ""
    image_type: tuple[str, ...] = ()
    slices: int = 0
    contrast_bolus_agent: str = ""  # ContrastBolusAgent; "" when absent
    scanning_sequence: tuple[str, ...] = ()  # ScanningSequence values (SE, IR, GR, EP, RM)
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    inversion_time_ms: float | None = None


#: An inclusive range of milliseconds, (low, high) with 0 <= low <= high.
MsRange = tuple[float, float]


def _ms(value: float) -> str:
    return f"{value:g}"


def _range_mismatch(what: str, value: float | None, limits: MsRange | None) -> str | None:
    if limits is None:
        return None
    low, high = limits
    if value is None:
        return f"no {what}"
    if not low <= value <= high:
        return f"{what} {_ms(value)} ms is outside {_ms(low)} to {_ms(high)} ms"
    return None


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """All given conditions must hold. Empty tuples / None mean "any"."""

    task: str
    modality: str
    body_parts: tuple[str, ...] = ()  # BodyPartExamined, case-insensitive, any of
    series_description: str | None = None  # regular expression, searched, case-insensitive
    image_type_includes: tuple[str, ...] = ()  # every value must be in ImageType
    image_type_excludes: tuple[str, ...] = ("LOCALIZER",)  # none may be in ImageType
    min_slices: int = 1
    name: str = ""
    role: str | None = None  # the task channel this series fills (tasks of several series)
    contrast: bool | None = None  # True: ContrastBolusAgent named; False: absent; None: any
    scanning_sequence_includes: tuple[str, ...] = ()  # every value must be in ScanningSequence
    echo_time_ms: MsRange | None = None  # EchoTime within [low, high] ms
    repetition_time_ms: MsRange | None = None  # RepetitionTime within [low, high] ms
    inversion_time_ms: MsRange | None = None  # InversionTime within [low, high] ms
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("echo_time_ms", "repetition_time_ms", "inversion_time_ms"):
            limits = getattr(self, key)
            if limits is not None and not (
                len(limits) == 2 and 0 <= limits[0] <= limits[1] < float("inf")
            ):
                raise ValueError(f"{key} must be (low, high) with 0 <= low <= high; got {limits}")
        if self.series_description is not None:
            object.__setattr__(self, "_pattern", re.compile(self.series_description, re.IGNORECASE))

    @property
    def label(self) -> str:
        return self.name or self.task

    def mismatch(self, facts: SeriesFacts) -> str | None:
        """None when the rule matches, otherwise the first condition that failed."""
        if facts.modality.upper() != self.modality.upper():
            return f"modality {facts.modality or '(none)'} is not {self.modality}"
        if self.body_parts and facts.body_part_examined.upper() not in {
            b.upper() for b in self.body_parts
        }:
            return (
                f"body part {facts.body_part_examined or '(none)'} is not one of "
                f"{', '.join(self.body_parts)}"
            )
        if self._pattern is not None and not self._pattern.search(facts.series_description):
            return f"series description does not match /{self.series_description}/"
        image_type = {v.upper() for v in facts.image_type}
        missing = [v for v in self.image_type_includes if v.upper() not in image_type]
        if missing:
            return f"image type lacks {', '.join(missing)}"
        present = [v for v in self.image_type_excludes if v.upper() in image_type]
        if present:
            return f"image type is {', '.join(present)}"
        if facts.slices < self.min_slices:
            return f"{facts.slices} slices, fewer than {self.min_slices}"
        return self._sequence_mismatch(facts)

    def _sequence_mismatch(self, facts: SeriesFacts) -> str | None:
        """The first MR sequence condition that failed, or None."""
        if self.contrast is True and not facts.contrast_bolus_agent:
            return "no contrast agent"
        if self.contrast is False and facts.contrast_bolus_agent:
            return f"contrast agent {facts.contrast_bolus_agent}"
        sequence = {v.upper() for v in facts.scanning_sequence}
        lacking = [v for v in self.scanning_sequence_includes if v.upper() not in sequence]
        if lacking:
            return f"scanning sequence lacks {', '.join(lacking)}"
        return (
            _range_mismatch("echo time", facts.echo_time_ms, self.echo_time_ms)
            or _range_mismatch("repetition time", facts.repetition_time_ms, self.repetition_time_ms)
            or _range_mismatch("inversion time", facts.inversion_time_ms, self.inversion_time_ms)
        )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    task: str | None  # None: not processed
    rule: str | None
    reason: str
    role: str | None = None  # the channel of a task of several series that this one fills


#: ``[routing] study_wait_minutes``: how long a study waits for the series of missing roles.
DEFAULT_STUDY_WAIT_MINUTES = 10.0

# T1 post-contrast: "T1 POST GD", "T1+C", "T1 CE", "T1C", "MPRAGE POST", "T1W_3D_TFE GADO".
T1_POST_CONTRAST = r"(t1.*(post|gd|gado|\+ ?c\b|contrast|\bce\b|\bc\+))|(\bt1c\b)|(mprage.*post)"
FLAIR = r"flair"

DEFAULT_RULES: tuple[RoutingRule, ...] = (
    RoutingRule(
        task="liver_ct",
        modality="CT",
        min_slices=8,
        name="liver-ct",
        image_type_excludes=("LOCALIZER", "SECONDARY"),
    ),
    RoutingRule(
        task="glioma_mr",
        modality="MR",
        series_description=T1_POST_CONTRAST,
        min_slices=8,
        name="glioma-t1c",
    ),
    RoutingRule(
        task="glioma_mr", modality="MR", series_description=FLAIR, min_slices=8, name="glioma-flair"
    ),
)


def route(facts: SeriesFacts, rules: Sequence[RoutingRule] = DEFAULT_RULES) -> RouteDecision:
    reasons: list[str] = []
    for rule in rules:
        why = rule.mismatch(facts)
        if why is None:
            return RouteDecision(rule.task, rule.label, f"matched rule {rule.label}", rule.role)
        reasons.append(f"{rule.label}: {why}")
    if not rules:
        return RouteDecision(None, None, "no routing rules are configured")
    return RouteDecision(None, None, "no routing rule matched (" + "; ".join(reasons) + ")")
