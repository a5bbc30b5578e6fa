"""The inference engine against the previous path, interleaved in one process.

``python -m benchmarks.engine [--slices 200] [--repeats 3] [--threads 1,2]
[--batch-sizes 1,2,4] [--skip-batch] [--skip-segment] [--json FILE]``

1. **Batching**: the network alone (``predict_probabilities``) over the whole
   pre-processed grid of a ``(slices, 512, 512)`` CT phantom, for each thread count and
   ``sw_batch_size``, interleaved; medians and the ratio to batch 1 on the same threads.
2. **segment**: :func:`models.inference.segment` with ``reference=True, sw_batch_size=1``
   (the previous path: whole grid, MONAI ``Invertd`` on every channel) and the engine's
   defaults, alternately, on the last thread count; medians per stage, the ratios, and
   the Dice per label of the engine's mask against the previous path's.

The model is the newest shipped liver_ct bundle. Ratios, not absolutes: on a shared
machine the absolute figures move from one minute to the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

SPACING_MM = (1.5, 0.78, 0.78)
TASK = "liver_ct"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from models.threads import passive_openmp_wait

    passive_openmp_wait()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=_ints, default=[1, 2])
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4])
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-segment", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from models.inference import resolve_device
    from models.phantoms import CT_DEFAULT, PhantomKind, generate_phantom
    from models.registry import ModelRegistry
    from models.tasks import get_task
    from models.transforms import IMAGE_KEY, build_preprocess, make_sample

    registry = ModelRegistry(Path(__file__).resolve().parents[1] / "models" / "bundles")
    bundle = max(registry.list(TASK), key=lambda b: tuple(int(p) for p in b.version.split(".")))
    network = registry.load_network(bundle)
    spec = get_task(TASK)
    profile = replace(
        CT_DEFAULT, name="bench_engine", matrix=(args.slices, 512, 512), spacing_mm=SPACING_MM
    )
    phantom = generate_phantom(PhantomKind.CT_ABDOMEN, profile, 0)
    image, affine = phantom.image, phantom.affine_lps
    out: dict[str, Any] = {
        "model": f"{TASK}/{bundle.version}",
        "shape": list(image.shape),
        "cpu_count": len(__import__("os").sched_getaffinity(0)),
    }
    print(f"model {out['model']}, image {tuple(image.shape)}", flush=True)

    if not args.skip_batch:
        from models.inference import predict_probabilities

        data = build_preprocess(spec)(make_sample(image, affine, spec))
        grid = data[IMAGE_KEY].as_tensor()
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for threads in args.threads:
                torch.set_num_threads(threads)
                for batch in args.batch_sizes:
                    mark = time.perf_counter()
                    predict_probabilities(
                        network, spec, grid, device=resolve_device("cpu"), sw_batch_size=batch
                    )
                    seconds = time.perf_counter() - mark
                    runs.setdefault(f"{threads}t_b{batch}", []).append(seconds)
                    print(
                        f"  network, {threads} thread(s), batch {batch}: {seconds:.2f} s",
                        flush=True,
                    )
        table = {}
        for threads in args.threads:
            base = statistics.median(runs[f"{threads}t_b{args.batch_sizes[0]}"])
            for batch in args.batch_sizes:
                med = statistics.median(runs[f"{threads}t_b{batch}"])
                table[f"{threads}t_b{batch}"] = {"median_s": med, "speedup_vs_first": base / med}
                print(
                    f"network {threads} thread(s) batch {batch}: "
                    f"median {med:.2f} s, {base / med:.2f}x"
                )
        out["batching"] = table

    if not args.skip_segment:
        out["segment"] = _compare_segment(args, network, spec, image, affine)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


def _compare_segment(
    args: argparse.Namespace, network: Any, spec: Any, image: np.ndarray, affine: np.ndarray
) -> dict[str, Any]:
    import torch

    from models.inference import DEFAULT_SW_BATCH_SIZE, segment

    torch.set_num_threads(args.threads[-1])
    stages: dict[str, dict[str, list[float]]] = {"previous": {}, "engine": {}}
    masks: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, previous in (("previous", True), ("engine", False)):
            result = segment(
                network,
                spec,
                image,
                affine,
                device="cpu",
                reference=previous,
                sw_batch_size=1 if previous else DEFAULT_SW_BATCH_SIZE,
            )
            masks[name] = result.mask
            for stage, seconds in result.timings_s.items():
                stages[name].setdefault(stage, []).append(seconds)
            print(f"  segment {name}: {result.timings_s['total']:.2f} s", flush=True)
    medians = {
        name: {stage: statistics.median(v) for stage, v in by_stage.items()}
        for name, by_stage in stages.items()
    }
    ratios = {
        stage: medians["previous"][stage] / max(medians["engine"][stage], 1e-9)
        for stage in medians["previous"]
    }
    dice = {
        str(label.index): _dice(masks["previous"], masks["engine"], label.index)
        for label in spec.labels
    }
    summary = {
        "threads": args.threads[-1],
        "medians_s": medians,
        "speedup": ratios,
        "dice_vs_previous": dice,
    }
    print(f"segment on {args.threads[-1]} thread(s), medians of {args.repeats}:")
    print("| stage | previous (s) | engine (s) | speed-up |")
    print("|---|---|---|---|")
    for stage, ratio in ratios.items():
        print(
            f"| {stage} | {medians['previous'][stage]:.2f} | "
            f"{medians['engine'][stage]:.2f} | {ratio:.2f}x |"
        )
    print(f"Dice of the engine's mask against the previous path's, per label: {dice}")
    return summary


if __name__ == "__main__":
    main()
