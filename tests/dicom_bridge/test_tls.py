"""DICOM TLS between our listener and our sender, with certificates made in the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_bridge.errors import SendError
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import Listener, ListenerSettings, Publish, TlsServerSettings
from dicom_bridge.sender import RemoteNode, TlsClientSettings, echo, send_files
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import free_port, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_listener(tmp_path: Path, pki: Path) -> Iterator[tuple[Listener, list[str]]]:
    received: list[str] = []

    def on_instance(inst: ReceivedInstance, publish: Publish) -> None:
        received.append(inst.key.sop_uid)

    tls = TlsServerSettings(
        pki / "server.pem", pki / "server.key", pki / "ca.pem", require_client_cert=True
    )
    listener = Listener(
        ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port(), tls=tls),
        Spool(tmp_path / "spool"),
        on_instance,
    )
    listener.start()
    yield listener, received
    listener.stop()


def test_tls_echo_and_store_with_client_certificate(
    tmp_path: Path, pki: Path, tls_listener: tuple[Listener, list[str]]
) -> None:
    listener, received = tls_listener
    tls = TlsClientSettings(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", listener.port, tls=tls, timeout_s=10)
    echo(node)
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=16, columns=16))
    results = send_files(node, files)
    assert [r.ok for r in results] == [True, True, True]
    assert sorted(received) == sorted(r.sop_instance_uid for r in results)


def test_tls_port_refuses_plaintext_and_clients_without_certificate(
    pki: Path, tls_listener: tuple[Listener, list[str]]
) -> None:
    listener, received = tls_listener
    plain = RemoteNode("SEGAPPLIANCE", "127.0.0.1", listener.port, timeout_s=5)
    with pytest.raises(SendError):
        echo(plain)
    no_cert = RemoteNode(
        "SEGAPPLIANCE",
        "127.0.0.1",
        listener.port,
        timeout_s=5,
        tls=TlsClientSettings(pki / "ca.pem"),
    )
    with pytest.raises(SendError):
        echo(no_cert)
    assert received == []
