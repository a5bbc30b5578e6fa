"""A real viewer shows what the appliance sends: Orthanc (with its DICOMweb plugin) pushes a
phantom abdominal CT to a real ``appliance serve`` with the shipped liver model; the SEG
and RTSTRUCT come back to Orthanc; OHIF (the prebuilt ``@ohif/app``), served against
Orthanc's DICOMweb, is opened on the study in headless Chromium (Debian's, driven by
playwright) and loads each of them the way a radiologist does (double-click the series,
answer the viewer's prompt). The check is on the rendered page: at a slice through the
liver, screenshot pixels over the segmented liver are coloured by the overlay and pixels
away from it are not (for the RTSTRUCT: its outline runs along the liver's edge). Screen
positions come from the viewer's own world-to-canvas mapping of each voxel's patient
position, so the check holds whatever the zoom, pan or orientation. The screenshots are
kept in ``test-artefacts/`` (``APPLIANCE_ARTEFACT_DIR``)."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_bridge.seg import SourceGrid, read_source_grid
from dicom_bridge.seg_reader import read_seg_labelmap
from tests.interop.test_roundtrip_seg import (
    fetch,
    jobs_done,
    phantom_case,
    push_series,
    start_appliance,
    wait_for,
)
from tests.morphology import dilate, erode
from tests.peers import REPO, orthanc
from tests.viewer import chromium, ohif_dist, ohif_server

pytestmark = [pytest.mark.interop, pytest.mark.slow]

#: A pixel is coloured when its channels differ by this much (the CT is drawn in grey).
CHROMA = 10
VIEW = {"width": 1280, "height": 900}


def artefact_dir() -> Path:
    path = Path(os.environ.get("APPLIANCE_ARTEFACT_DIR", REPO / "test-artefacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Study:
    url: str  # the viewer's base URL
    chromium: str
    study_uid: str
    grid: SourceGrid
    labelmap: np.ndarray  # the SEG read back on the source grid (slice, row, column)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    dist, exe = ohif_dist(), chromium()
    tmp = tmp_path_factory.mktemp("viewer")
    case = phantom_case("abdomen", "ct_abdomen", "site_a", (40, 128, 128), tmp / "phantoms")
    with orthanc(tmp / "orthanc", dicomweb=True) as pacs:
        app = start_appliance(tmp / "app", pacs, outputs=["seg", "rtstruct"])
        try:
            pacs.request(
                "PUT",
                "/modalities/seg",
                {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": app.port},
            )
            push_series(pacs, case)
            wait_for(lambda: jobs_done(app, [case.series_uid]), 600, "no job", poll=2.0)
            found = {
                modality: wait_for(
                    functools.partial(
                        pacs.find_instances,
                        {"Modality": modality, "StudyInstanceUID": case.study_uid},
                    ),
                    60,
                    f"no {modality} in Orthanc",
                )
                for modality in ("SEG", "RTSTRUCT")
            }
        finally:
            app.stop()
        seg_path = fetch(pacs, found["SEG"][0], tmp / "seg.dcm")
        grid = read_source_grid(case.files)
        labelmap = read_seg_labelmap(seg_path, case.files).labelmap
        assert labelmap.any(), "the model found no liver in the phantom"
        with ohif_server(dist, pacs.url) as url:
            yield Study(url, exe, case.study_uid, grid, labelmap)


@pytest.fixture
def page(study: Study) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=study.chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport=VIEW, device_scale_factor=1)
            tab.set_default_timeout(60_000)
            tab.goto(f"{study.url}/viewer?StudyInstanceUIDs={study.study_uid}")
            tab.get_by_text("CT ABDOMEN", exact=False).first.wait_for()
            _viewport_ready(tab)
            skip = tab.get_by_text("Skip all")  # the first-visit tour
            if skip.count():
                skip.click()
            yield tab
        finally:
            browser.close()


def _viewport_ready(tab: Any) -> None:
    tab.wait_for_function(
        """() => {
            const engine = window.cornerstone && window.cornerstone.getRenderingEngines()[0];
            const viewport = engine && engine.getViewports()[0];
            return !!(viewport && viewport.getCurrentImageId && viewport.getCurrentImageId());
        }"""
    )


def _open(tab: Any, modality: str) -> None:
    """Double-click the series in the study browser and say yes to loading it."""
    tab.locator("div", has_text=modality).get_by_text(modality, exact=True).first.dblclick()
    tab.get_by_role("button", name="Yes").click()
    tab.wait_for_function("() => window.services.segmentationService.getSegmentations().length > 0")


def _show_slice(tab: Any, grid: SourceGrid, index: int) -> dict[str, Any]:
    """Scroll the viewport to the source slice ``index``; return the canvas' position on
    the page and the canvas positions of that slice's voxel centres."""
    sop = str(grid.datasets[index].SOPInstanceUID)
    rows, columns = grid.shape[1:]
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    voxels = np.stack([np.full(r.size, index), r.ravel(), c.ravel(), np.ones(r.size)])
    world = (grid.affine @ voxels)[:3].T.round(4).tolist()
    return dict(
        tab.evaluate(
            """async ([sop, world]) => {
                const viewport = window.cornerstone.getRenderingEngines()[0].getViewports()[0];
                const k = viewport.getImageIds()
                    .findIndex(id => id.includes('/instances/' + sop + '/'));
                if (k < 0) throw new Error('slice not in the viewport');
                await viewport.setImageIdIndex(k);
                viewport.render();
                const box = viewport.canvas.getBoundingClientRect();
                return {
                    left: box.left, top: box.top, width: box.width, height: box.height,
                    shown: viewport.getCurrentImageId().includes(sop),
                    points: world.map(p => viewport.worldToCanvas(p)),
                };
            }""",
            [sop, world],
        )
    )


def _coloured(tab: Any) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(tab.screenshot())).convert("RGB")).astype(int)
    return np.asarray(image.max(axis=2) - image.min(axis=2) >= CHROMA)


def _sample(
    coloured: np.ndarray, shown: dict[str, Any], region: np.ndarray, radius: int = 0
) -> float:
    """Fraction of ``region``'s voxels (on the shown slice) whose screen pixel - or any
    pixel within ``radius`` of it - is coloured."""
    points = np.asarray(shown["points"], dtype=float).reshape((*region.shape, 2))[region]
    x = np.rint(points[:, 0] + shown["left"]).astype(int)
    y = np.rint(points[:, 1] + shown["top"]).astype(int)
    inside = (x >= 0) & (y >= 0) & (x < coloured.shape[1]) & (y < coloured.shape[0])
    assert inside.all(), "the slice is not wholly on screen"
    if radius:
        coloured = dilate(coloured, radius)
    return float(coloured[y, x].mean())


def _wait_coloured(
    tab: Any, shown: dict[str, Any], region: np.ndarray, share: float, what: str, radius: int = 0
) -> None:
    """Wait (30 s) until more than ``share`` of ``region`` is coloured on screen (within
    ``radius`` pixels): the viewer draws once it has rendered the slice."""
    wait_for(lambda: _sample(_coloured(tab), shown, region, radius) > share, 30, what, poll=1.0)


def _voxel_on_screen(shown: dict[str, Any], shape: tuple[int, ...]) -> float:
    """Screen pixels between neighbouring voxel centres (the larger of the two axes)."""
    points = np.asarray(shown["points"], dtype=float).reshape((*shape, 2))
    along_rows = np.linalg.norm(points[1:, :] - points[:-1, :], axis=-1).mean()
    along_columns = np.linalg.norm(points[:, 1:] - points[:, :-1], axis=-1).mean()
    return float(max(along_rows, along_columns))


def _liver_slice(labelmap: np.ndarray) -> int:
    return int(np.argmax((labelmap > 0).sum(axis=(1, 2))))


def _regions(labelmap: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On slice ``index``: the segment's interior (2 voxels in from its edge), its edge,
    and what lies more than 3 voxels from it."""
    mask = labelmap[index] > 0
    interior = erode(mask, 2)
    edge = mask & ~erode(mask)
    away = ~dilate(mask, 3)
    return interior, edge, away


def test_ohif_shows_the_seg_over_the_liver(page: Any, study: Study) -> None:
    _open(page, "SEG")
    index = _liver_slice(study.labelmap)
    interior, _, away = _regions(study.labelmap, index)
    shown = _show_slice(page, study.grid, index)
    assert shown["shown"]
    # the overlay is drawn once the labelmap has been rendered for this slice
    _wait_coloured(page, shown, interior, 0.95, "the SEG overlay did not appear over the liver")
    page.screenshot(path=artefact_dir() / "ohif_seg.png")
    coloured = _coloured(page)
    assert _sample(coloured, shown, away) < 0.01  # nothing drawn away from the liver


def test_ohif_loads_the_rtstruct_contours(page: Any, study: Study) -> None:
    _open(page, "RTSTRUCT")
    index = _liver_slice(study.labelmap)
    _, edge, away = _regions(study.labelmap, index)
    shown = _show_slice(page, study.grid, index)
    assert shown["shown"]
    # the contour is an outline: along the liver's edge, not over its interior
    # the contour runs between voxel centres: within one voxel's width on screen of them
    reach = int(np.ceil(_voxel_on_screen(shown, edge.shape)))
    _wait_coloured(
        page, shown, edge, 0.9, "the RTSTRUCT contour did not appear along the liver's edge", reach
    )
    page.screenshot(path=artefact_dir() / "ohif_rtstruct.png")
    coloured = _coloured(page)
    assert _sample(coloured, shown, away) < 0.01
