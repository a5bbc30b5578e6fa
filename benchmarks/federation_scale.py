"""How a federated run's cost grows with the number of hospitals (issue 20).

``appliance federate simulate`` (Flower's simulation runtime, Ray) runs FedAvg over 4, 8,
16 and 32 generated hospitals (:mod:`models.site_distribution`) with a fixed tiny budget
per site: one training and one held-out case each on a 6 mm phantom grid, a 2-level UNet
on 16^3 patches, ``--rounds`` rounds of ``--local-steps`` steps. For each size it records
the wall time of the federated run, the time its rounds took (from the end of site
discovery to the last round's aggregate, from the run's progress log: Flower and Ray
starting and the hand-out are the rest), the time per site-round (rounds time / (sites x
rounds)), the scoring time, the peak memory of the whole process tree (the SuperLink,
Ray and its workers, sampled every 0.25 s) and the bytes moved. Each size's time per
site-round is printed as a ratio against the smallest size's (the reference, measured in
the same job). A 2-site run first warms the page cache and is not reported
(``--no-warmup``).

    .venv/bin/python -m benchmarks.federation_scale [--sites 4,8,16,32] [--rounds 3]
        [--local-steps 5] [--workers 2] [--json FILE] [--plot FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG = """
name = "scale{sites}"
description = "cost growth: {sites} generated sites, fixed tiny budget per site"
seeds = [0]
tasks = ["glioma_mr"]
methods = ["fedavg"]
rounds = {rounds}
local_steps = {local_steps}
batch_size = 1
workers = {workers}
threads_per_site = 1
timeout_s = 7200
evaluate_rounds = false
phantom_grid_mm = 6.0
n_sites = {sites}

[generated_sites]
seed = 0
held_out = 1
max_train = 1

[network]
filters = [4, 8]
res_units = 0
norm = "batch"

[task.glioma_mr]
patch_size = [16, 16, 16]
target_spacing_mm = [6.0, 6.0, 6.0]
"""


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text().split()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
        rss[int(entry)] = int(statm[1]) * page
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _rounds_span(workdir: Path) -> float:
    """Seconds from the end of discovery to the last round's training entry of the
    run's progress log (Flower and Ray starting, and the hand-out, left out)."""
    from datetime import datetime

    (path,) = workdir.rglob("progress-*.json")
    progress = json.loads(path.read_text())
    start = datetime.fromisoformat(progress["sites_at"])
    last = max(
        datetime.fromisoformat(e["at"]) for e in progress["history"] if e["phase"] == "train"
    )
    return (last - start).total_seconds()


def run_size(sites: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = workdir / f"sites{sites}"
    base.mkdir(parents=True, exist_ok=True)
    config = base / "scale.toml"
    config.write_text(
        CONFIG.format(
            sites=sites, rounds=args.rounds, local_steps=args.local_steps, workers=args.workers
        )
    )
    command = [
        sys.executable, "-m", "appliance", "federate", "simulate", "--config", str(config),
        "--out", str(base / "out"), "--workdir", str(base / "work"),
    ]  # fmt: skip
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    with open(base / "simulate.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _tree_rss(proc.pid))
                done.wait(0.25)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
    total = time.perf_counter() - start
    if code != 0:
        tail = (base / "simulate.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{sites} sites: simulate exited {code}:\n{tail}")
    result = json.loads((base / "out" / f"federation_scale{sites}.json").read_text())
    record = next(r for r in result["records"] if r["method"] == "fedavg")
    wall = float(record["wall_s"])
    rounds_s = _rounds_span(base / "work")
    return {
        "sites": sites,
        "rounds": args.rounds,
        "total_s": round(total, 1),
        "federated_s": wall,
        "score_s": float(record["score_s"]),
        "rounds_s": round(rounds_s, 2),
        "per_site_round_s": round(rounds_s / (sites * args.rounds), 3),
        "peak_rss_mb": round(peak / 1e6, 1),
        "bytes_sent": int(sum(record["bytes_sent"].values())),
        "bytes_received": int(sum(record["bytes_received"].values())),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    reference = rows[0]["per_site_round_s"]
    lines = [
        "| sites | federated run (s) | its rounds (s) | per site-round (s) | ratio | "
        "scoring (s) | peak memory (MB) | MB sent + received |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        moved = (r["bytes_sent"] + r["bytes_received"]) / 1e6
        lines.append(
            f"| {r['sites']} | {r['federated_s']:.1f} | {r['rounds_s']:.1f} | "
            f"{r['per_site_round_s']:.3f} | {r['per_site_round_s'] / reference:.2f}x | "
            f"{r['score_s']:.1f} | {r['peak_rss_mb']:.0f} | {moved:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [r["sites"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(sites, [r["per_site_round_s"] for r in rows], "o-")
    left.set(xlabel="sites", ylabel="s per site-round", xscale="log", title="time")
    left.set_ylim(bottom=0)
    right.plot(sites, [r["peak_rss_mb"] for r in rows], "o-", color="tab:orange")
    right.set(xlabel="sites", ylabel="peak MB (process tree)", xscale="log", title="memory")
    right.set_ylim(bottom=0)
    for axis in (left, right):
        axis.minorticks_off()
        axis.set_xticks(sites, [str(s) for s in sites])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="4,8,16,32", help="comma-separated site counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="sites training at once")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write a PNG of time and memory here")
    parser.add_argument("--keep", type=Path, help="keep the runs' files here")
    parser.add_argument("--no-warmup", action="store_true", help="skip the 2-site warm-up")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sites.split(",") if s})
    if not sizes or min(sizes) < 2 or max(sizes) > 999:
        parser.error("--sites: counts from 2 to 999")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        if not args.no_warmup:
            run_size(2, args, workdir / "warmup")
        rows = []
        for sites in sizes:
            rows.append(run_size(sites, args, workdir))
            print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.json is not None:
        document = {"sizes": rows, "reference_sites": sizes[0]}
        args.json.write_text(json.dumps(document, indent=2))
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
