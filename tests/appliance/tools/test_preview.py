"""``appliance preview``: PNGs of a SEG over its series, from the store's instance paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from appliance.cli import app
from appliance.flow.ingest import to_new_instance
from appliance.store import Store
from appliance.tools.preview import (
    FILL_ALPHA,
    MIN_PANEL,
    choose_slices,
    find_latest_seg,
    window_to_uint8,
)
from dicom_bridge.codes import (
    ANATOMICAL_STRUCTURE,
    LIVER,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
)
from dicom_bridge.instance import describe_spooled_file
from dicom_bridge.seg import AlgorithmInfo, SegmentDescription, write_seg
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import load_series_volume
from tests.peers import write_config

SERIES = "1.2.826.0.1.3680043.8.498.7701"
LIVER_RGB = (0, 255, 0)
# 12 slices of 48 rows x 64 columns; rows 1.0 mm apart, columns 0.5 mm: non-square pixels.
GEOMETRY = SeriesGeometry(slices=12, rows=48, columns=64, pixel_spacing=(1.0, 0.5))


def _mask() -> np.ndarray:
    mask = np.zeros((12, 48, 64), dtype=np.uint8)
    mask[3:9, 10:30, 20:50] = 1  # liver
    mask[5:7, 15:21, 30:36] = 2  # tumour inside it, largest on slices 5-6
    return mask


@pytest.fixture
def case(tmp_path: Path) -> dict[str, Path]:
    series_dir = tmp_path / "spool" / SERIES
    paths = write_series(
        series_dir,
        GEOMETRY,
        modality="CT",
        identity=SeriesIdentity(patient_name="PHANTOM^PREVIEW", series_uid=SERIES),
    )
    segments = [
        SegmentDescription(1, "liver", ANATOMICAL_STRUCTURE, LIVER, color_rgb=LIVER_RGB),
        SegmentDescription(2, "liver tumour", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM),
    ]
    algorithm = AlgorithmInfo(name="liver-demo", version="1.2.3", weights_sha256="ab" * 32)
    seg = write_seg(paths, _mask(), segments, algorithm)
    seg_path = tmp_path / "corrected-seg.dcm"
    seg.save_as(seg_path)
    root = tmp_path / "root"
    config = write_config(tmp_path / "appliance.toml", port=11112, root=root)
    store = Store(root / "appliance.sqlite3")
    try:
        for path in paths:
            store.record_instance(to_new_instance(describe_spooled_file(path)))
    finally:
        store.close()
    return {"config": config, "seg": seg_path, "root": root, "out": tmp_path / "png"}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_preview_writes_overlays_where_the_mask_is(case: dict[str, Path]) -> None:
    code, output = _run(
        "preview", SERIES, "--config", str(case["config"]), "--seg", str(case["seg"]),
        "--out", str(case["out"]), "--slices", "3",
    )  # fmt: skip
    assert code == 0, output
    pngs = sorted(case["out"].glob("*.png"))
    assert len(pngs) == 3
    for png in pngs:
        assert str(png) in output
    # Slice 5 (file 0006) has the largest tumour cross-section and is always chosen.
    chosen = case["out"] / "preview-axial-0006.png"
    assert chosen in pngs
    with Image.open(chosen) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        rgb = np.asarray(img.convert("RGB")).astype(int)
    # Panel: 48 rows at 1.0 mm, 64 columns at 0.5 mm -> 96 x 64 square pixels, x4 to 384.
    zoom = MIN_PANEL / 96
    width, height = round(64 * zoom), round(96 * zoom)
    assert rgb.shape[1] == width
    assert rgb.shape[0] > height  # the legend and caption band sits below the panel

    # Source row r is centred on display row (r + 0.5) * 8, column c on (c + 0.5) * 2.
    def source(r: float, c: float) -> np.ndarray:
        return rgb[int((r + 0.5) * height / 48), int((c + 0.5) * width / 64)]

    outside = source(40, 5)
    assert outside[0] == outside[1] == outside[2]  # plain grey away from the mask
    liver = source(25, 24)  # inside the liver, away from its outline and the tumour
    paths = sorted((case["root"].parent / "spool" / SERIES).glob("*"))
    grey = int(window_to_uint8(load_series_volume(paths).array, "CT")[5, 25, 24])
    assert liver[1] > liver[0] + 40 and liver[1] > liver[2] + 40
    expected = [(1 - FILL_ALPHA) * grey + FILL_ALPHA * c for c in LIVER_RGB]
    assert np.abs(liver - np.array(expected)).max() <= 2
    tumour = source(18, 33)
    assert not (tumour[0] == tumour[1] == tumour[2])
    assert tuple(source(10, 35)) == LIVER_RGB  # the liver's outline is drawn opaque
    # The legend and the caption are drawn in the band (non-black pixels there).
    assert rgb[height:].max() > 0


def test_preview_finds_the_newest_result(case: dict[str, Path]) -> None:
    results = case["root"] / "results" / SERIES
    for gen, content in ((2, b"not a SEG"), (10, case["seg"].read_bytes())):
        (results / f"gen-{gen}").mkdir(parents=True)
        (results / f"gen-{gen}" / "seg.dcm").write_bytes(content)
    assert find_latest_seg(case["root"] / "results", SERIES) == results / "gen-10" / "seg.dcm"
    code, output = _run("preview", SERIES, "--config", str(case["config"]), "--all-planes")
    assert code == 0, output
    out_dir = case["root"] / "previews" / SERIES
    planes = {p.name.split("-")[1] for p in out_dir.glob("*.png")}
    assert planes == {"axial", "coronal", "sagittal"}
    assert str(results / "gen-10" / "seg.dcm") in output


def test_preview_errors(case: dict[str, Path]) -> None:
    code, output = _run("preview", "1.2.3.999", "--config", str(case["config"]))
    assert code == 1 and "no series" in output
    code, output = _run("preview", "../etc", "--config", str(case["config"]))
    assert code == 2
    code, output = _run("preview", SERIES, "--config", str(case["config"]))
    assert code == 1 and "--seg" in output  # no result yet


def test_slice_choice_and_windowing() -> None:
    mask = _mask()
    chosen = choose_slices(mask, 0, 4, lesion_numbers=[2])
    reasons = dict(chosen)
    assert reasons[5] == "largest lesion"
    assert all(3 <= i <= 8 for i, _ in chosen) and len(chosen) == 4
    assert [i for i, _ in choose_slices(np.zeros_like(mask), 0, 3)] == [3, 6, 8]
    ct = window_to_uint8(np.array([[[-1000.0, -160.0, 40.0, 240.0, 3000.0]]]), "CT")
    assert ct.ravel().tolist() == [0, 0, 128, 255, 255]
    mr = window_to_uint8(np.linspace(0, 1000, 1001).reshape(1, 7, 143), "MR")
    assert mr.min() == 0 and mr.max() == 255


def test_preview_grid_matches_volume(case: dict[str, Path]) -> None:
    """The label map the preview draws lies on the load_series_volume grid."""
    from dicom_bridge.seg_reader import read_seg_labelmap

    paths = sorted((case["root"].parent / "spool" / SERIES).glob("*"))
    volume = load_series_volume(paths)
    seg = read_seg_labelmap(case["seg"], paths)
    assert seg.labelmap.shape == volume.shape
    assert np.array_equal(seg.labelmap, _mask())
