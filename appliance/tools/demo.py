"""``make demo``: the appliance's main job end to end on embedded defaults, in one process.

1. Generate a CT and an MR phantom study with known truth.
2. Start a PACS (Orthanc if installed, otherwise a minimal built-in receiver) and the
   appliance with its shipped demo models.
3. The PACS pushes both studies; wait until the SEG and SR of each are stored at the PACS.
4. Print a table per study: task, model, Dice against the phantom truth, latency from the
   last image acknowledged to the SEG stored at the PACS, and the time of each stage.
5. Write preview PNGs of each mask over its images.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config import parse_config
from appliance.service import Service
from appliance.states import JobState
from appliance.store import JobRecord
from appliance.tools.demo_pacs import BuiltinPacs, DemoPacs, OrthancPacs, find_orthanc, free_port
from appliance.tools.phantom_studies import GeneratedCase, generate_cases

Echo = Callable[[str], None]

# Small enough for a 2-core CPU, large enough to show the anatomy.
_CT_MATRIX = (64, 128, 128)
_CT_SPACING = (3.0, 3.0, 3.0)
_MR_MATRIX = (48, 112, 112)
_MR_SPACING = (3.0, 2.0, 2.0)


@dataclass(frozen=True, slots=True)
class StudyResult:
    kind: str
    task: str
    model: str
    dice: dict[str, float]
    latency_s: float
    timings: dict[str, float]
    previews: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class DemoResult:
    pacs: str
    studies: tuple[StudyResult, ...]


def dice_per_label(pred: np.ndarray, truth: np.ndarray, names: dict[int, str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for index, name in names.items():
        p, t = pred == index, truth == index
        denom = int(p.sum()) + int(t.sum())
        out[name] = 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom
    return out


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.1)


def run_demo(
    workdir: Path | None = None,
    *,
    echo: Echo = print,
    use_orthanc: bool | None = None,
    timeout_s: float = 600.0,
) -> DemoResult:
    from dicom_bridge.phantom_series import load_truth
    from models.tasks import TASKS, TaskName

    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))

    cases: list[GeneratedCase] = []
    for kind, matrix, spacing in (
        ("ct_abdomen", _CT_MATRIX, _CT_SPACING),
        ("mr_t1c", _MR_MATRIX, _MR_SPACING),
    ):
        cases += generate_cases(
            kind, "default", 1, run_dir / "studies", seed=2026, matrix=matrix, spacing_mm=spacing
        )
    echo(
        f"1. generated phantom studies in {run_dir / 'studies'}: "
        + ", ".join(f"{c.kind.value} {'x'.join(map(str, c.shape))}" for c in cases)
    )

    app_port = free_port()
    orthanc = find_orthanc() if use_orthanc is not False else None
    if use_orthanc and orthanc is None:
        raise RuntimeError("demo: Orthanc was requested but is not installed")
    pacs: DemoPacs = OrthancPacs(orthanc, run_dir, app_port) if orthanc else BuiltinPacs(run_dir)
    echo(f"2. PACS: {pacs.name} ({pacs.ae_title} on 127.0.0.1:{pacs.dicom_port})")
    config = parse_config(
        {
            "dicom": {
                "ae_title": "SEGAPPLIANCE",
                "port": app_port,
                "bind": "127.0.0.1",
                "allowed_callers": [pacs.ae_title],
                "series_quiet_seconds": 2.0,
            },
            "storage": {"root": str(run_dir / "appliance")},
            "outbox": {"backoff_initial_seconds": 1.0, "poll_seconds": 0.2},
            "destinations": [
                {
                    "name": "pacs",
                    "ae_title": pacs.ae_title,
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                }
            ],
        }
    )
    service = Service(config)
    service.start()
    echo(
        f"   appliance SEGAPPLIANCE on 127.0.0.1:{app_port}; active models: "
        + ", ".join(
            f"{m.task} {m.version}" for m in service.store.list_models() if m.state == "active"
        )
    )
    studies: list[StudyResult] = []
    try:
        acked: dict[str, float] = {}
        for case in cases:
            files = sorted(case.series_dir.glob("*.dcm"))
            sent = pacs.push(files, app_port)
            acked[case.series_uid] = time.monotonic()
            if sent != len(files):
                raise RuntimeError(f"demo: the appliance took {sent}/{len(files)} instances")
        echo(f"3. the PACS pushed {len(cases)} studies; waiting for SEG and SR to come back")

        store = service.store
        for case in cases:

            def finished(uid: str = case.series_uid) -> bool:
                # total_s is recorded just after the job ends: wait for it too
                jobs = store.list_jobs(series_uid=uid, limit=1)
                return (
                    bool(jobs)
                    and jobs[0].state in (JobState.DONE, JobState.FAILED)
                    and "total_s" in jobs[0].timings
                )

            _wait(finished, timeout_s, f"segmentation of the {case.kind.value} study")
            job: JobRecord = store.list_jobs(series_uid=case.series_uid, limit=1)[0]
            if job.state is not JobState.DONE:
                raise RuntimeError(
                    f"demo: {case.kind.value} job failed: {job.reason}: {job.detail}"
                )
            seg_uid, sr_uid = job.outputs["seg_sop_uid"], job.outputs["sr_sop_uid"]

            def arrived(uids: tuple[str, str] = (seg_uid, sr_uid)) -> bool:
                return all(pacs.arrival(uid) is not None for uid in uids)

            _wait(arrived, 120, "SEG and SR arrival at the PACS")
            latency = float(pacs.arrival(seg_uid) or 0.0) - acked[case.series_uid]

            spec = TASKS[TaskName(job.task)]
            truth = load_truth(case.truth_path)
            with np.load(job.outputs["mask_path"]) as saved:
                mask = saved["mask"]
            dice = dice_per_label(mask, truth.labels, {lab.index: lab.name for lab in spec.labels})
            previews = _previews(case, Path(job.outputs["seg_path"]), run_dir / "previews")
            timings = {k: float(v) for k, v in job.timings.items() if isinstance(v, int | float)}
            studies.append(
                StudyResult(
                    case.kind.value,
                    job.task,
                    f"{job.model_name} {job.model_version}",
                    dice,
                    latency,
                    timings,
                    tuple(previews),
                )
            )
    finally:
        service.stop()
        pacs.stop()

    echo(
        "4. results (Dice against the phantom truth; latency = last image acknowledged "
        "-> SEG stored at the PACS)"
    )
    for study in studies:
        echo("")
        echo(f"   {study.kind}: task {study.task}, model {study.model}")
        for name, value in study.dice.items():
            echo(f"     Dice {name:<22} {value:6.3f}")
        echo(
            f"     latency                     {study.latency_s:6.1f} s "
            "(includes the series quiet time)"
        )
        for stage in ("volume_s", "inference_s", "seg_s", "sr_s", "save_s", "enqueue_s", "total_s"):
            if stage in study.timings:
                echo(f"     {stage[:-2]:<27} {study.timings[stage]:6.2f} s")
    echo("")
    echo(f"5. previews: {run_dir / 'previews'} ({sum(len(s.previews) for s in studies)} PNGs)")
    return DemoResult(pacs.name, tuple(studies))


def _previews(case: GeneratedCase, seg_path: Path, out: Path) -> list[Path]:
    from appliance.tools.preview import preview_series

    files = sorted(case.series_dir.glob("*.dcm"))
    written = preview_series(files, seg_path, out / case.kind.value, slices=3)
    return [w.path for w in written]
