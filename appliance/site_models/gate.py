"""The validation gate: a candidate model reaches the clinic only if it is no worse than
the active model on this site's own held-out cases.

:func:`run_gate` segments every held-out case with the candidate and with the active
model through the clinical inference path (:func:`models.inference.segment`, with
post-processing), scores both with :mod:`models.evaluation`, and decides with
:func:`decide`:

- **promoted** when, for every label of the task, the candidate's mean Dice is at least
  the active model's minus ``models.gate_margin`` (default 0.01, i.e. one Dice point).
  The candidate becomes VALIDATED, then ACTIVE (the previous model becomes RETIRED, so
  ``appliance models rollback`` can restore it);
- **rejected** when any label drops by more than the margin: the candidate becomes
  REJECTED and can never be activated;
- **undecided** when there are fewer than ``models.gate_min_cases`` held-out cases: the
  candidate stays a CANDIDATE (nothing is promoted on too little evidence);
- with no active model at all, a candidate is promoted (there is nothing to be worse
  than), and the report says so.

Every decision writes a JSON report to ``<storage.root>/gate/<task>/<version>-<time>.json``
and one log line (no patient data: cases are counted, never named).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from appliance.config import AppConfig
from appliance.errors import GateError
from appliance.site_models.registry import NetworkCache
from appliance.store import ModelRecord, Store
from appliance.store.audit import AuditEvent
from models.card_inference import segment_with_card
from models.evaluation import EvaluationSummary, evaluate_case, summarize
from models.lifecycle import ModelState
from models.model_card import ModelCard
from models.tasks import get_task

LOG = logging.getLogger(__name__)


class GateDecision(StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"
    UNDECIDED = "undecided"


@dataclass(frozen=True, slots=True)
class GateCase:
    """One held-out case in the boundary format: ``image`` (slice, row, column), label
    map with the task's indices, 4x4 index -> LPS affine. ``case_id`` is the store's id
    (never patient data)."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True, slots=True)
class LabelComparison:
    label: str
    candidate_dice: float
    active_dice: float | None
    delta: float | None  # candidate - active
    passed: bool


@dataclass(frozen=True, slots=True)
class GateReport:
    task: str
    candidate_version: str
    candidate_sha256: str
    active_version: str | None
    active_sha256: str | None
    cases: int
    margin: float
    min_cases: int
    labels: tuple[LabelComparison, ...]
    decision: GateDecision
    reason: str
    decided_at: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["decision"] = str(self.decision)
        out["labels"] = [asdict(c) for c in self.labels]
        return out

    def format_text(self) -> str:
        against = (
            f"against active {self.active_version}" if self.active_version else "(no active model)"
        )
        lines = [
            f"gate {self.task} {self.candidate_version} {against} on {self.cases} held-out "
            f"case(s), margin {self.margin:g}: {self.decision.upper()}",
            f"  {'label':<16} {'candidate':>9} {'active':>9} {'delta':>8}  ok",
        ]
        for c in self.labels:
            active = f"{c.active_dice:9.3f}" if c.active_dice is not None else f"{'-':>9}"
            delta = f"{c.delta:+8.3f}" if c.delta is not None else f"{'-':>8}"
            lines.append(
                f"  {c.label:<16} {c.candidate_dice:9.3f} {active} {delta}  "
                f"{'yes' if c.passed else 'NO'}"
            )
        lines.append(f"  {self.reason}")
        return "\n".join(lines)


def decide(
    candidate: Mapping[str, float],
    active: Mapping[str, float] | None,
    *,
    cases: int,
    margin: float,
    min_cases: int,
) -> tuple[GateDecision, tuple[LabelComparison, ...], str]:
    """The gate's rule on mean Dice per label (see the module docstring)."""
    comparisons = []
    for label, value in candidate.items():
        theirs = None if active is None else active.get(label)
        if theirs is None or not math.isfinite(theirs):
            comparisons.append(LabelComparison(label, value, None, None, True))
            continue
        delta = value - theirs
        passed = math.isfinite(value) and delta >= -margin
        comparisons.append(LabelComparison(label, value, theirs, delta, passed))
    result = tuple(comparisons)
    if cases < min_cases:
        return (
            GateDecision.UNDECIDED,
            result,
            f"only {cases} held-out case(s); the gate needs at least {min_cases}",
        )
    failed = [c for c in result if not c.passed]
    if failed:
        worst = min(failed, key=lambda c: c.delta if c.delta is not None else -math.inf)
        return (
            GateDecision.REJECTED,
            result,
            f"{len(failed)} label(s) worse than the active model by more than {margin:g}; "
            f"worst: {worst.label} {worst.delta:+.3f}",
        )
    if active is None:
        return GateDecision.PROMOTED, result, "no active model to compare with"
    return GateDecision.PROMOTED, result, f"no label worse than the active model by > {margin:g}"


@dataclass(frozen=True, slots=True)
class HeldOutCases:
    """The site's held-out cases of a task as gate input, and why any were left out
    (messages name case ids, never patient data)."""

    cases: tuple[GateCase, ...]
    skipped: tuple[str, ...]


def load_held_out(store: Store, task: str) -> HeldOutCases:
    """The ACTIVE held-out cases of ``task`` (:func:`appliance.cases.loading.load_case`); a case
    whose files no longer fit is skipped with its reason rather than stopping the gate."""
    from appliance.cases.loading import load_case
    from appliance.errors import CaseLoadError
    from appliance.states import CaseSplit, CaseState

    cases: list[GateCase] = []
    skipped: list[str] = []
    for record in store.list_cases(task=task, split=CaseSplit.HELD_OUT, states=[CaseState.ACTIVE]):
        try:
            loaded = load_case(store, record)
        except CaseLoadError as exc:
            skipped.append(str(exc))
            continue
        item = loaded.case
        cases.append(GateCase(str(loaded.case_id), item.image, item.labels, item.affine))
    return HeldOutCases(tuple(cases), tuple(skipped))


def evaluate_on_cases(
    network: torch.nn.Module,
    card: ModelCard,
    task: str,
    cases: Sequence[GateCase],
    device: torch.device,
) -> EvaluationSummary:
    """Segment and score every case with the clinical inference path (the same call as
    :mod:`appliance.flow.pipeline`: an imported bundle's own pipeline, post-processing
    included)."""
    spec = get_task(task)
    metrics = []
    for case in cases:
        mask = segment_with_card(network, card, spec, case.image, case.affine, device=device).mask
        metrics.append(evaluate_case(mask, case.labels, case.affine, spec))
    return summarize(metrics)


def _means(summary: EvaluationSummary) -> dict[str, float]:
    """Mean Dice per label over every held-out case: a lesion predicted in a case without
    one scores 0 there and counts against the candidate."""
    return {name: stat.mean for name, stat in summary.dice_all_cases.items()}


def run_gate(
    store: Store,
    config: AppConfig,
    task: str,
    version: str,
    cases: Sequence[GateCase],
    *,
    cache: NetworkCache | None = None,
    clock: Callable[[], float] = time.time,
) -> GateReport:
    """Evaluate candidate ``task/version`` against the active model on ``cases``, apply the
    decision to the store and write the report (see the module docstring)."""
    start = time.perf_counter()
    candidate = store.get_model(task, version)
    if candidate.state is not ModelState.CANDIDATE:
        raise GateError(
            f"model {task}/{version} is {candidate.state}; only a candidate goes through the gate"
        )
    active: ModelRecord | None = store.active_model(task)
    networks = cache if cache is not None else NetworkCache(config)
    device = networks.device()
    cand_means: dict[str, float] = {}
    active_means: dict[str, float] | None = None
    if cases:
        loaded = networks.get(candidate)
        cand_means = _means(
            evaluate_on_cases(loaded.network, loaded.bundle.card, task, cases, device)
        )
        if active is not None:
            active_means = _means(
                evaluate_on_cases(
                    networks.get(active).network,
                    networks.get(active).bundle.card,
                    task,
                    cases,
                    device,
                )
            )
    else:
        cand_means = {label.name: math.nan for label in get_task(task).labels}
    decision, comparisons, reason = decide(
        cand_means,
        active_means if active is not None else None,
        cases=len(cases),
        margin=config.models.gate_margin,
        min_cases=config.models.gate_min_cases,
    )
    if decision is GateDecision.PROMOTED:
        store.set_model_state(task, version, ModelState.VALIDATED)
        store.activate(task, version)
    elif decision is GateDecision.REJECTED:
        store.set_model_state(task, version, ModelState.REJECTED)
    report = GateReport(
        task=task,
        candidate_version=version,
        candidate_sha256=candidate.weights_sha256,
        active_version=active.version if active else None,
        active_sha256=active.weights_sha256 if active else None,
        cases=len(cases),
        margin=config.models.gate_margin,
        min_cases=config.models.gate_min_cases,
        labels=comparisons,
        decision=decision,
        reason=reason,
        decided_at=clock(),
        seconds=round(time.perf_counter() - start, 3),
    )
    path = write_report(config, report)
    store.bump("gate_decisions", decision.value)
    store.audit.record(
        AuditEvent.GATE_DECISION,
        task=task,
        version=version,
        model_sha256=candidate.weights_sha256,
        active_version=report.active_version,
        decision=decision.value,
        reason=reason,
        cases=len(cases),
    )
    LOG.info(
        "gate %s/%s vs %s on %d held-out case(s): %s (%s); report %s",
        task,
        version,
        report.active_version or "none",
        len(cases),
        decision,
        reason,
        path.name,
    )
    return report


def reports_dir(config: AppConfig, task: str) -> Path:
    return config.storage.root / "gate" / task


def write_report(config: AppConfig, report: GateReport) -> Path:
    folder = reports_dir(config, report.task)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(report.decided_at))
    path = folder / f"{report.candidate_version}-{stamp}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(report.to_dict()), indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def _finite(value: object) -> object:
    """``value`` with non-finite floats as ``None`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def latest_reports(config: AppConfig, task: str) -> list[dict[str, object]]:
    """Gate reports of ``task``, newest first."""
    folder = reports_dir(config, task)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out
