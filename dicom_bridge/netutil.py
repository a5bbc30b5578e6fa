"""Small pynetdicom helpers shared by the listener and the sender.

* :func:`set_tcp_nodelay` - an ``evt.EVT_CONN_OPEN`` handler. pynetdicom never sets
  ``TCP_NODELAY``; with Nagle's algorithm plus the peer's delayed ACK every small PDU
  (a C-STORE response, the last fragment of a dataset) waits up to ~40 ms, which caps a
  loopback transfer at about 20 images/s.
* :func:`quiet_identifiers` - stop pynetdicom logging C-FIND/C-GET/C-MOVE identifier
  datasets, which carry patient names and IDs.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import _config

LOGGER = logging.getLogger(__name__)


def set_tcp_nodelay(event: Any) -> None:
    """Set ``TCP_NODELAY`` on the association's socket; never raises.

    Bind it with ``evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay)]`` on
    ``AE.associate`` (requestor) or ``AE.start_server`` (acceptor).
    """
    try:
        sock = event.assoc.dul.socket.socket
    except AttributeError:
        return
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # closed already, or not a TCP socket
        LOGGER.debug("could not set TCP_NODELAY: %s", exc)


def quiet_identifiers() -> None:
    """Turn off pynetdicom's logging of request/response identifier datasets."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
