"""Series -> volume and mask -> SEG against their floors, interleaved in one process.

Run from the repository root::

    .venv/bin/python -m benchmarks.dicom_speed [--slices 200] [--repeats 7] [--json FILE]

What one run does:

1. Generates the ``benchmarks.e2e`` CT phantom (``models.phantoms``, liver and tumour) on a
   ``--slices`` x 512 x 512 grid and writes it as one series of single-frame files
   (``dicom_bridge.phantom_series.write_phantom_series``) into a temporary folder.
2. Per round, in this order, four timings:

   - ``plain_read``: pydicom ``dcmread`` of every file, sort by position along the normal,
     ``pixel_array * RescaleSlope + RescaleIntercept`` in float32, ``np.stack`` - no
     checks. Checked once to give the same array as the loader, bit for bit.
   - ``load_series_volume``: the appliance's loader, every check included.
   - ``packbits_floor``: the SEG's raw floor, as in ``benchmarks.e2e``: the non-empty
     frames of each segment of the truth label map, ``np.packbits`` (LSB first), written
     to a file.
   - ``write_seg``: ``dicom_bridge.seg.write_seg`` (BINARY, empty frames omitted,
     ``slice_uids`` given) + ``save_as`` of the same label map, called as the pipeline
     calls it: with the volume's ``source_headers``, so the source files are not read again.
   - ``write_seg_from_files``: the same without ``source_headers`` (the source headers are
     read from the files, as before the volume kept them).

   - ``rtstruct``: :func:`dicom_bridge.rtstruct.write_rtstruct` of the same label map +
     ``save_as`` (what ``outputs = ["rtstruct"]`` adds to a job);
   - ``sc_overlay``: :func:`dicom_bridge.overlay.write_sc_overlays` (one image per slice
     with a segment) + ``save_as`` of each (what ``outputs = ["sc_overlay"]`` adds).

   Both sides of each ratio run back to back in the same process, so a neighbour that
   takes the CPU slows both; the ratio of each round is kept and the median reported.
3. Prints the medians [min - max] in seconds, the median per-round ratios
   (``volume_ratio`` = loader / plain read, ``seg_ratio`` = write_seg + save / packbits
   floor, ``seg_from_files_ratio`` the same for ``write_seg_from_files``) and, with
   ``--json FILE``, writes them (keys in ``benchmarks/README.md``).

Everything it writes goes to one temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from benchmarks.ingest import load_average

TASK = "liver_ct"


def plain_read(paths: Sequence[Path]) -> np.ndarray:
    """The reference: read, sort along the normal, rescale, stack; no checks."""
    datasets = [dcmread(p) for p in paths]
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    datasets.sort(key=lambda ds: float(np.asarray(ds.ImagePositionPatient, float) @ normal))
    slices = []
    for ds in datasets:
        frame = ds.pixel_array
        slope = np.float32(float(ds.get("RescaleSlope", 1) or 1))
        intercept = np.float32(float(ds.get("RescaleIntercept", 0) or 0))
        slices.append(frame * slope + intercept)
    return np.stack(slices).astype(np.float32, copy=False)


def packbits_floor(labels: np.ndarray, label_indices: Sequence[int], target: Path) -> int:
    """The non-empty frames of each segment, bit-packed and written; returns the frames."""
    planes = []
    for index in label_indices:
        binary = labels == index
        planes.append(binary[binary.any(axis=(1, 2))])
    stack = np.concatenate(planes)
    packed = np.packbits(stack, bitorder="little")  # DICOM packs bits LSB first
    with open(target, "wb") as handle:
        handle.write(packed.tobytes())
    return int(stack.shape[0])


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def run(slices: int, repeats: int, workdir: Path) -> dict[str, Any]:
    from appliance.flow.pipeline import segment_descriptions
    from benchmarks.e2e import make_phantom, write_ct
    from dicom_bridge.overlay import write_sc_overlays
    from dicom_bridge.rtstruct import write_rtstruct
    from dicom_bridge.seg import AlgorithmInfo, SegOptions, source_grid_from_headers, write_seg
    from dicom_bridge.volume import load_series_volume
    from models.tasks import get_task

    phantom = make_phantom(slices)
    files, _ = write_ct(workdir / "ct", phantom)
    labels = phantom.labels
    segments = segment_descriptions(get_task(TASK))
    algorithm = AlgorithmInfo(name=TASK, version="0.0.0", weights_sha256="0" * 64)
    options = SegOptions(segmentation_type="BINARY", omit_empty_frames=True)

    volume = load_series_volume(files)
    reference = plain_read(files)
    if reference.tobytes() != volume.array.tobytes():
        raise RuntimeError("the plain read and load_series_volume give different arrays")
    slice_uids = volume.sop_instance_uids
    headers = volume.source_headers
    volume_array = volume.array
    del volume, reference

    seg_path, floor_path = workdir / "seg.dcm", workdir / "floor.bin"
    label_indices = [s.label_index for s in segments]

    def seg_and_save(from_files: bool = False) -> int:
        ds = write_seg(
            files,
            labels,
            segments,
            algorithm,
            options,
            slice_uids=slice_uids,
            source_headers=None if from_files else headers,
        )
        ds.save_as(seg_path, enforce_file_format=True)
        return int(ds.NumberOfFrames)

    def rtstruct_and_save() -> int:
        grid = source_grid_from_headers(headers)
        ds = write_rtstruct(grid, labels, segments, algorithm)
        ds.save_as(workdir / "rtstruct.dcm", enforce_file_format=True)
        return len(ds.ROIContourSequence)

    def overlays_and_save() -> int:
        grid = source_grid_from_headers(headers)
        images = write_sc_overlays(grid, volume_array, "CT", labels, segments, algorithm)
        for number, image in enumerate(images):
            image.save_as(workdir / f"overlay-{number}.dcm", enforce_file_format=True)
        return len(images)

    times: dict[str, list[float]] = {
        "plain_read": [],
        "load_series_volume": [],
        "packbits_floor": [],
        "write_seg": [],
        "write_seg_from_files": [],
        "rtstruct": [],
        "sc_overlay": [],
    }
    rtstruct_ratios: list[float] = []
    overlay_ratios: list[float] = []
    overlay_images = 0
    volume_ratios: list[float] = []
    seg_ratios: list[float] = []
    seg_from_files_ratios: list[float] = []
    seg_frames = floor_frames = 0
    for _ in range(repeats):
        plain_s, _ = timed(lambda: plain_read(files))
        load_s, _ = timed(lambda: load_series_volume(files))
        floor_s, floor_frames = timed(lambda: packbits_floor(labels, label_indices, floor_path))
        seg_s, seg_frames = timed(seg_and_save)
        files_s, _ = timed(lambda: seg_and_save(from_files=True))
        rt_s, _ = timed(rtstruct_and_save)
        sc_s, overlay_images = timed(overlays_and_save)
        values = (plain_s, load_s, floor_s, seg_s, files_s, rt_s, sc_s)
        for key, value in zip(times, values, strict=True):
            times[key].append(value)
        rtstruct_ratios.append(rt_s / seg_s)
        overlay_ratios.append(sc_s / seg_s)
        volume_ratios.append(load_s / plain_s)
        seg_ratios.append(seg_s / floor_s)
        seg_from_files_ratios.append(files_s / floor_s)
    return {
        "benchmark": "dicom_speed",
        "slices": slices,
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "seconds": {key: summary(values) for key, values in times.items()},
        "volume_ratio": summary(volume_ratios),
        "seg_ratio": summary(seg_ratios),
        "seg_from_files_ratio": summary(seg_from_files_ratios),
        "rtstruct_to_seg_ratio": summary(rtstruct_ratios),
        "sc_overlay_to_seg_ratio": summary(overlay_ratios),
        "sc_overlay_images": overlay_images,
        "seg_frames": seg_frames,
        "floor_frames": floor_frames,
        "seg_bytes": seg_path.stat().st_size,
        "floor_bytes": floor_path.stat().st_size,
    }


def print_result(result: dict[str, Any]) -> None:
    print(
        f"\n{result['slices']} x 512 x 512 CT, {result['repeats']} interleaved rounds, "
        f"median [min - max]; load average {result['load_average']}"
    )
    for key, value in result["seconds"].items():
        print(f"  {key:<22}{value['median']:8.3f} s  [{value['min']:.3f} - {value['max']:.3f}]")
    for key, what in (
        ("volume_ratio", "load_series_volume / plain read"),
        ("seg_ratio", "write_seg + save / packbits floor"),
        ("seg_from_files_ratio", "the same, source headers read from the files"),
        ("rtstruct_to_seg_ratio", "RTSTRUCT + save / write_seg + save"),
        ("sc_overlay_to_seg_ratio", "SC overlay series + save / write_seg + save"),
    ):
        value = result[key]
        print(
            f"  {key:<22}{value['median']:8.2f}    [{value['min']:.2f} - {value['max']:.2f}]"
            f"  ({what}, per round)"
        )
    print(
        f"  SEG: {result['seg_frames']} frames, {result['seg_bytes'] / 1e6:.2f} MB; floor: "
        f"{result['floor_frames']} frames, {result['floor_bytes'] / 1e6:.2f} MB"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dicom_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--slices", type=int, default=200, help="slices of the 512x512 CT")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.slices < 8 or args.repeats < 1:
        parser.error("--slices must be at least 8 and --repeats at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dicom-speed-") as tmp:
        result = run(args.slices, args.repeats, Path(tmp))
    print_result(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
