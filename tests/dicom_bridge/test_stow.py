"""DICOMweb endpoints (dicom_bridge.stow): URLs, credentials read from files at each use,
never in the URL or a message. Sending itself is tested against Orthanc
(tests/interop/test_dicomweb.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_bridge.errors import SendError
from dicom_bridge.stow import WebAuth, WebEndpoint, stow_files
from tests.peers import free_port


def test_urls_and_auth_are_checked() -> None:
    for bad, says in (
        ("ftp://pacs/dicom-web", "http(s)://host"),
        ("pacs/dicom-web", "http(s)://host"),
        ("https://user:pw@pacs/dicom-web", "must not hold credentials"),
    ):
        with pytest.raises(SendError, match=says.replace("(", r"\(").replace(")", r"\)")):
            WebEndpoint(url=bad)
    with pytest.raises(SendError, match="username and a password file"):
        WebEndpoint(url="https://pacs/dicom-web", auth=WebAuth.BASIC, username="a")
    with pytest.raises(SendError, match="token file"):
        WebEndpoint(url="https://pacs/dicom-web", auth="bearer")  # type: ignore[arg-type]
    assert WebEndpoint(url="https://pacs/dicom-web/").peer == "https://pacs/dicom-web"


def test_credentials_come_from_their_files_at_each_use(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    endpoint = WebEndpoint(url="https://pacs/dicom-web", auth=WebAuth.BEARER, token_file=token)
    assert endpoint.session().headers["Authorization"] == "Bearer first"
    token.write_text("rotated")
    assert endpoint.session().headers["Authorization"] == "Bearer rotated"
    assert "rotated" not in repr(endpoint)
    password = tmp_path / "password"
    password.write_text("pw\n")
    basic = WebEndpoint(
        url="http://pacs/dicom-web", auth=WebAuth.BASIC, username="app", password_file=password
    )
    assert basic.session().auth == ("app", "pw")
    password.write_text("")
    with pytest.raises(SendError, match="password file is empty"):
        basic.session()
    password.unlink()
    with pytest.raises(SendError, match="cannot read the DICOMweb password file") as info:
        basic.session()
    assert "pw" not in str(info.value)


def test_an_unreachable_server_fails_the_whole_request(tmp_path: Path) -> None:
    endpoint = WebEndpoint(url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout_s=2.0)
    not_dicom = tmp_path / "x.dcm"
    not_dicom.write_bytes(b"not dicom")
    (only,) = stow_files(endpoint, [not_dicom])  # nothing to send: no request at all
    assert not only.ok and "not a DICOM file" in (only.error or "")
    from tests.dicom_bridge.test_seg import GEOMETRIES, make_series

    paths, _ = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    with pytest.raises(SendError, match="unreachable"):
        stow_files(endpoint, paths[:2])


def test_the_configured_ca_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/elsewhere.pem")
    ca = tmp_path / "ca.pem"
    session = WebEndpoint(url="https://pacs/dicom-web", ca_file=ca).session()
    settings = session.merge_environment_settings("https://pacs/dicom-web", {}, None, None, None)
    assert settings["verify"] == str(ca)
    plain = WebEndpoint(url="https://pacs/dicom-web").session()
    settings = plain.merge_environment_settings("https://pacs/dicom-web", {}, None, None, None)
    assert settings["verify"] == "/etc/ssl/elsewhere.pem"  # no ca_file: the site's default
