"""Connection guarding against a real Listener: half-sent A-ASSOCIATE-RQs and silent
connections time out, a peer's connections are capped, a silent TLS peer blocks nobody."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_bridge.connections import (
    ConnectionGuard,
    GuardSettings,
    RefusalReason,
    RefusedConnection,
)
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import Listener, ListenerSettings, Publish, TlsServerSettings
from dicom_bridge.sender import RemoteNode, TlsClientSettings, echo
from dicom_bridge.spool import Spool
from tests.peers import free_port, make_pki

#: The first 10 bytes of an A-ASSOCIATE-RQ: PDU type 1, length 205, protocol version 1.
HALF_RQ = bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0xCD, 0x00, 0x01, 0x00, 0x00])


def _ignore(inst: ReceivedInstance, publish: Publish) -> None:
    return None


def _listener(tmp_path: Path, refused: list[RefusedConnection], **kw: object) -> Listener:
    settings = ListenerSettings(
        "SEGAPPLIANCE",
        "127.0.0.1",
        free_port(),
        max_associations=3,
        first_pdu_timeout=1.5,
        max_connections_per_peer=4,
        **kw,  # type: ignore[arg-type]
    )
    lst = Listener(
        settings, Spool(tmp_path / "spool"), _ignore, on_connection_refused=refused.append
    )
    lst.start()
    return lst


@pytest.fixture
def refused() -> list[RefusedConnection]:
    return []


@pytest.fixture
def plain(tmp_path: Path, refused: list[RefusedConnection]) -> Iterator[Listener]:
    lst = _listener(tmp_path, refused)
    yield lst
    lst.stop()


def _connect(port: int, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True once the peer closes ``sock`` (anything it sends first, e.g. a TLS alert,
    is read and dropped), False if it stays open for ``within`` seconds."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_half_requests_time_out_and_free_the_slots(
    plain: Listener, refused: list[RefusedConnection]
) -> None:
    node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", plain.port, timeout_s=5)
    stuck = [_connect(plain.port, HALF_RQ) for _ in range(3)]  # as many as max_associations
    extra = _connect(plain.port)  # the 4th: the per-peer cap is reached
    over = _connect(plain.port)  # the 5th from this peer: closed at once
    try:
        assert _closed_by_peer(over, 2.0)
        started = time.monotonic()
        for sock in stuck:
            assert _closed_by_peer(sock, 5.0)  # shut down at the first-PDU deadline
        assert time.monotonic() - started < 4.0
        assert _closed_by_peer(extra, 5.0)  # silent: the same deadline
        assert _wait_for(lambda: plain.guard.open_connections("127.0.0.1") == 0, 3.0)
        echo(node)  # every slot is free again
    finally:
        for sock in (*stuck, extra, over):
            sock.close()
    reasons = [r.reason for r in refused]
    assert reasons.count(RefusalReason.PER_PEER_LIMIT) == 1
    assert reasons.count(RefusalReason.FIRST_PDU_TIMEOUT) == 4
    assert all(r.peer_host == "127.0.0.1" for r in refused)


def test_established_association_gets_the_network_timeout(plain: Listener) -> None:
    # a legitimate association is not cut at the first-PDU deadline
    node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", plain.port, timeout_s=5)
    echo(node)
    time.sleep(1.6)
    echo(node)


def test_silent_tls_connection_blocks_nobody(
    tmp_path: Path, refused: list[RefusedConnection]
) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = TlsServerSettings(pki / "server.pem", pki / "server.key", pki / "ca.pem", True)
    lst = _listener(tmp_path, refused, tls=tls)
    silent = _connect(lst.port)  # never starts the handshake
    try:
        client = TlsClientSettings(pki / "ca.pem", pki / "client.pem", pki / "client.key")
        started = time.monotonic()
        echo(RemoteNode("SEGAPPLIANCE", "127.0.0.1", lst.port, tls=client, timeout_s=5))
        assert time.monotonic() - started < 1.4  # before the silent one's deadline
        assert _closed_by_peer(silent, 5.0)
        garbage = _connect(lst.port, b"\x16\x03\x01\x00\x05hello")  # not a ClientHello
        assert _closed_by_peer(garbage, 5.0)
        garbage.close()
    finally:
        silent.close()
        lst.stop()
    reasons = [r.reason for r in refused]
    assert RefusalReason.FIRST_PDU_TIMEOUT in reasons
    assert RefusalReason.TLS_HANDSHAKE in reasons


def test_refusals_are_logged_once_a_minute_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    seen: list[RefusedConnection] = []
    guard = ConnectionGuard(
        GuardSettings(max_connections_per_peer=1), seen.append, clock=lambda: now[0]
    )
    assert guard.acquire("10.0.0.1")
    assert not guard.acquire("10.0.0.1")
    assert guard.acquire("10.0.0.2")
    with caplog.at_level("WARNING", logger="dicom_bridge.connections"):
        for _ in range(5):
            guard.refuse(RefusalReason.PER_PEER_LIMIT, "10.0.0.1", "too many")
        guard.refuse(RefusalReason.PER_PEER_LIMIT, "10.0.0.2", "too many")
        now[0] = 61.0
        guard.refuse(RefusalReason.PER_PEER_LIMIT, "10.0.0.1", "too many")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "4 more in the last minute" in lines[-1]
    assert len(seen) == 7  # every refusal is reported, only the log is throttled
    guard.release("10.0.0.1")
    assert guard.open_connections("10.0.0.1") == 0


def test_a_pdu_declaring_more_than_the_limit_is_never_read(
    plain: Listener, refused: list[RefusedConnection]
) -> None:
    # An A-ASSOCIATE-RQ declaring 4 GiB - 16 bytes, and a P-DATA-TF longer than the
    # Maximum Length this AE advertises: each connection is closed after the 6-byte header.
    node = RemoteNode("SEGAPPLIANCE", "127.0.0.1", plain.port, timeout_s=5)
    huge_rq = _connect(plain.port, bytes([0x01, 0x00]) + (0xFFFFFFF0).to_bytes(4, "big"))
    huge_data = _connect(plain.port, bytes([0x04, 0x00]) + (131072 + 1).to_bytes(4, "big"))
    try:
        huge_data.sendall(b"\x00" * 4096)
        assert _closed_by_peer(huge_rq, 1.0)  # well before the 1.5 s first-PDU deadline
        assert _closed_by_peer(huge_data, 1.0)
    finally:
        huge_rq.close()
        huge_data.close()
    too_large = [r for r in refused if r.reason is RefusalReason.PDU_TOO_LARGE]
    assert len(too_large) == 2
    assert "declares 4294967280 bytes (limit 1048576)" in too_large[0].detail + too_large[1].detail
    assert "declares 131073 bytes (limit 131072)" in too_large[0].detail + too_large[1].detail
    assert _wait_for(lambda: plain.guard.open_connections("127.0.0.1") == 0, 3.0)
    echo(node)  # a legitimate caller is served as before
