"""Inference latency while local training runs, with and without the pause hook (CPU).

Run from the repository root::

    .venv/bin/python -m benchmarks.training_contention [--repeats 6] [--train-threads 2]

What it measures: the latency of one inference job, ``models.inference.segment`` of the
shipped glioma demo model (``models/bundles/glioma_mr``) on a fresh MR phantom. The
clock starts when the job is "queued" and stops when its mask is ready. Four situations:

* ``idle``: the training process is parked (sleeping in ``should_pause``), so only the
  job runs;
* ``train (no hook)``: training runs flat out and ignores the queue;
* ``train+pause``: training polls ``should_pause``, which is True while a job is queued
  or running. This is the appliance's mechanism: the federation's ClientApp passes a
  ``should_pause`` that looks at the job queue. Training finishes the step it is in,
  then sleeps until the queue is empty;
* ``train+pause+nice``: as ``train+pause``, with every thread of the training process
  at nice 19 while the job runs, so that the step in progress gets only the CPU the job
  leaves over. Raising the nice value back needs root (CAP_SYS_NICE); without it this
  situation is left out.

Training is ``models.training.train`` in its own process, as the ClientApp is: the glioma
task's network and 64^3 patches, batch 2, augmentation on, on phantom cases. One
training process runs for the whole benchmark. The situations are interleaved job by
job, so that the load of a shared machine hits them alike. Before each job in a
training situation the benchmark waits a random fraction of a training step (timed
during warm-up), so that jobs arrive at random points of a step. It prints the median
and min-max latency per situation and the ratios against ``idle``; the issue's target
is ``train+pause / idle <= 2``. Absolute times depend on the machine's load: compare
the ratios of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import time
from dataclasses import replace
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "models" / "bundles"
TASK = "glioma_mr"
#: phantom for the inference job: a fresh seed, on a grid cut down so that a job takes a
#: few seconds on 2 cores
INFER_SPACING = (2.0, 2.0, 2.0)
INFER_MATRIX = (64, 96, 96)
INFER_SEED = 777_001
TRAIN_SEED = 777_100
SITUATIONS = ("idle", "train (no hook)", "train+pause", "train+pause+nice")


class _Stop(Exception):
    """Raised inside the training loop to end it when the benchmark is done."""


def _training_process(
    job_waiting: Event,
    parked: Event,
    is_parked: Event,
    hook: Synchronized,
    steps_done: Synchronized,
    stop: Event,
    threads: int,
) -> None:
    """Train until ``stop``; sleep while ``parked`` (acknowledged with ``is_parked``) or
    while a job waits and ``hook`` is on."""
    import torch

    from models.networks import build_network
    from models.phantoms import MR_DEFAULT, generate_phantom
    from models.tasks import get_task
    from models.training import StepInfo, TrainConfig, TrainingCase, train

    torch.set_num_threads(threads)
    spec = get_task(TASK)
    profile = replace(MR_DEFAULT, spacing_mm=(2.0, 2.0, 2.0), matrix=(72, 96, 96), seed=TRAIN_SEED)
    cases = []
    for k in range(2):
        p = generate_phantom("mr_t1c", profile, k)
        cases.append(TrainingCase(p.image, p.labels, p.affine_lps))
    torch.manual_seed(0)
    model = build_network(spec)

    def should_pause() -> bool:
        if stop.is_set():
            raise _Stop
        if parked.is_set():
            is_parked.set()
            return True
        is_parked.clear()
        return bool(hook.value) and job_waiting.is_set()

    def on_step(info: StepInfo) -> None:
        steps_done.value = info.step

    config = TrainConfig(steps=1_000_000, batch_size=2, seed=0, augment=True, device="cpu")
    with contextlib.suppress(_Stop):
        train(
            model,
            spec,
            cases,
            config,
            on_step=on_step,
            should_pause=should_pause,
            pause_poll_s=0.02,
        )


def _renice(pid: int, value: int) -> None:
    """Set the nice value of every thread of ``pid`` (Linux: nice is per thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), value)


def _can_renice(pid: int) -> bool:
    try:
        _renice(pid, 1)
        _renice(pid, 0)
    except PermissionError:
        return False
    return True


def _phantom() -> tuple[Any, Any]:
    from models.phantoms import MR_DEFAULT, generate_phantom

    profile = replace(
        MR_DEFAULT, name="bench_mr", spacing_mm=INFER_SPACING, matrix=INFER_MATRIX, seed=INFER_SEED
    )
    p = generate_phantom("mr_t1c", profile, 0)
    return p.image, p.affine_lps


def _wait_steps(steps_done: Synchronized, count: int, timeout: float) -> float:
    """Wait until ``count`` more training steps are done; returns the seconds waited."""
    start = time.perf_counter()
    target = int(steps_done.value) + count
    while int(steps_done.value) < target:
        if time.perf_counter() - start > timeout:
            raise SystemExit("the training process stopped making steps")
        time.sleep(0.05)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="jobs per situation")
    parser.add_argument(
        "--train-threads", type=int, default=2, help="torch threads of the training process"
    )
    parser.add_argument(
        "--infer-threads", type=int, default=2, help="torch threads of the inference side"
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from models.inference import segment
    from models.registry import ModelRegistry
    from models.tasks import get_task

    torch.set_num_threads(args.infer_threads)
    spec = get_task(TASK)
    registry = ModelRegistry(BUNDLES)
    bundle = registry.latest(TASK)
    if bundle is None:
        raise SystemExit(f"no shipped bundle for {TASK} under {BUNDLES}")
    model = registry.load_network(bundle)
    image, affine = _phantom()
    segment(model, spec, image, affine, device="cpu")  # warm-up, not timed

    ctx = mp.get_context("spawn")
    job_waiting, parked, is_parked, stop = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    hook = ctx.Value("b", 0)
    steps_done = ctx.Value("q", 0)
    proc = ctx.Process(
        target=_training_process,
        args=(job_waiting, parked, is_parked, hook, steps_done, stop, args.train_threads),
    )
    proc.start()
    pid = proc.pid
    if pid is None:
        raise SystemExit("the training process did not start")
    rng = np.random.default_rng(0)
    latencies: dict[str, list[float]] = {name: [] for name in SITUATIONS}
    step_seconds: list[float] = []
    load_before = os.getloadavg()[0]
    start_all = time.perf_counter()
    try:
        _wait_steps(steps_done, 1, timeout=600)  # warm-up: the first step is slower
        step_seconds.append(_wait_steps(steps_done, 2, timeout=600) / 2)
        situations = list(SITUATIONS)
        if not _can_renice(pid):
            situations.remove("train+pause+nice")
            print("not allowed to lower the nice value again: train+pause+nice left out")
        for _ in range(args.repeats):
            for situation in situations:
                if situation == "idle":
                    parked.set()
                    while not is_parked.wait(timeout=1.0):
                        if not proc.is_alive():
                            raise SystemExit("the training process died")
                else:
                    parked.clear()
                    hook.value = 0 if situation == "train (no hook)" else 1
                    # the job arrives at a random point of a training step
                    time.sleep(float(rng.uniform(0.0, statistics.median(step_seconds))))
                nice = situation == "train+pause+nice"
                job_waiting.set()  # the job is queued
                start = time.perf_counter()
                if nice:
                    _renice(pid, 19)
                segment(model, spec, image, affine, device="cpu")
                latencies[situation].append(time.perf_counter() - start)
                job_waiting.clear()
                if nice:
                    _renice(pid, 0)
    finally:
        stop.set()
        parked.clear()
        proc.join(timeout=120)
        if proc.is_alive():
            proc.kill()
            proc.join()

    print(
        f"inference: segment() of {bundle.ref} on a {INFER_MATRIX} MR phantom at "
        f"{INFER_SPACING} mm, CPU, {args.infer_threads} inference threads; training: "
        f"{args.train_threads} threads, step {statistics.median(step_seconds):.1f} s "
        f"(64^3 patches, batch 2); {args.repeats} jobs per situation, interleaved; "
        f"{time.perf_counter() - start_all:.0f} s in all"
    )
    print(f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}")
    idle = statistics.median(latencies["idle"])
    print(f"{'situation':<20}{'median s':>10}{'min':>8}{'max':>8}{'/ idle':>8}")
    for situation, values in latencies.items():
        if not values:
            continue
        median = statistics.median(values)
        print(
            f"{situation:<20}{median:>10.2f}{min(values):>8.2f}{max(values):>8.2f}"
            f"{median / idle:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
