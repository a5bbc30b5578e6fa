"""A bare pynetdicom C-STORE SCP that discards what it receives: the library's ceiling.

Run as ``python -m benchmarks.bare_scp PORT [AE_TITLE]``. It accepts the same storage
classes, transfer syntaxes and maximum PDU size as the appliance's listener and sets
``TCP_NODELAY`` on each accepted socket, but its C-STORE handler returns success without
touching the dataset (no decode, no copy, no disk). Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_bridge.netutil import quiet_identifiers, set_tcp_nodelay
from dicom_bridge.sop_classes import ACCEPTED_STORAGE_CLASSES, ACCEPTED_TRANSFER_SYNTAXES

MAX_PDU = 131072  # the appliance's default [dicom] max_pdu_size


def _discard(event: Any) -> int:
    return 0x0000


def _echo(event: Any) -> int:
    return 0x0000


def serve(port: int, ae_title: str = "BARESCP") -> None:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # as the appliance does
    quiet_identifiers()
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    ae.acse_timeout = 30
    ae.add_supported_context(Verification)
    for sop_class in ACCEPTED_STORAGE_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, set_tcp_nodelay),
        (evt.EVT_C_ECHO, _echo),
        (evt.EVT_C_STORE, _discard),
    ]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    stop = threading.Event()

    def _signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _signal)
    signal.signal(signal.SIGINT, _signal)
    stop.wait()
    if server is not None:
        server.shutdown()


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print("usage: python -m benchmarks.bare_scp PORT [AE_TITLE]", file=sys.stderr)
        return 2
    serve(int(argv[0]), *(argv[1:2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
