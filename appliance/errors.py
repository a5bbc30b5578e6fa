"""The one exception base of the ``appliance`` package and its subclasses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.states import Refusal


class ApplianceError(Exception):
    """Base of every error raised by ``appliance``."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    key: str  # dotted path, e.g. "dicom.port" or "destinations[0].host"
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(ApplianceError):
    """The configuration is invalid; ``issues`` names every bad key and what is allowed."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "config") -> None:
        self.issues = tuple(issues)
        self.source = source
        lines = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"{source} is invalid:\n{lines}")


class StoreError(ApplianceError):
    """The SQLite store failed or holds something unexpected."""


class InstanceConflictError(StoreError):
    """A SOP Instance UID already recorded arrived with other bytes, or under another study
    or series; the recorded one stands. ``reason`` is ``sop_instance_conflict``."""

    reason = "sop_instance_conflict"


class NotFoundError(ApplianceError):
    """A named thing (destination, outbox item, series) does not exist."""


class CaseRefused(ApplianceError):
    """An annotation was refused; ``reason`` is a :class:`Refusal`, ``detail`` explains."""

    def __init__(self, reason: Refusal, detail: str, *, source_series_uid: str | None = None):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.source_series_uid = source_series_uid


class AuditError(ApplianceError):
    """The audit file cannot be read, or a ``--since`` value is not understood."""


class CaseLoadError(ApplianceError):
    """A recorded case can no longer be loaded (its files or its source series changed)."""


class ModelImportError(ApplianceError):
    """A folder could not be imported as a model."""


class ModelLoadError(ApplianceError):
    """A registered model's weights do not load into its network, or the network does not run."""


class GateError(ApplianceError):
    """The gate could not run (unknown model, wrong state, no cases)."""


class FederationError(ApplianceError):
    """A federated run could not be configured, started, or completed."""


class HandoffError(FederationError):
    """A finished run's weights cannot become a candidate at this site."""


class RealDataError(ApplianceError):
    """A real case cannot be loaded, or its image and labels do not share a grid."""


class RealEvaluationError(ApplianceError):
    """The evaluation cannot run (no model for a task, unknown dataset, no data root)."""


class SegmentError(ApplianceError):
    """``appliance segment`` cannot segment its input (a missing or unreadable path, a
    folder of mixed series, a NIfTI of the wrong shape, no model); nothing was written."""
