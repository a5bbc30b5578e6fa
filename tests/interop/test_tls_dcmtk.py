"""DICOM TLS against dcmtk, with certificates made in the test: ``echoscu +tls`` and
``storescu +tls`` into a real ``appliance serve`` configured with ``[dicom.tls]`` (client
certificates required), plaintext and certificate-less callers refused, and the
outbox sending to a ``storescp +tls`` destination."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.interop.test_roundtrip_seg import wait_for
from tests.peers import (
    ApplianceProcess,
    Process,
    free_port,
    make_pki,
    nodelay_env,
    require_program,
    storescu,
    wait_port,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_section(pki: Path) -> str:
    return (
        "[dicom.tls]\n"
        f'cert_file = "{pki / "server.pem"}"\n'
        f'key_file = "{pki / "server.key"}"\n'
        f'ca_file = "{pki / "ca.pem"}"\n'
        "require_client_cert = true\n"
    )


def _client_tls(pki: Path) -> list[str]:
    return ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]


def _echoscu(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    exe = require_program("echoscu")
    return subprocess.run(
        [exe, "-v", "-aet", "ECHOSCU", "-aec", "SEGAPPLIANCE", *extra, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=nodelay_env(),
    )


def test_dcmtk_echo_and_store_over_tls_plaintext_refused(
    tmp_path: Path, pki: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(extra=_tls_section(pki))

    ok = _echoscu(app.port, *_client_tls(pki))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Received Echo Response (Success)" in ok.stdout + ok.stderr

    identity = SeriesIdentity()
    files = write_series(
        tmp_path / "ct", SeriesGeometry(slices=4, rows=32, columns=32), identity=identity
    )
    stored = storescu(app.port, files, extra=_client_tls(pki))
    output = stored.stdout + stored.stderr
    assert stored.returncode == 0, output
    assert output.count("Received Store Response (Success)") == len(files)
    spooled = list((app.root / "spool" / identity.study_uid).rglob("*.dcm"))
    assert len(spooled) == len(files)

    # plaintext to the TLS port: no association, nothing stored
    plain = _echoscu(app.port)
    assert plain.returncode != 0
    assert "Echo Response" not in plain.stdout + plain.stderr
    other = SeriesIdentity()
    refused = storescu(
        app.port, write_series(tmp_path / "ct2", SeriesGeometry(3, 16, 16), identity=other)
    )
    assert refused.returncode != 0
    assert "Store Response" not in refused.stdout + refused.stderr
    # TLS without a client certificate: refused too (require_client_cert)
    anonymous = _echoscu(app.port, "+tla", "+cf", str(pki / "ca.pem"))
    assert anonymous.returncode != 0
    assert not (app.root / "spool" / other.study_uid).exists()


def test_outbox_sends_over_tls_to_dcmtk_storescp(
    tmp_path: Path, pki: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    exe = require_program("storescp")
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    server = [
        "+tls", str(pki / "server.key"), str(pki / "server.pem"),
        "+cf", str(pki / "ca.pem"), "-rc",
    ]  # fmt: skip
    pacs = Process(
        [exe, "-aet", "TLSPACS", *server, "-od", str(out), str(port)],
        tmp_path / "storescp.log",
        env=nodelay_env(),
    )
    try:
        wait_port(port, proc=pacs.proc, log=pacs.log)
        destination = (
            "[[destinations]]\n"
            'name = "tlspacs"\nae_title = "TLSPACS"\nhost = "localhost"\n'
            f"port = {port}\n"
            "[destinations.tls]\n"
            f'ca_file = "{pki / "ca.pem"}"\n'
            f'cert_file = "{pki / "client.pem"}"\n'
            f'key_file = "{pki / "client.key"}"\n'
        )
        app = appliance_factory(extra=destination)
        files = write_series(tmp_path / "ct", SeriesGeometry(slices=2, rows=16, columns=16))
        app.cli("send", "tlspacs", *map(str, files))

        def delivered() -> bool:
            return len(list(out.iterdir())) == len(files)

        wait_for(delivered, 60, "the outbox did not deliver over TLS")
        sent = sorted(dcmread(f).SOPInstanceUID for f in files)
        assert sorted(dcmread(p).SOPInstanceUID for p in out.iterdir()) == sent
    finally:
        pacs.stop()
