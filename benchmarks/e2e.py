"""End-to-end latency: last CT instance acknowledged -> DICOM SEG acknowledged by the PACS.

Run from the repository root::

    .venv/bin/python -m benchmarks.e2e [--repeats 1] [--device auto|cpu|cuda]

What one run does:

1. Generates an abdominal CT phantom (``models.phantoms``, liver and tumour) on a
   200 x 512 x 512 grid, spacing 1.5 x 0.78 x 0.78 mm, once. Each repeat writes it as a
   fresh series (new UIDs) with ``dicom_bridge.phantom_series.write_phantom_series``.
2. Starts a receiving PACS (dcmtk ``storescp``, AE ``BENCHPACS``, ``TCP_NODELAY=1``,
   writing to a temporary folder) and a real ``appliance serve`` with a temporary config:
   the PACS as its only destination, ``BENCHSCU`` as its only allowed caller,
   ``series_quiet_seconds`` (default 1.0) and ``[outbox] poll_seconds`` (default 1.0, the
   product default), ``[models] device`` from ``--device``.
3. Model: the shipped ``liver_ct`` bundle (``models/bundles/liver_ct/<version>``), which the
   appliance registers and activates on its first start. When none is shipped, an
   UNTRAINED network of the default architecture is written with ``ModelRegistry.add`` to
   a staging folder and registered with ``appliance models import`` + ``appliance models
   activate liver_ct <version> --force`` before the start (timings do not depend on the
   weights; the mask, and so the SEG's frame count, does).
4. Per repeat: pushes the series with ``storescu`` over one association
   (``TCP_NODELAY=1``) and takes ``storescu``'s exit, after 200 "Received Store Response
   (Success)", as "last instance acknowledged". It then polls the PACS folder for a new
   file whose SOP Class is Segmentation Storage; the file's mtime (storescp writes the
   file, then sends the C-STORE response) is "SEG acknowledged by the PACS".
5. Prints the latency and where it went: the quiet wait (scheduler + worker pick-up),
   the job's per-stage timings (``appliance jobs list --json``: volume, model,
   inference and its sub-stages, seg, sr, save, enqueue) and the outbox hand-off + send.
6. SEG writing against its raw floor, on the produced mask of the last repeat and (for
   realistic anatomy) on the phantom's truth labels: ``write_seg`` (BINARY, empty frames
   omitted; given the volume's ``source_headers``, as the pipeline calls it) +
   ``save_as``, against ``np.packbits`` of the same non-empty frames written to a file;
   median of ``--seg-repeats`` runs, with the ratio and file sizes.
7. With ``--json FILE``, writes the medians and ratios there (keys in
   ``benchmarks/README.md``).

Everything it starts is stopped by PID; everything it writes goes to one temporary
folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ingest import (
    Child,
    Push,
    free_port,
    load_average,
    nodelay_env,
    program,
    push,
    settle,
)

APPLIANCE_AE = "SEGAPPLIANCE"
PACS_AE = "BENCHPACS"
SCU_AE = "BENCHSCU"
TASK = "liver_ct"
UNTRAINED_VERSION = "0.0.1-untrained"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Spacing (slice, row, column) in mm of the benchmark CT: a 390 mm field of view.
SPACING_MM = (1.5, 0.78, 0.78)


# --- the CT ----------------------------------------------------------------------------------


@dataclass
class Phantom:
    image: np.ndarray  # int16 HU, (slice, row, column), canonical slice order
    labels: np.ndarray  # uint8 truth on the same grid
    affine: np.ndarray
    series_description: str
    body_part: str


def make_phantom(slices: int) -> Phantom:
    from dicom_bridge.phantom_series import canonical_slice_order
    from models.phantoms import CT_DEFAULT, PhantomKind, generate_phantom

    profile = replace(
        CT_DEFAULT, name="bench_e2e", matrix=(slices, 512, 512), spacing_mm=SPACING_MM
    )
    ph = generate_phantom(PhantomKind.CT_ABDOMEN, profile, 0)
    image, affine = canonical_slice_order(ph.image, ph.affine_lps)
    labels, _ = canonical_slice_order(ph.labels, ph.affine_lps)
    return Phantom(
        image,
        np.ascontiguousarray(labels, dtype=np.uint8),
        affine,
        ph.series_description,
        ph.body_part,
    )


def write_ct(directory: Path, phantom: Phantom) -> tuple[list[Path], str]:
    """A fresh series (new study/series UIDs) of ``phantom``; the files and the series UID."""
    from dicom_bridge.phantom_series import write_phantom_series
    from dicom_bridge.synthetic import SeriesIdentity

    identity = SeriesIdentity(
        patient_name="BENCH^E2E",
        patient_id="BENCH-E2E",
        series_description=phantom.series_description,
        body_part=phantom.body_part,
    )
    files = write_phantom_series(
        directory, phantom.image, phantom.affine, modality="CT", identity=identity
    )
    return files, identity.series_uid


# --- the model -------------------------------------------------------------------------------


def shipped_versions() -> list[str]:
    from appliance.config import shipped_bundles_dir
    from models.registry import ModelRegistry

    root = shipped_bundles_dir()
    if not (root / TASK).is_dir():
        return []
    return [b.version for b in ModelRegistry(root).list(TASK)]


def stage_untrained(staging: Path) -> Path:
    """An untrained default-architecture liver_ct bundle in ``staging``; its folder."""
    import torch

    from models.model_card import labels_for_task, preprocessing_for_task
    from models.networks import DEFAULT_NETWORK, build_network, network_architecture
    from models.registry import ModelRegistry
    from models.tasks import get_task

    spec = get_task(TASK)
    torch.manual_seed(0)
    network = build_network(spec, DEFAULT_NETWORK)
    bundle = ModelRegistry(staging).add(
        TASK,
        UNTRAINED_VERSION,
        network.state_dict(),
        name="liver_ct-untrained-benchmark",
        labels=labels_for_task(spec),
        architecture=network_architecture(spec, DEFAULT_NETWORK),
        preprocessing=preprocessing_for_task(spec),
        intended_use="Benchmark only: untrained weights (random initialisation).",
        training_data="none (untrained)",
    )
    return bundle.path


def cli(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "appliance", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"appliance {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


# --- config and processes --------------------------------------------------------------------


def write_config(
    path: Path, *, port: int, root: Path, pacs_port: int, quiet: float, poll: float, device: str
) -> Path:
    path.write_text(
        "\n".join(
            [
                "[dicom]",
                f'ae_title = "{APPLIANCE_AE}"',
                'bind = "127.0.0.1"',
                f"port = {port}",
                f'allowed_callers = ["{SCU_AE}"]',
                f"series_quiet_seconds = {quiet}",
                "[storage]",
                f"root = {json.dumps(str(root))}",
                "[outbox]",
                f"poll_seconds = {poll}",
                "[models]",
                f'device = "{device}"',
                "[logging]",
                'level = "INFO"',
                "[[destinations]]",
                'name = "benchpacs"',
                f'ae_title = "{PACS_AE}"',
                'host = "127.0.0.1"',
                f"port = {pacs_port}",
                "",
            ]
        )
    )
    return path


@dataclass(frozen=True)
class Arrival:
    path: Path
    sop_uid: str
    mtime: float  # when storescp finished writing it (just before its C-STORE response)
    seen_at: float  # when this poll found it


def wait_for_seg(pacs_dir: Path, seen: set[str], timeout: float, appliance: Child) -> Arrival:
    """The first new Segmentation Storage file in ``pacs_dir``; every new file goes in
    ``seen`` once it could be read."""
    from pydicom import dcmread

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if appliance.proc.poll() is not None:
            raise RuntimeError(
                f"appliance exited with {appliance.proc.returncode}:\n" + appliance.tail()
            )
        for entry in os.scandir(pacs_dir):
            if entry.name in seen or not entry.is_file():
                continue
            try:
                ds = dcmread(entry.path, stop_before_pixels=True)
                sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
                mtime = entry.stat().st_mtime
            except Exception:  # still being written: try again on the next pass
                continue
            seen.add(entry.name)
            if sop_class == SEG_STORAGE:
                return Arrival(Path(entry.path), sop_uid, mtime, time.time())
        time.sleep(0.01)
    raise TimeoutError(
        f"no SEG reached the PACS within {timeout:.0f} s; appliance log tail:\n" + appliance.tail()
    )


# --- one repeat ------------------------------------------------------------------------------


@dataclass
class Repeat:
    push: Push
    series_uid: str
    files: list[Path]
    seg: Arrival
    job: dict[str, Any] = field(default_factory=dict)  # appliance jobs list --json entry
    started_at: float = 0.0  # job started_at (store clock, time.time())
    finished_at: float = 0.0
    last_instance_at: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def latency(self) -> float:
        return self.seg.mtime - self.push.acked_at


def fill_from_store(repeats: Sequence[Repeat], config: Path, database: Path) -> None:
    from appliance.store import Store

    jobs = json.loads(cli(config, "jobs", "list", "--json"))
    by_series = {j["series_uid"]: j for j in jobs}
    store = Store(database)
    try:
        for rep in repeats:
            rep.job = by_series.get(rep.series_uid, {})
            records = store.list_jobs(series_uid=rep.series_uid)
            if not records:
                raise RuntimeError(f"no job for series {rep.series_uid}")
            record = records[0]
            rep.started_at = record.started_at or 0.0
            rep.finished_at = record.finished_at or 0.0
            rep.outputs = dict(record.outputs)
            rep.last_instance_at = store.get_series(rep.series_uid).last_instance_at
            if record.outputs.get("seg_sop_uid") != rep.seg.sop_uid:
                raise RuntimeError(
                    f"the SEG at the PACS ({rep.seg.sop_uid}) is not the job's "
                    f"({record.outputs.get('seg_sop_uid')})"
                )
    finally:
        store.close()


# --- SEG writing against the packbits floor --------------------------------------------------


@dataclass
class SegTiming:
    what: str
    seg_s: list[float]
    floor_s: list[float]
    seg_bytes: int
    floor_bytes: int
    seg_frames: int
    floor_frames: int


def time_seg(
    what: str,
    files: Sequence[Path],
    slice_uids: Sequence[str],
    mask: np.ndarray,
    algorithm: Any,
    workdir: Path,
    repeats: int,
    source_headers: Sequence[Any] | None = None,
) -> SegTiming:
    from appliance.flow.pipeline import segment_descriptions
    from dicom_bridge.seg import SegOptions, write_seg
    from models.tasks import get_task

    segments = segment_descriptions(get_task(TASK))
    options = SegOptions(segmentation_type="BINARY", omit_empty_frames=True)
    seg_path, floor_path = workdir / f"{what}-seg.dcm", workdir / f"{what}-floor.bin"
    seg_s: list[float] = []
    floor_s: list[float] = []
    frames = 0
    seg_frames = 0
    for _ in range(repeats):
        start = time.perf_counter()
        ds = write_seg(
            files,
            mask,
            segments,
            algorithm,
            options,
            slice_uids=slice_uids,
            source_headers=source_headers,
        )
        ds.save_as(seg_path, enforce_file_format=True)
        seg_s.append(time.perf_counter() - start)
        seg_frames = int(ds.NumberOfFrames)
        del ds

        start = time.perf_counter()
        planes = []
        for segment in segments:
            binary = mask == segment.label_index
            planes.append(binary[binary.any(axis=(1, 2))])
        stack = np.concatenate(planes)
        packed = np.packbits(stack, bitorder="little")  # DICOM packs bits LSB first
        with open(floor_path, "wb") as handle:
            handle.write(packed.tobytes())
        floor_s.append(time.perf_counter() - start)
        frames = int(stack.shape[0])
    return SegTiming(
        what, seg_s, floor_s, seg_path.stat().st_size, floor_path.stat().st_size, seg_frames, frames
    )


def run_seg_comparison(
    rep: Repeat, phantom: Phantom, workdir: Path, repeats: int
) -> list[SegTiming]:
    from dicom_bridge.seg import AlgorithmInfo
    from dicom_bridge.volume import load_series_volume

    workdir.mkdir()
    volume = load_series_volume(rep.files)
    mask = np.load(rep.outputs["mask_path"])["mask"]
    if mask.shape != volume.array.shape or phantom.labels.shape != volume.array.shape:
        raise RuntimeError(
            f"mask {mask.shape} / truth {phantom.labels.shape} do not match the "
            f"volume {volume.array.shape}"
        )
    model = rep.job.get("model") or {}
    algorithm = AlgorithmInfo(
        name=str(model.get("name") or TASK),
        version=str(model.get("version") or "0.0.0"),
        weights_sha256=str(model.get("weights_sha256") or "0" * 64),
    )
    return [
        time_seg(
            what,
            rep.files,
            volume.sop_instance_uids,
            labels,
            algorithm,
            workdir,
            repeats,
            source_headers=volume.source_headers,  # as the pipeline calls it
        )
        for what, labels in (("produced mask", mask), ("phantom truth", phantom.labels))
    ]


# --- report ----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    return f"{value:8.3f} s" if isinstance(value, int | float) else f"{'-':>8}  "


def print_repeat(index: int, total: int, rep: Repeat, quiet: float, poll: float) -> None:
    timings = rep.job.get("timings") or {}
    volume_s = float(timings.get("volume_s", 0.0))
    total_s = float(timings.get("total_s", 0.0))
    pipeline_start = rep.started_at - volume_s  # the job row is written after the volume
    wait = pipeline_start - rep.push.acked_at
    handoff = rep.seg.mtime - (pipeline_start + total_s)
    n = len(rep.files)
    print(
        f"\nrepeat {index}/{total}: series ...{rep.series_uid[-12:]}, job {rep.job.get('id')} "
        f"({rep.job.get('state')}, model {(rep.job.get('model') or {}).get('version')}, "
        f"device {timings.get('device')})"
    )
    print(
        f"  push: {n} instances in {rep.push.seconds:.3f} s ({n / rep.push.seconds:.0f} "
        "images/s), storescu start..exit"
    )
    print(
        f"  LATENCY last instance acknowledged -> SEG acknowledged by the PACS: {rep.latency:.3f} s"
    )
    print(
        f"    quiet wait + scheduler tick + worker pick-up {fmt(wait)}   "
        f"(series_quiet_seconds = {quiet}; scheduler every {min(1.0, max(0.05, quiet / 4))} s;"
        " worker idle poll 0.2 s)"
    )
    print(f"    pipeline (job total_s)                       {fmt(total_s)}")
    for key in ("volume_s", "model_s", "inference_s"):
        print(f"      {key.removesuffix('_s'):<42} {fmt(timings.get(key))}")
    for key, value in (timings.get("inference") or {}).items():
        if key != "total":
            print(f"        {key:<40} {fmt(value)}")
    for key in ("seg_s", "sr_s", "save_s", "enqueue_s"):
        print(f"      {key.removesuffix('_s'):<42} {fmt(timings.get(key))}")
    named = sum(
        float(timings.get(k, 0.0))
        for k in ("volume_s", "model_s", "inference_s", "seg_s", "sr_s", "save_s", "enqueue_s")
    )
    print(f"      {'rest (routing, store transactions)':<42} {fmt(total_s - named)}")
    print(
        f"    outbox hand-off + SEG association        {fmt(handoff)}   "
        f"(outbox poll_seconds = {poll})"
    )
    before = rep.push.acked_at - rep.last_instance_at
    print(
        f"  (last instance received by the appliance {before:.3f} s before storescu exited; "
        "SEG found by polling "
        f"{rep.seg.seen_at - rep.seg.mtime:.3f} s after its mtime)"
    )


def print_seg(results: Sequence[SegTiming], repeats: int) -> None:
    print(
        f"\nSEG writing against the raw floor, same run, median of {repeats} [min - max], no fsync:"
    )
    print(
        f"  {'mask':<16}{'frames':>8}{'write_seg + save_as':>26}{'packbits + write':>26}"
        f"{'ratio':>8}{'SEG size':>12}{'floor size':>12}"
    )
    for r in results:
        seg, floor = statistics.median(r.seg_s), statistics.median(r.floor_s)
        frames = f"{r.seg_frames}" + (
            "" if r.seg_frames == r.floor_frames else f"/{r.floor_frames}"
        )
        print(
            f"  {r.what:<16}{frames:>8}"
            f"{f'{seg:.3f} s [{min(r.seg_s):.3f}-{max(r.seg_s):.3f}]':>26}"
            f"{f'{floor:.4f} s [{min(r.floor_s):.4f}-{max(r.floor_s):.4f}]':>26}"
            f"{seg / floor:>8.1f}{r.seg_bytes / 1e6:>10.2f}MB{r.floor_bytes / 1e6:>10.2f}MB"
        )


_STAGES = ("volume_s", "model_s", "inference_s", "seg_s", "sr_s", "save_s", "enqueue_s")


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def json_result(
    args: argparse.Namespace,
    device_text: str,
    model_text: str,
    repeats: Sequence[Repeat],
    seg_results: Sequence[SegTiming],
) -> dict[str, Any]:
    """The ``--json`` document (keys in ``benchmarks/README.md``)."""
    per_repeat: list[dict[str, Any]] = []
    for rep in repeats:
        timings = rep.job.get("timings") or {}
        per_repeat.append(
            {
                "latency_s": rep.latency,
                "push_s": rep.push.seconds,
                "pipeline_s": float(timings.get("total_s", 0.0)),
                "stages_s": {k: float(timings[k]) for k in _STAGES if k in timings},
                "inference_s": {
                    k: float(v)
                    for k, v in (timings.get("inference") or {}).items()
                    if isinstance(v, int | float)
                },
                "device": timings.get("device"),
            }
        )
    stages = {
        key: statistics.median(r["stages_s"][key] for r in per_repeat)
        for key in _STAGES
        if all(key in r["stages_s"] for r in per_repeat)
    }
    seg = [
        {
            "mask": r.what,
            "seg_frames": r.seg_frames,
            "floor_frames": r.floor_frames,
            "seg_s": _spread(r.seg_s),
            "floor_s": _spread(r.floor_s),
            "ratio": statistics.median(r.seg_s) / statistics.median(r.floor_s),
            "seg_bytes": r.seg_bytes,
            "floor_bytes": r.floor_bytes,
        }
        for r in seg_results
    ]
    return {
        "benchmark": "e2e",
        "slices": args.slices,
        "repeats": len(repeats),
        "device": device_text,
        "model": model_text,
        "quiet_seconds": args.quiet_seconds,
        "outbox_poll_seconds": args.outbox_poll,
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "latency_s": _spread([r["latency_s"] for r in per_repeat]),
        "pipeline_s": _spread([r["pipeline_s"] for r in per_repeat]),
        "stages_median_s": stages,
        "per_repeat": per_repeat,
        "seg": seg,
    }


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=1, help="series pushed, one at a time")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="appliance [models] device",
    )
    parser.add_argument(
        "--model",
        choices=("auto", "shipped", "untrained"),
        default="auto",
        help="auto: the shipped liver_ct bundle when there is one, else an untrained network",
    )
    parser.add_argument("--slices", type=int, default=200, help="slices of the 512x512 CT")
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=1.0,
        help="appliance series_quiet_seconds (part of the latency)",
    )
    parser.add_argument(
        "--outbox-poll",
        type=float,
        default=1.0,
        help="appliance [outbox] poll_seconds (1.0 is the product default)",
    )
    parser.add_argument(
        "--seg-repeats",
        type=int,
        default=5,
        help="runs of write_seg and of the packbits floor per mask",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for each SEG at the PACS"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the medians and ratios to this file (keys: benchmarks/README.md)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seg_repeats < 1 or args.slices < 8:
        parser.error("--repeats and --seg-repeats must be at least 1, --slices at least 8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    program("storescu")
    program("storescp")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if args.device == "cpu" or gpu is None:
        device_text = f"CPU ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)"
    else:
        device_text = f"CUDA: {gpu}"
    print(
        f"e2e benchmark: device {args.device} -> {device_text}; load average {load_average()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        phantom = make_phantom(args.slices)
        print(
            f"phantom CT {'x'.join(map(str, phantom.image.shape))}, spacing "
            f"{SPACING_MM} mm, generated in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        root = base / "root"
        pacs_dir = base / "pacs"
        pacs_dir.mkdir()
        port, pacs_port = free_port(), free_port()
        config = write_config(
            base / "appliance.toml",
            port=port,
            root=root,
            pacs_port=pacs_port,
            quiet=args.quiet_seconds,
            poll=args.outbox_poll,
            device=args.device,
        )
        shipped = [] if args.model == "untrained" else shipped_versions()
        if args.model == "shipped" and not shipped:
            raise SystemExit(f"--model shipped: no models/bundles/{TASK} bundle")
        if shipped:
            model_text = (
                f"shipped {TASK} bundle (models/bundles/{TASK}, versions "
                f"{', '.join(shipped)}; the appliance activates the highest on "
                "first start)"
            )
        else:
            staged = stage_untrained(base / "staging")
            cli(config, "models", "import", str(staged), "--task", TASK)
            cli(config, "models", "activate", TASK, UNTRAINED_VERSION, "--force")
            model_text = (
                f"no shipped {TASK} bundle: UNTRAINED default-architecture network "
                f"registered as {TASK}/{UNTRAINED_VERSION} (models import + activate "
                "--force); timings do not depend on the weights, the mask does"
            )
        print(f"model: {model_text}", flush=True)

        pacs = Child(
            [
                program("storescp"),
                "-v",
                "-aet",
                PACS_AE,
                "-pdu",
                "131072",
                "-od",
                str(pacs_dir),
                str(pacs_port),
            ],
            base / "storescp.log",
            env=nodelay_env(),
        )
        appliance: Child | None = None
        repeats: list[Repeat] = []
        try:
            pacs.wait_port(pacs_port)
            appliance = Child(
                [sys.executable, "-m", "appliance", "serve", "--config", str(config)],
                base / "appliance.log",
            )
            appliance.wait_port(port)
            seen: set[str] = set()
            for index in range(args.repeats):
                t0 = time.perf_counter()
                files, series_uid = write_ct(base / f"series-{index}", phantom)
                size = sum(p.stat().st_size for p in files)
                print(
                    f"repeat {index + 1}: wrote {len(files)} files, {size / 1e6:.1f} MB, in "
                    f"{time.perf_counter() - t0:.1f} s; pushing",
                    flush=True,
                )
                settle()
                result = push(port, APPLIANCE_AE, files, calling_ae=SCU_AE)
                if result.returncode != 0 or result.acknowledged != len(files):
                    raise RuntimeError(
                        f"push failed: storescu rc {result.returncode}, "
                        f"{result.acknowledged} of {len(files)} acknowledged\n"
                        + result.output[-2000:]
                    )
                arrival = wait_for_seg(pacs_dir, seen, args.timeout, appliance)
                print(
                    f"  SEG at the PACS {arrival.mtime - result.acked_at:.3f} s after the "
                    "last acknowledgement",
                    flush=True,
                )
                repeats.append(Repeat(result, series_uid, files, arrival))
            time.sleep(max(2.0, 2 * args.outbox_poll))  # let the SR go out too
        finally:
            if appliance is not None:
                appliance.stop()
            pacs.stop()
        fill_from_store(repeats, config, root / "appliance.sqlite3")

        print(
            f"\n=== End to end: {args.slices} x 512 x 512 CT, one storescu association "
            f"(TCP_NODELAY=1) -> appliance serve -> storescp ({PACS_AE}) ==="
        )
        print(f"model: {model_text}")
        print(f"device: {device_text}")
        for index, rep in enumerate(repeats, 1):
            print_repeat(index, len(repeats), rep, args.quiet_seconds, args.outbox_poll)
        if len(repeats) > 1:
            latencies = [r.latency for r in repeats]
            print(
                f"\nlatency over {len(repeats)} repeats: median "
                f"{statistics.median(latencies):.3f} s [{min(latencies):.3f} - "
                f"{max(latencies):.3f}] (repeat 1 includes loading the model)"
            )
        seg_results = run_seg_comparison(repeats[-1], phantom, base / "segcheck", args.seg_repeats)
        print_seg(seg_results, args.seg_repeats)
        print(f"load average at the end: {load_average()}")
        if args.json is not None:
            document = json_result(args, device_text, model_text, repeats, seg_results)
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        shutil.rmtree(base / "pacs", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
