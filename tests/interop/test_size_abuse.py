"""Memory bombs against a real ``appliance serve`` with its default ``[limits]``: a
deflate bomb (1 MiB that inflates to 1 GiB), a JPEG 2000 frame whose codestream declares
20000 x 20000 under a 32 x 32 header, and a geometry bomb (eight 96 x 96 slices with
40 mm pixels and slices, ~1 G voxels on the liver model's grid) are each refused with a
reason naming their limit; the service's resident memory, sampled every 50 ms while they
arrive and are processed, grows by less than 300 MB; the next good series goes through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dicom_bridge.limits import MIB
from dicom_bridge.listener import StoreStatus
from dicom_bridge.sender import RemoteNode, send_files
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.bombs import write_deflate_bomb, write_j2k_series
from tests.liver_series import write_liver_series
from tests.peers import ApplianceProcess, storescu

pytestmark = pytest.mark.interop

RSS_GROWTH_LIMIT = 300 * MIB


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextmanager
def _peak_rss(pid: int) -> Iterator[list[int]]:
    """Sample the process's RSS every 50 ms; the list holds [baseline, peak]."""
    seen = [_rss(pid), 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            try:
                seen[1] = max(seen[1], _rss(pid))
            except OSError:
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(5)
        seen[1] = max(seen[1], _rss(pid))


def _series(report: dict[str, Any], series_uid: str) -> dict[str, Any] | None:
    return next((s for s in report["series"] if s["series_uid"] == series_uid), None)


def _settled(series_uid: str) -> Callable[[dict[str, Any]], bool]:
    def check(report: dict[str, Any]) -> bool:
        series = _series(report, series_uid)
        return series is not None and series["state"] in ("done", "rejected", "failed")

    return check


def test_memory_bombs_are_refused_and_the_service_carries_on(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=0.5)
    assert app.process is not None
    pid = app.process.pid
    node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", app.port, calling_ae="ABUSER", timeout_s=60)

    deflate_bomb = write_deflate_bomb(tmp_path / "deflate", 1 << 30)
    assert deflate_bomb.stat().st_size < 2 * MIB
    j2k = SeriesIdentity()
    j2k_bomb = write_j2k_series(
        tmp_path / "j2k",
        SeriesGeometry(slices=8, rows=32, columns=32),
        identity=j2k,
        bomb=(20000, 20000),
        bomb_slice=3,
    )
    geometry = SeriesIdentity()
    geometry_bomb = write_series(
        tmp_path / "geometry",
        SeriesGeometry(
            slices=8, rows=96, columns=96, pixel_spacing=(40.0, 40.0), slice_spacing=40.0
        ),
        identity=geometry,
    )

    with _peak_rss(pid) as rss:
        (deflated,) = send_files(node, [deflate_bomb])
        assert deflated.status == StoreStatus.TOO_LARGE
        assert all(r.ok for r in send_files(node, j2k_bomb))
        assert all(r.ok for r in send_files(node, geometry_bomb))
        report = app.wait_series(_settled(j2k.series_uid), timeout=90)
        report = app.wait_series(_settled(geometry.series_uid), timeout=90)

    growth = rss[1] - rss[0]
    print(f"RSS baseline {rss[0] / MIB:.0f} MiB, peak {rss[1] / MIB:.0f} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / MIB:.0f} MiB"

    (rejection,) = [r for r in report["rejections"] if r["scope"] == "instance"]
    assert rejection["status"] == f"0x{StoreStatus.TOO_LARGE:04X}"
    assert "inflates to more than 512 MiB (limits.max_instance_mb)" in rejection["reason"]

    rejected = _series(report, j2k.series_uid)
    assert rejected is not None and rejected["state"] == "rejected"
    assert rejected["reason"] == "too_large"
    assert "declares 20000 x 20000" in rejected["detail"]
    assert "limits.max_frame_pixels" in rejected["detail"]

    (job,) = [j for j in report["jobs"] if j["series_uid"] == geometry.series_uid]
    assert job["state"] == "failed"
    assert job["reason"] == "input_too_large"
    assert "limits.max_working_voxels" in job["detail"]

    good = SeriesIdentity()
    files = write_liver_series(tmp_path / "good", good)
    result = storescu(app.port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    report = app.wait_series(_settled(good.series_uid), timeout=120)
    (job,) = [j for j in report["jobs"] if j["series_uid"] == good.series_uid]
    assert job["state"] == "done", job
