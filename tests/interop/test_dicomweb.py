"""A DICOMweb destination against a real Orthanc with its DICOMweb plugin: STOW-RS with
basic authentication through the durable outbox; refused credentials; Orthanc stopped ->
retries -> dead letter; ``appliance outbox retry`` delivers once it is back."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.interop.test_orthanc import HIGHDICOM_SEG, all_in, outbox, wait_outbox
from tests.peers import (
    ApplianceProcess,
    free_port,
    make_pki,
    orthanc,
    require_data,
    tls_terminator,
)

pytestmark = pytest.mark.interop

USERS = {"appliance": "s3cret-pass"}


def web_destination(port: int, password_file: Path, name: str = "web") -> dict[str, object]:
    return dict(
        name=name,
        kind="dicomweb",
        url=f"http://127.0.0.1:{port}/dicom-web",
        auth="basic",
        username="appliance",
        password_file=str(password_file),
        timeout_seconds=5.0,
    )


def test_stow_rs_with_basic_auth_reaches_orthanc(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    seg = require_data(HIGHDICOM_SEG)
    good, bad = tmp_path / "password", tmp_path / "wrong"
    good.write_text("s3cret-pass\n")
    bad.write_text("nope\n")
    with orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS) as pacs:
        app = appliance_factory(
            destinations=(
                web_destination(pacs.http_port, good),
                web_destination(pacs.http_port, bad, name="wrong"),
            )
        )
        echo = app.cli("echo", "web")
        assert "QIDO-RS to web" in echo.stdout and "ok" in echo.stdout, echo.stdout
        refused = app.cli("echo", "wrong", check=False)
        assert refused.returncode != 0
        assert "HTTP 401 (credentials refused)" in refused.stderr + refused.stdout
        assert "nope" not in refused.stderr + refused.stdout + app.log.read_text()

        files = write_series(tmp_path / "ct", SeriesGeometry(slices=2, rows=16, columns=16))
        app.cli("send", "web", str(seg), *map(str, files))
        items = wait_outbox(app, all_in("sent", 3))
        assert all(i["last_error"] is None for i in items), items
        for path in (seg, *files):
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            (found,) = pacs.find_instances({"SOPInstanceUID": uid})
            back = dcmread(io.BytesIO(pacs.raw(f"/instances/{found}/file")))
            assert back.PixelData == dcmread(path).PixelData
        assert "s3cret" not in app.log.read_text()


def test_stow_rs_retries_goes_dead_and_is_retried_when_orthanc_is_back(
    tmp_path: Path,
    appliance_factory: Callable[..., ApplianceProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seg = require_data(HIGHDICOM_SEG)
    monkeypatch.setenv("APPLIANCE__OUTBOX__MAX_ATTEMPTS", "3")
    password = tmp_path / "password"
    password.write_text("s3cret-pass")
    http_port, dicom_port = free_port(), free_port()
    app = appliance_factory(destinations=(web_destination(http_port, password),))
    app.cli("send", "web", str(seg))  # nothing listens on the port yet
    (item,) = wait_outbox(app, all_in("dead", 1))
    assert item["attempts"] == 3, item
    assert "unreachable" in item["last_error"], item
    time.sleep(1.0)  # dead means dead
    assert outbox(app)[0]["attempts"] == 3

    with orthanc(
        tmp_path / "orthanc",
        dicomweb=True,
        users=USERS,
        http_port=http_port,
        dicom_port=dicom_port,
    ) as pacs:
        retried = app.cli("outbox", "retry", str(item["id"]))
        assert "pending" in retried.stdout, retried.stdout
        (sent,) = wait_outbox(app, all_in("sent", 1))
        assert sent["last_error"] is None
        uid = str(dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
        assert len(pacs.find_instances({"SOPInstanceUID": uid})) == 1


def test_stow_rs_over_https_verifies_the_server(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    seg = require_data(HIGHDICOM_SEG)
    pki, other = tmp_path / "pki", tmp_path / "other-pki"  # other: a CA that signed nothing
    for folder in (pki, other):
        folder.mkdir()
        make_pki(folder)
    password = tmp_path / "password"
    password.write_text("s3cret-pass")
    with (
        orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS) as pacs,
        tls_terminator(tmp_path, pki, pacs.http_port) as https_port,
    ):
        trusted = web_destination(https_port, password)
        trusted["url"] = f"https://127.0.0.1:{https_port}/dicom-web"
        trusted["ca_file"] = str(pki / "ca.pem")
        untrusted = {**trusted, "name": "untrusted", "ca_file": str(other / "ca.pem")}
        app = appliance_factory(destinations=(trusted, untrusted))
        assert "ok" in app.cli("echo", "web").stdout
        refused = app.cli("echo", "untrusted", check=False)
        assert refused.returncode != 0 and "SSLError" in refused.stderr + refused.stdout
        app.cli("send", "web", str(seg))
        (item,) = wait_outbox(app, all_in("sent", 1))
        assert item["last_error"] is None
        uid = str(dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
        assert len(pacs.find_instances({"SOPInstanceUID": uid})) == 1
