"""Connection abuse against a real ``appliance serve``: 10 sockets sending half an
A-ASSOCIATE-RQ plus 20 silent ones, held open, must not lock out a legitimate dcmtk
``echoscu``/``storescu`` (plain and TLS); the refusals show in ``/metrics``.

Every socket comes from 127.0.0.1, as the legitimate caller does, so the per-peer cap
applies to both. The test sets ``max_connections_per_peer = 12`` and
``first_pdu_timeout_seconds = 5`` to show both effects: 12 abusive connections are
accepted and hold slots (more than the 10 association slots), the other 18 are closed at
once (``per_peer_limit``); the legitimate caller is refused too while the 12 are open, and
gets through, retrying, once the first-PDU deadline has shut them (``first_pdu_timeout``),
well within 35 s. With the defaults (cap 8, deadline 30 s) a single abusive address holds
at most 8 of the 10 slots, so callers from other addresses are never locked out.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.interop.test_operations import _metric
from tests.interop.test_roundtrip_seg import wait_for
from tests.peers import (
    ApplianceProcess,
    free_port,
    make_pki,
    nodelay_env,
    require_program,
    storescu,
)

# alone: a legitimate caller must get through within 35 s, timed
pytestmark = [pytest.mark.interop, pytest.mark.alone]

HALF_RQ = bytes([0x01, 0x00, 0x00, 0x00, 0x00, 0xCD, 0x00, 0x01, 0x00, 0x00])
GUARD = "first_pdu_timeout_seconds = 5\nmax_connections_per_peer = 12\n"


def _start(
    factory: Callable[..., ApplianceProcess], http_port: int, extra: str = ""
) -> ApplianceProcess:
    app = factory(start=False, extra=f"[http]\nenabled = true\nport = {http_port}\n{extra}")
    text = app.config.read_text()
    app.config.write_text(text.replace("[storage]\n", GUARD + "[storage]\n", 1))
    return app.start()


def _abuse(port: int) -> list[socket.socket]:
    socks = []
    for i in range(30):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i < 10:
                sock.sendall(HALF_RQ)
        except OSError:
            continue  # already closed by the per-peer cap
        socks.append(sock)
    return socks


def _refused(http_port: int, reason: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as rsp:
        metrics = rsp.read().decode()
    return _metric(metrics, "appliance_connections_refused_total", reason=reason)


def _echoscu(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(require_program("echoscu"), "-to", "5", "-aet", "ECHOSCU", "-aec", "SEGAPPLIANCE"),
            *(*extra, "127.0.0.1", str(port)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=nodelay_env(),
    )


def _legitimate_caller_gets_through(
    app: ApplianceProcess, tmp_path: Path, http_port: int, tls: list[str], reasons: list[str]
) -> str:
    socks = _abuse(app.port)
    started = time.monotonic()
    try:

        def echoed() -> bool:
            return _echoscu(app.port, *tls).returncode == 0

        wait_for(echoed, 35, "echoscu never got through")
        files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=16, columns=16))
        stored = storescu(app.port, files, extra=tls, timeout=30)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert (stored.stdout + stored.stderr).count("Store Response (Success)") == len(files)
        assert time.monotonic() - started < 35
    finally:
        for sock in socks:
            sock.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as rsp:
        metrics = rsp.read().decode()
    for reason in reasons:
        assert _metric(metrics, "appliance_connections_refused_total", reason=reason) > 0, reason
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as rsp:
        assert rsp.status == 200
    return metrics


def test_half_requests_and_silent_connections_do_not_lock_out_callers(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    http_port = free_port()
    app = _start(appliance_factory, http_port)
    metrics = _legitimate_caller_gets_through(
        app, tmp_path, http_port, [], ["per_peer_limit", "first_pdu_timeout"]
    )
    # 30 abusive sockets, 12 accepted: 18 closed on accept (plus echoscu's early tries)
    assert _metric(metrics, "appliance_connections_refused_total", reason="per_peer_limit") >= 18
    # the 12 accepted ones are all shut at their deadline (some may still be closing)
    wait_for(lambda: _refused(http_port, "first_pdu_timeout") >= 12, 10, "12 first-PDU timeouts")


def test_silent_tls_connections_do_not_lock_out_tls_callers(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls_section = (
        "[dicom.tls]\n"
        f'cert_file = "{pki / "server.pem"}"\n'
        f'key_file = "{pki / "server.key"}"\n'
        f'ca_file = "{pki / "ca.pem"}"\n'
        "require_client_cert = true\n"
    )
    client = ["+tls", str(pki / "client.key"), str(pki / "client.pem"), "+cf", str(pki / "ca.pem")]
    http_port = free_port()
    app = _start(appliance_factory, http_port, tls_section)
    # the half A-ASSOCIATE-RQs are no TLS ClientHello: their handshakes fail at once
    # (tls_handshake); the silent ones wait for the deadline (first_pdu_timeout)
    _legitimate_caller_gets_through(
        app, tmp_path, http_port, client, ["per_peer_limit", "first_pdu_timeout", "tls_handshake"]
    )
