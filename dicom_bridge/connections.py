"""Connection guarding for the listener: nobody who merely reaches the port can lock out
the other callers.

pynetdicom's server accepts a connection with no socket timeout and, with TLS, runs the
handshake on its single accept thread. A peer that sends half an A-ASSOCIATE-RQ then
holds an association slot forever (the DUL thread waits in ``recv``, so neither the
ACSE nor the DIMSE timer can end it), and one silent TLS peer stops every other TLS
caller. :class:`GuardedServer` replaces the accept path:

* every accepted socket gets a timeout, and one deadline, ``first_pdu_timeout`` after
  the accept, bounds the TLS handshake plus the A-ASSOCIATE-RQ: a connection that has
  not delivered a complete A-ASSOCIATE-RQ by then is shut down (counted as
  ``first_pdu_timeout``). Once the request has arrived the socket's timeout becomes the
  AE's network timeout;
* the TLS handshake runs unhandshaken off the accept thread
  (``do_handshake_on_connect=False``), in the connection's own thread, under that
  deadline (a failure is counted as ``tls_handshake``);
* at most ``max_connections_per_peer`` concurrent connections per peer address; one
  more is closed at once on the accept thread (``per_peer_limit``), before it has a
  thread or an association slot;
* a PDU whose header declares more than :meth:`GuardSettings.pdu_limit` closes the
  connection before its body is read (``pdu_too_large``): pynetdicom would otherwise
  accumulate up to 4 GiB for one PDU.

Each refusal is reported through ``on_refused`` and logged at most once per peer and
reason a minute.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

LOG = logging.getLogger(__name__)

#: Seconds between two log lines about the same peer and reason.
LOG_INTERVAL_SECONDS = 60.0
#: The longest PDU other than P-DATA-TF read from a peer.
MAX_OTHER_PDU_BYTES = 1 << 20
_P_DATA_TF = 0x04


class RefusalReason(StrEnum):
    PER_PEER_LIMIT = "per_peer_limit"
    FIRST_PDU_TIMEOUT = "first_pdu_timeout"
    TLS_HANDSHAKE = "tls_handshake"
    PDU_TOO_LARGE = "pdu_too_large"


@dataclass(frozen=True, slots=True)
class RefusedConnection:
    """A connection closed before it became an association (no patient data)."""

    reason: RefusalReason
    peer_host: str
    detail: str


ConnectionCallback = Callable[[RefusedConnection], None]


@dataclass(frozen=True, slots=True)
class GuardSettings:
    first_pdu_timeout: float = 30.0
    max_connections_per_peer: int = 8
    network_timeout: float | None = 60.0
    #: the P-DATA-TF length this AE advertises (its Maximum Length Received)
    max_pdu_size: int = 131072

    def pdu_limit(self, pdu_type: int) -> int:
        """The longest PDU of ``pdu_type`` read from a peer: what was advertised for
        P-DATA-TF (PS3.8 D.1: the peer must not send more), 1 MiB for the others (an
        A-ASSOCIATE-RQ with every presentation context is a few tens of KiB)."""
        return self.max_pdu_size if pdu_type == _P_DATA_TF else MAX_OTHER_PDU_BYTES


class ConnectionGuard:
    """Per-peer connection counts, and refusals reported and (rate-limited) logged."""

    def __init__(
        self,
        settings: GuardSettings,
        on_refused: ConnectionCallback | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._on_refused = on_refused
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._logged: dict[tuple[str, RefusalReason], float] = {}
        self._suppressed: dict[tuple[str, RefusalReason], int] = {}

    def acquire(self, peer: str) -> bool:
        with self._lock:
            count = self._open.get(peer, 0)
            if count >= self.settings.max_connections_per_peer:
                return False
            self._open[peer] = count + 1
            return True

    def release(self, peer: str) -> None:
        with self._lock:
            count = self._open.get(peer, 0) - 1
            if count > 0:
                self._open[peer] = count
            else:
                self._open.pop(peer, None)

    def open_connections(self, peer: str) -> int:
        with self._lock:
            return self._open.get(peer, 0)

    def refuse(self, reason: RefusalReason, peer: str, detail: str) -> None:
        key = (peer, reason)
        now = self._clock()
        with self._lock:
            last = self._logged.get(key)
            if last is not None and now - last < LOG_INTERVAL_SECONDS:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                suppressed = -1
            else:
                self._logged[key] = now
                suppressed = self._suppressed.pop(key, 0)
        if suppressed >= 0:
            more = f" ({suppressed} more in the last minute)" if suppressed else ""
            LOG.warning("connection from %s closed (%s): %s%s", peer, reason, detail, more)
        if self._on_refused is not None:
            try:
                self._on_refused(RefusedConnection(reason, peer, detail))
            except Exception:  # recording must not break the server
                LOG.exception("could not record a refused connection")


class GuardedRequestHandler(RequestHandler):
    """Runs in the connection's own thread: TLS handshake, then the association, with
    the first-PDU deadline watched from here; releases the peer's slot at the end."""

    server: GuardedServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        _bound_pdu_lengths(assoc.dul.socket, self.server.guard, str(self.client_address[0]))
        return assoc

    def handle(self) -> None:
        server = self.server
        guard = server.guard
        peer = str(self.client_address[0])
        sock: socket.socket = self.request
        deadline = server.accepted_at(sock)
        try:
            if isinstance(sock, ssl.SSLSocket) and not self._handshake(sock, peer, deadline):
                return
            assoc = self._create_association()
            requested = threading.Event()

            def _on_requested(event: Any) -> None:
                requested.set()
                assoc.acse_timeout = acse_timeout
                with contextlib.suppress(OSError):
                    sock.settimeout(guard.settings.network_timeout)

            # The acceptor waits acse_timeout for the A-ASSOCIATE-RQ: end that wait at the
            # deadline too, or the association thread (and its slot) outlives the socket.
            acse_timeout = assoc.acse_timeout
            assoc.acse_timeout = max(0.01, deadline - time.monotonic()) + 0.5
            assoc.bind(evt.EVT_REQUESTED, _on_requested)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            while not requested.wait(0.1):
                if time.monotonic() >= deadline:
                    guard.refuse(
                        RefusalReason.FIRST_PDU_TIMEOUT,
                        peer,
                        f"no A-ASSOCIATE-RQ within {guard.settings.first_pdu_timeout:g} s",
                    )
                    _shutdown(sock)
                    break
                if not assoc.is_alive():
                    break
            assoc.join()
        finally:
            guard.release(peer)

    def _handshake(self, sock: ssl.SSLSocket, peer: str, deadline: float) -> bool:
        guard = self.server.guard
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                guard.refuse(
                    RefusalReason.FIRST_PDU_TIMEOUT,
                    peer,
                    f"TLS handshake not done within {guard.settings.first_pdu_timeout:g} s",
                )
                break
            try:
                sock.settimeout(remaining)
                sock.do_handshake()
            except TimeoutError:
                continue  # the loop ends at the deadline
            except (OSError, ValueError) as exc:
                guard.refuse(RefusalReason.TLS_HANDSHAKE, peer, f"TLS handshake failed: {exc}")
                break
            else:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                return True
        _shutdown(sock)
        sock.close()
        return False


def _bound_pdu_lengths(assoc_socket: Any, guard: ConnectionGuard, peer: str) -> None:
    """Wrap ``assoc_socket.recv`` (pynetdicom's DUL reads each PDU as a 6-byte header,
    then a body of the length it declares) so that a body over the limit for its PDU
    type is never read: the connection is shut down and the DUL sees it closed."""
    recv = assoc_socket.recv
    header: list[bytes] = []  # the last header read, while its body is awaited

    def bounded_recv(nr_bytes: int) -> bytearray:
        if not header:
            data = recv(nr_bytes)
            if nr_bytes == 6 and len(data) == 6:
                header.append(bytes(data))
            return data
        pdu_type = header.pop()[0]
        limit = guard.settings.pdu_limit(pdu_type)
        if nr_bytes > limit:
            guard.refuse(
                RefusalReason.PDU_TOO_LARGE,
                peer,
                f"a PDU of type 0x{pdu_type:02X} declares {nr_bytes} bytes (limit {limit})",
            )
            if assoc_socket.socket is not None:
                _shutdown(assoc_socket.socket)
            raise ConnectionAbortedError(f"PDU of {nr_bytes} bytes over the limit of {limit}")
        return cast(bytearray, recv(nr_bytes))

    assoc_socket.recv = bounded_recv


def _shutdown(sock: socket.socket) -> None:
    """Unblock a ``recv`` waiting in another thread (the association's DUL)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with guarded accepts (see the module doc)."""

    # ``stop()`` does not wait for the connections' threads (as pynetdicom's server).
    block_on_close = False
    daemon_threads = True

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
        self.guard = guard
        self._deadlines: dict[int, float] = {}
        self._deadlines_lock = threading.Lock()
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.guard.settings.first_pdu_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        with self._deadlines_lock:
            self._deadlines[id(client)] = time.monotonic() + self.guard.settings.first_pdu_timeout
        return client, address

    def accepted_at(self, sock: socket.socket) -> float:
        """The first-PDU deadline of ``sock`` (taken out of the table)."""
        with self._deadlines_lock:
            deadline = self._deadlines.pop(id(sock), None)
        if deadline is None:
            return time.monotonic() + self.guard.settings.first_pdu_timeout
        return deadline

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0])
        if self.guard.acquire(peer):
            return True
        with self._deadlines_lock:
            self._deadlines.pop(id(request), None)
        self.guard.refuse(
            RefusalReason.PER_PEER_LIMIT,
            peer,
            f"more than {self.guard.settings.max_connections_per_peer} concurrent connections",
        )
        return False  # socketserver closes it (shutdown_request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a connection's failure is logged; handle() has released the peer's slot
        LOG.exception("error handling a connection from %s", client_address[0])


def start_guarded_server(
    ae: Any,
    address: tuple[str, int],
    *,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None,
    guard: ConnectionGuard,
) -> GuardedServer:
    """Like ``ae.start_server(address, block=False, ...)``, with a :class:`GuardedServer`."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=GuardedServer,
        guard=guard,
    )
    thread = threading.Thread(target=server.serve_forever, name="AcceptorServer@guarded")
    thread.daemon = True
    thread.start()
    ae._servers.append(server)  # what ae.start_server does; server.shutdown() removes it
    return server
