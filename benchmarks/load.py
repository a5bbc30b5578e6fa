"""Load benchmark: N concurrent dcmtk ``storescu`` associations for M minutes into a real
``appliance serve`` (fsync on, shipped models) while segmentation jobs run.

Run from the repository root::

    .venv/bin/python -m benchmarks.load [--senders 8] [--minutes 10] [--json FILE]

Each sender loops: one series per association, new UIDs every time (pre-generated before
the clock starts). Every ``--job-every``-th series of a sender is an axial CT that the
routing sends to the liver model (a job: volume, inference, SEG, SR); the others are CT
localizers, which the routing skips, so ingest runs at full speed while jobs run at a
bounded rate. After the time is up the service drains its queue (bounded by
``--drain-minutes``).

Reported: images/s over the run, as a ratio against the same senders pushing into dcmtk
``storescp`` for ``--reference-seconds`` in the same job; job latency percentiles (last
instance received -> job finished, including the series' quiet period); the appliance's
peak RSS and its RSS growth from the end of the warm-up (the first fifth of the run) to
the end. Checked: every acknowledged instance is in the store and the spool, no C-STORE
was refused, every series reached a final state and every job finished ``done``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ingest import (
    APPLIANCE_AE,
    Child,
    free_port,
    load_average,
    nodelay_env,
    program,
    push,
    write_appliance_config,
)


@dataclass
class SenderStats:
    pushes: int = 0
    sent: int = 0
    acknowledged: int = 0
    failures: list[str] = field(default_factory=list)
    job_series: list[str] = field(default_factory=list)


def _fresh_uid(template: str, n: int) -> str:
    """A UID of the same length as ``template``: its last component replaced by ``n``."""
    head, _, last = template.rpartition(".")
    width = len(last)
    if width < 2 or n >= 10 ** (width - 1):
        raise ValueError(f"cannot derive {n} from {template}")
    return f"{head}.9{n:0{width - 1}d}"


def generate_pool(
    directory: Path, count: int, slices: int, size: int, job_every: int, sender: int
) -> list[tuple[list[Path], str, bool]]:
    """``count`` series of ``slices`` images: (files, series UID, routed to a job).

    Two template series are written with pydicom (an axial CT that the routing sends to
    the liver model, and a CT localizer that it skips); every series of the pool is a copy
    with new Study, Series and SOP Instance UIDs of the same length, swapped in the bytes.
    """
    from pydicom import dcmread

    from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

    geometry = SeriesGeometry(slices=slices, rows=size, columns=size, pixel_spacing=(3.0, 3.0))
    templates = {}
    for routed in (True, False):
        identity = SeriesIdentity(series_description="bench load")
        files = write_series(directory / f"template-{routed}", geometry, identity=identity)
        datasets = []
        for path in files:
            ds = dcmread(path)
            if not routed:  # received and stored, skipped by the routing
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
                ds.save_as(path)
            datasets.append((path.read_bytes(), str(ds.SOPInstanceUID)))
        templates[routed] = (identity.study_uid, identity.series_uid, datasets)
    pool = []
    n = 0
    for i in range(count):
        routed = i % job_every == 0
        study, series, datasets = templates[routed]
        n += 1
        new_study = _fresh_uid(study, sender * 10**6 + n)
        new_series = _fresh_uid(series, sender * 10**6 + n)
        out = directory / f"s{i:05d}"
        out.mkdir()
        paths = []
        for j, (data, sop) in enumerate(datasets):
            n += 1
            new_sop = _fresh_uid(sop, sender * 10**6 + n)
            body = data.replace(study.encode(), new_study.encode())
            body = body.replace(series.encode(), new_series.encode())
            body = body.replace(sop.encode(), new_sop.encode())
            path = out / f"{j:04d}.dcm"
            path.write_bytes(body)
            paths.append(path)
        pool.append((paths, new_series, routed))
    return pool


def sender(
    index: int,
    port: int,
    ae_title: str,
    pool: list[tuple[list[Path], str, bool]],
    deadline: float,
    stats: SenderStats,
) -> None:
    for files, series_uid, routed in pool:
        if time.monotonic() >= deadline:
            return
        result = push(port, ae_title, files, calling_ae=f"LOAD{index}")
        stats.pushes += 1
        stats.sent += len(files)
        stats.acknowledged += result.acknowledged
        if routed:
            stats.job_series.append(series_uid)
        if result.returncode != 0 or result.acknowledged != len(files):
            stats.failures.append(
                f"{result.acknowledged}/{len(files)} acknowledged, rc {result.returncode}: "
                f"{result.output[-300:]}"
            )
    stats.failures.append("ran out of pre-generated series before the time was up")


def run_senders(
    port: int, ae_title: str, pools: list[list[Any]], seconds: float
) -> tuple[list[SenderStats], float]:
    stats = [SenderStats() for _ in pools]
    deadline = time.monotonic() + seconds
    threads = [
        threading.Thread(target=sender, args=(i, port, ae_title, pool, deadline, stats[i]))
        for i, pool in enumerate(pools)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats, time.perf_counter() - start


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def reference(workdir: Path, pools: list[list[Any]], seconds: float) -> float:
    """The same senders into dcmtk storescp; images/s."""
    out = workdir / "storescp-in"
    out.mkdir(parents=True)
    port = free_port()
    child = Child(
        [program("storescp"), "-aet", "STORESCP", "-pdu", "131072", "-od", str(out), str(port)],
        workdir / "storescp.log",
        env=nodelay_env(),
    )
    try:
        child.wait_port(port)
        stats, elapsed = run_senders(port, "STORESCP", pools, seconds)
    finally:
        child.stop()
    return sum(s.acknowledged for s in stats) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=64, help="rows = columns")
    parser.add_argument("--job-every", type=int, default=12)
    parser.add_argument("--pool", type=int, default=0, help="series per sender (default: enough)")
    parser.add_argument("--reference-seconds", type=float, default=60.0)
    parser.add_argument("--drain-minutes", type=float, default=15.0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="appliance-load-"))
    seconds = args.minutes * 60
    per_sender = args.pool or int(seconds / 0.5) + 20  # a push takes well over 0.5 s
    print(f"work dir {workdir}; generating {args.senders} x {per_sender} series ...", flush=True)
    t0 = time.perf_counter()
    pools = [
        generate_pool(
            workdir / "pool" / f"s{i}", per_sender, args.slices, args.size, args.job_every, i
        )
        for i in range(args.senders)
    ]
    print(f"generated in {time.perf_counter() - t0:.0f} s", flush=True)

    ref_pools = [pool[-10:] for pool in pools]  # not used by the appliance run
    run_pools = [pool[:-10] for pool in pools]
    ref_rate = reference(workdir / "reference", ref_pools, args.reference_seconds)
    print(f"reference: dcmtk storescp {ref_rate:.0f} images/s", flush=True)

    from appliance.store import Store

    root = workdir / "appliance"
    port = free_port()
    config = write_appliance_config(
        workdir / "appliance.toml", port=port, root=root, fsync=True, quiet=2.0
    )
    config.write_text(config.read_text() + "[retention]\ninterval_hours = 0\n")
    child = Child(
        [sys.executable, "-m", "appliance", "serve", "--config", str(config)],
        workdir / "appliance.log",
    )
    samples: list[tuple[float, int]] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not stop_sampling.wait(2.0):
            try:
                samples.append((time.monotonic() - start, rss_kib(child.proc.pid)))
            except OSError:
                return

    try:
        child.wait_port(port)
        time.sleep(5)  # models load
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"pushing: {args.senders} senders for {args.minutes:g} min ...", flush=True)
        stats, elapsed = run_senders(port, APPLIANCE_AE, run_pools, seconds)
        acknowledged = sum(s.acknowledged for s in stats)
        rate = acknowledged / elapsed
        end_of_load = len(samples)
        print(f"pushed {acknowledged} images in {elapsed:.0f} s; draining ...", flush=True)
        store = Store(root / "appliance.sqlite3")
        deadline = time.monotonic() + args.drain_minutes * 60
        while time.monotonic() < deadline:
            counts = store.series_counts()
            if counts["receiving"] + counts["complete"] + counts["processing"] == 0:
                break
            time.sleep(2)
        drained = time.monotonic() < deadline
        stop_sampling.set()
        jobs = store.list_jobs(limit=1_000_000)
        instances = store.instance_count()
        rejections = store.recent_rejections(limit=1000)
        series = {s.series_uid: s for s in store.list_series(limit=1_000_000)}
        store.close()
    finally:
        stop_sampling.set()
        child.stop()

    job_series = {uid for s in stats for uid in s.job_series}
    latencies = [
        (j.finished_at or 0) - series[j.series_uid].last_instance_at
        for j in jobs
        if j.series_uid in series and j.finished_at
    ]
    warm = max(1, len(samples) // 5) if samples else 0
    load_samples = samples[:end_of_load] or samples
    rss_warm = load_samples[min(warm, len(load_samples) - 1)][1] if load_samples else 0
    rss_end = load_samples[-1][1] if load_samples else 0
    peak = max((r for _, r in samples), default=0)
    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    spooled = sum(1 for _ in (root / "spool").rglob("*.dcm"))
    problems = [f for s in stats for f in s.failures]
    if acknowledged != instances or acknowledged != spooled:
        problems.append(f"{acknowledged} acknowledged, {instances} in the store, {spooled} spooled")
    if rejections:
        problems.append(f"{len(rejections)} rejections: {rejections[0].reason}")
    if not drained:
        problems.append("the queue did not drain in time")
    not_done = [j for j in jobs if j.state.value != "done"]
    if not_done:
        problems.append(f"{len(not_done)} jobs not done, e.g. {not_done[0].reason}")
    if len(jobs) != len(job_series):
        problems.append(f"{len(jobs)} jobs for {len(job_series)} routed series")

    figures = {
        "senders": args.senders,
        "seconds": round(elapsed, 1),
        "images": acknowledged,
        "images_per_s": round(rate, 1),
        "reference_storescp_images_per_s": round(ref_rate, 1),
        "ratio_vs_storescp": round(rate / ref_rate, 3) if ref_rate else None,
        "series": sum(s.pushes for s in stats),
        "jobs": len(jobs),
        "job_latency_s": {
            "p50": round(percentile(latencies, 50), 2),
            "p90": round(percentile(latencies, 90), 2),
            "p99": round(percentile(latencies, 99), 2),
            "max": round(max(latencies, default=float("nan")), 2),
            "mean": round(statistics.fmean(latencies), 2) if latencies else None,
        },
        "rss_mib": {
            "after_warmup": round(rss_warm / 1024, 1),
            "end_of_load": round(rss_end / 1024, 1),
            "peak": round(peak / 1024, 1),
            "growth_after_warmup": round(growth, 4),
        },
        "load_average": load_average(),
        "problems": problems,
    }
    print(json.dumps(figures, indent=2))
    print(
        f"\n{rate:.0f} images/s = {rate / ref_rate:.2f} x dcmtk storescp ({ref_rate:.0f}/s) "
        f"with {args.senders} senders; jobs p50 {figures['job_latency_s']['p50']} s, "
        f"p90 {figures['job_latency_s']['p90']} s; RSS peak {peak / 1024:.0f} MiB, growth "
        f"after warm-up {100 * growth:+.1f}%"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if problems:
        print("PROBLEMS:\n  " + "\n  ".join(problems))
        return 1
    if growth >= 0.10:
        print("RSS grew by 10% or more after warm-up")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
