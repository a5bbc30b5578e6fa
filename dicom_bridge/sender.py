"""C-STORE / C-ECHO service class user: send DICOM files to a remote application entity.

* :func:`echo` checks that a node answers (C-ECHO) and raises :class:`SendError` with a
  clear reason when it does not.
* :func:`send_files` sends files over one association. Presentation contexts come from
  the files' own SOP class and transfer syntax (read from the file meta only), so a
  JPEG 2000 CT or an RLE SEG goes out exactly as it is stored. An uncompressed file is
  also offered in Explicit and Implicit VR Little Endian; when the peer accepts only
  another uncompressed syntax the file is decoded and re-encoded (the slow path).
  Otherwise a file is streamed from disk without being decoded (the fast path).

Per-file outcomes come back as :class:`SendResult`; only a failure to establish the
association raises. No patient-identifying data reaches logs or error texts: instances
are referred to by :func:`dicom_bridge.uids.short_ref` of their SOP Instance UID.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicom_bridge.errors import InvalidUIDError, SendError
from dicom_bridge.netutil import quiet_identifiers, set_tcp_nodelay
from dicom_bridge.sop_classes import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    UNCOMPRESSED_SYNTAXES,
)
from dicom_bridge.uids import short_ref, validate_uid

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AE: Final = "SEGAPPLIANCE"
#: Statuses that mean the peer stored the instance (success, or a storage warning).
STORED_STATUSES: Final[frozenset[int]] = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
#: An association carries at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS: Final = 128
#: Largest P-DATA PDU we accept from the peer (only responses come our way).
MAX_RECEIVE_PDU: Final = 131072
ABORTED: Final = "association aborted"

_LITTLE_ENDIAN_UNCOMPRESSED: Final = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
#: Native (not encapsulated) pixel data. Anything else, private syntaxes included, is sent
#: only in its own transfer syntax (pydicom's ``UID.is_compressed`` raises for unknown UIDs).
_NATIVE: Final[frozenset[UID]] = frozenset(UNCOMPRESSED_SYNTAXES)


# --- Configuration values ---------------------------------------------------------------


def validate_ae_title(value: object, *, what: str = "AE title") -> str:
    """Return ``value`` as a valid AE title (1-16 chars, no backslash/control chars)."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    if not 1 <= len(value) <= 16:
        raise ValueError(f"{what} must have 1 to 16 characters, not {len(value)}")
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError(f"{what} must not contain a backslash or control characters")
    if not value.isascii():
        raise ValueError(f"{what} must be ASCII")
    if not value.strip(" "):
        raise ValueError(f"{what} must not be all spaces")
    return value


@dataclass(frozen=True, slots=True)
class TlsClientSettings:
    """TLS for an association: whom to trust and, optionally, our client certificate.

    ``ca_file`` None trusts the system's default certificate authorities. The server's
    certificate must name the node's ``host``.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS client cert_file and key_file go together")

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context (TLS 1.2 or newer, server certificate verified)."""
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=str(self.ca_file) if self.ca_file is not None else None,
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None and self.key_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise SendError(f"cannot load the TLS certificates/key: {exc}") from exc
        return context


@dataclass(frozen=True, slots=True)
class RemoteNode:
    """A remote DICOM application entity (a PACS, a viewer, a router)."""

    ae_title: str
    host: str
    port: int
    calling_ae: str = DEFAULT_CALLING_AE
    timeout_s: float = 30.0
    tls: TlsClientSettings | None = None

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title, what="called AE title")
        validate_ae_title(self.calling_ae, what="calling AE title")
        if not isinstance(self.host, str) or not self.host or self.host != self.host.strip():
            raise ValueError("host must be a non-empty name or address without spaces")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("port must be an integer")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, not {self.port}")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float):
            raise ValueError("timeout_s must be a number")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError("timeout_s must be a positive number of seconds")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one file."""

    path: Path
    sop_instance_uid: str
    status: int | None  # DICOM status from the peer; None when there was no response
    ok: bool  # stored: success or a storage warning status
    error: str | None  # why not, when not ok (never patient data)


# --- C-ECHO -----------------------------------------------------------------------------


def echo(node: RemoteNode) -> None:
    """C-ECHO ``node``; raise :class:`SendError` saying why when it does not answer OK."""
    ae = _application_entity(node)
    tracker = _AssociationTracker()
    assoc = _associate(ae, node, [build_context(Verification)], tracker)
    if not assoc.is_established:
        raise SendError(_association_failure(node, assoc, tracker, what="C-ECHO"))
    _keep_reactor_off_responses(assoc)
    try:
        rsp = assoc.send_c_echo()
        status = _status_of(rsp)
    finally:
        _finish(assoc)
    if status is None:
        raise SendError(f"no C-ECHO response from {node} within {node.timeout_s:g} s")
    if status != 0x0000:
        raise SendError(f"{node} answered C-ECHO with status 0x{status:04X}")
    LOGGER.info("C-ECHO %s ok", node)


# --- C-STORE ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileHeader:
    path: Path
    sop_class: UID
    sop_instance: str
    transfer_syntax: UID


def send_files(node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
    """Send ``paths`` to ``node`` over one association; one result per path, in order.

    Raises :class:`SendError` only when the association cannot be established (refused
    connection, rejected AE titles, no answer, TLS failure). A file the peer has no
    presentation context for, or that it refuses, comes back with ``ok=False``.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return []
    results: dict[int, SendResult] = {}
    headers: dict[int, _FileHeader] = {}
    for index, path in enumerate(paths):
        header_or_error = _read_header(path)
        if isinstance(header_or_error, str):
            results[index] = SendResult(path, "", None, False, header_or_error)
        else:
            headers[index] = header_or_error
    if not headers:
        return [results[i] for i in range(len(paths))]

    contexts, dropped = _build_contexts(list(headers.values()))
    if dropped:
        LOGGER.warning(
            "%d presentation contexts over the limit of %d were not proposed to %s",
            dropped,
            MAX_CONTEXTS,
            node,
        )
    ae = _application_entity(node)
    tracker = _AssociationTracker()
    started = time.monotonic()
    assoc = _associate(ae, node, contexts, tracker)
    if not assoc.is_established:
        if _no_context_accepted(assoc):
            # The peer answered but accepted none of the proposals: a per-file outcome.
            for index, header in headers.items():
                results[index] = _result(header, None, _no_context_message(header))
            return [results[i] for i in range(len(paths))]
        raise SendError(_association_failure(node, assoc, tracker, what="C-STORE"))

    _keep_reactor_off_responses(assoc)
    alive = True
    try:
        for index, header in headers.items():
            if alive and assoc.is_established:
                results[index], alive = _store_one(assoc, node, header)
            else:
                results[index] = _result(header, None, ABORTED)
    finally:
        if alive:
            _finish(assoc)
        else:
            assoc.abort()  # no-op when the peer has aborted already

    ordered = [results[i] for i in range(len(paths))]
    stored = sum(r.ok for r in ordered)
    elapsed = time.monotonic() - started
    LOGGER.info(
        "C-STORE %s: %d/%d stored in %.2f s (%.1f/s)",
        node,
        stored,
        len(ordered),
        elapsed,
        stored / elapsed if elapsed > 0 else 0.0,
    )
    return ordered


def _store_one(
    assoc: Association, node: RemoteNode, header: _FileHeader
) -> tuple[SendResult, bool]:
    """Send one file; the flag is False when the association is gone afterwards."""
    ref = short_ref(header.sop_instance)
    mode = _send_mode(assoc, header)
    if mode is None:
        LOGGER.warning("instance %s not sent: no accepted presentation context", ref)
        return _result(header, None, _no_context_message(header)), True
    started = time.monotonic()
    try:
        if mode == "file":
            # Streams the encoded dataset from disk (STORE_SEND_CHUNKED_DATASET).
            rsp = assoc.send_c_store(header.path)
        else:
            try:
                dataset = dcmread(header.path)
            except Exception as exc:  # pydicom raises several types for a broken file
                LOGGER.warning("instance %s not sent: %s", ref, type(exc).__name__)
                return _result(header, None, f"cannot decode the file ({type(exc).__name__})"), True
            rsp = assoc.send_c_store(dataset)
    except OSError as exc:
        LOGGER.warning("instance %s not sent: cannot read the file", ref)
        return _result(header, None, f"cannot read the file: {exc.strerror or exc}"), True
    except RuntimeError:  # the association went away before the request
        return _result(header, None, ABORTED), False
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        # Messages from pydicom can quote element values, so only the kind is kept.
        LOGGER.warning("instance %s not sent: %s", ref, type(exc).__name__)
        error = f"cannot encode the dataset ({type(exc).__name__})"
        return _result(header, None, error), True

    status = _status_of(rsp)
    if status is None:
        if time.monotonic() - started >= node.timeout_s:
            error = f"no C-STORE response within {node.timeout_s:g} s; {ABORTED}"
        else:
            error = ABORTED
        LOGGER.warning("instance %s: no response (%s)", ref, error)
        return _result(header, None, error), False
    if status in STORED_STATUSES:
        if status != 0x0000:
            LOGGER.warning("instance %s stored with warning 0x%04X", ref, status)
        return _result(header, status, None), True
    text = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), ""))[1]
    error = f"peer refused the instance: status 0x{status:04X}"
    if text:
        error += f" ({text})"
    LOGGER.warning("instance %s: %s", ref, error)
    return _result(header, status, error), True


def _send_mode(assoc: Association, header: _FileHeader) -> str | None:
    """``"file"`` for an exact accepted context, ``"dataset"`` to re-encode, else None."""
    accepted = [
        cx.transfer_syntax[0]
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == header.sop_class and cx.as_scu
    ]
    ts = header.transfer_syntax
    if ts in accepted:
        return "file"
    if ts not in _NATIVE or ts == EXPLICIT_VR_BE:
        return None  # pynetdicom converts only between little endian native syntaxes
    if any(a in _LITTLE_ENDIAN_UNCOMPRESSED for a in accepted):
        return "dataset"
    return None


def _result(header: _FileHeader, status: int | None, error: str | None) -> SendResult:
    return SendResult(
        path=header.path,
        sop_instance_uid=header.sop_instance,
        status=status,
        ok=error is None and status in STORED_STATUSES,
        error=error,
    )


def _no_context_message(header: _FileHeader) -> str:
    return (
        f"no accepted presentation context for {header.sop_class.name} "
        f"in {header.transfer_syntax.name}"
    )


def _read_header(path: Path) -> _FileHeader | str:
    """The file meta of ``path``, or a short reason why it cannot be sent."""
    try:
        meta = read_file_meta_info(path)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    except Exception as exc:  # pydicom raises several types for a non-DICOM file
        return f"not a DICOM file with file meta information ({type(exc).__name__})"
    missing = [
        kw
        for kw in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        if not meta.get(kw)
    ]
    if missing:
        return f"file meta information lacks {', '.join(missing)}"
    try:
        sop_class = validate_uid(meta.MediaStorageSOPClassUID, what="SOP Class UID")
        sop_instance = validate_uid(meta.MediaStorageSOPInstanceUID, what="SOP Instance UID")
        syntax = validate_uid(meta.TransferSyntaxUID, what="Transfer Syntax UID")
    except InvalidUIDError as exc:
        return f"file meta information: {exc}"
    return _FileHeader(path, UID(sop_class), sop_instance, UID(syntax))


def _build_contexts(headers: Sequence[_FileHeader]) -> tuple[list[PresentationContext], int]:
    """Presentation contexts for ``headers``, at most :data:`MAX_CONTEXTS`; and how many
    were left out.

    Needed, in order of first appearance: one context per SOP class with the
    uncompressed little endian syntaxes (the file's own first), and one per SOP class
    and compressed syntax. Nice to have (they save a re-encode): an exact context for
    a deflated or big endian file. The needed ones are proposed first.
    """
    needed: dict[tuple[UID, tuple[UID, ...]], None] = {}
    uncompressed_seen: set[UID] = set()
    extra: dict[tuple[UID, tuple[UID, ...]], None] = {}
    for h in headers:
        ts = h.transfer_syntax
        if ts not in _NATIVE:
            needed[(h.sop_class, (ts,))] = None
            continue
        if h.sop_class not in uncompressed_seen:
            uncompressed_seen.add(h.sop_class)
            first = ts if ts in _LITTLE_ENDIAN_UNCOMPRESSED else EXPLICIT_VR_LE
            order = (first, *(t for t in _LITTLE_ENDIAN_UNCOMPRESSED if t != first))
            needed[(h.sop_class, order)] = None
        if ts not in _LITTLE_ENDIAN_UNCOMPRESSED:
            extra[(h.sop_class, (ts,))] = None
    wanted = [*needed, *(key for key in extra if key not in needed)]
    contexts = [build_context(sop, list(syntaxes)) for sop, syntaxes in wanted[:MAX_CONTEXTS]]
    return contexts, max(0, len(wanted) - MAX_CONTEXTS)


# --- Association plumbing ---------------------------------------------------------------

_configured = False
_configure_lock = threading.Lock()


def _configure_pynetdicom() -> None:
    """Process-wide pynetdicom settings, applied once.

    ``STORE_SEND_CHUNKED_DATASET`` makes ``send_c_store(path)`` stream the encoded
    dataset from disk instead of decoding it first (it then needs an exact transfer
    syntax match, which :func:`_send_mode` checks).
    """
    global _configured
    with _configure_lock:
        if not _configured:
            quiet_identifiers()
            _config.STORE_SEND_CHUNKED_DATASET = True
            _configured = True


def _application_entity(node: RemoteNode) -> AE:
    _configure_pynetdicom()
    ae = AE(ae_title=node.calling_ae)
    ae.acse_timeout = node.timeout_s
    ae.dimse_timeout = node.timeout_s
    ae.network_timeout = node.timeout_s
    ae.connection_timeout = node.timeout_s
    ae.maximum_pdu_size = MAX_RECEIVE_PDU
    return ae


class _AssociationTracker:
    """Remembers what came over the wire, to explain a failed association.

    pynetdicom 3.0 can lose a fast A-ASSOCIATE-RJ: when the peer rejects and closes the
    connection before the requesting thread looks, the request is treated as a failed
    connection and ``Association.is_rejected`` stays False. The PDU events still fire.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.connected = False
        self.rejection: tuple[int, int, int] | None = None  # (result, source, reason)
        self.peer_abort: tuple[int, int] | None = None  # (source, reason)

    def on_conn_open(self, event: Any) -> None:
        self.connected = True

    def on_pdu_recv(self, event: Any) -> None:
        pdu = event.pdu
        if isinstance(pdu, A_ASSOCIATE_RJ):
            self.rejection = (pdu.result or 0, pdu.source or 0, pdu.reason_diagnostic or 0)
        elif isinstance(pdu, A_ABORT_RQ):
            self.peer_abort = (pdu.source or 0, pdu.reason_diagnostic or 0)

    def handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_PDU_RECV, self.on_pdu_recv),
        ]


def _associate(
    ae: AE,
    node: RemoteNode,
    contexts: list[PresentationContext],
    tracker: _AssociationTracker,
) -> Association:
    tls_args = None
    if node.tls is not None:
        tls_args = (node.tls.ssl_context(), node.host)
    return ae.associate(
        node.host,
        node.port,
        contexts=contexts,
        ae_title=node.ae_title,
        max_pdu=MAX_RECEIVE_PDU,
        tls_args=tls_args,
        evt_handlers=tracker.handlers(),
    )


def _keep_reactor_off_responses(assoc: Association) -> None:
    """Stop the association's reactor thread from taking DIMSE messages off the queue.

    pynetdicom 3.0 pauses its reactor around each ``send_c_store`` with a flag that can be
    stale: the reactor, just woken by the end of the previous send, may still look paused
    while it is about to poll the DIMSE queue. If the peer's C-STORE-RSP arrives in that
    moment (a fast peer, TCP_NODELAY, a busy CPU) the reactor takes it ("Received
    unexpected C-STORE service message") and the send waits for the DIMSE timeout.
    Seen here about once in 20-40 runs of 200 images on a loaded 2-core machine.

    As a pure SCU we never serve requests from the peer, so the reactor has nothing to
    take: its non-blocking polls get nothing, while the sending thread still reads its
    responses. Without the expected pynetdicom internals this does nothing.
    """
    dimse = getattr(assoc, "dimse", None)
    get_msg = getattr(dimse, "get_msg", None)
    if dimse is None or get_msg is None:
        return

    def guarded(block: bool = False) -> Any:
        if threading.current_thread() is assoc and not block:
            return None, None
        return get_msg(block=block)

    dimse.get_msg = guarded


def _no_context_accepted(assoc: Association) -> bool:
    primitive = assoc.acceptor.primitive
    return primitive is not None and getattr(primitive, "result", None) == 0x00


_REJECT_REASONS: Final[dict[int, dict[int, str]]] = {
    1: {
        1: "no reason given",
        2: "application context name not supported",
        3: "calling AE title not recognised",
        7: "called AE title not recognised",
    },
    2: {1: "no reason given", 2: "protocol version not supported"},
    3: {1: "temporary congestion", 2: "local limit exceeded"},
}
_REJECT_SOURCES: Final[dict[int, str]] = {
    1: "service user",
    2: "service provider (ACSE)",
    3: "service provider (presentation)",
}


def _association_failure(
    node: RemoteNode, assoc: Association, tracker: _AssociationTracker, *, what: str
) -> str:
    """A clear sentence for a failed association request."""
    if tracker.rejection is not None:
        result, source, diagnostic = tracker.rejection
        reason = _REJECT_REASONS.get(source, {}).get(diagnostic, f"reason {diagnostic}")
        if source == 1 and diagnostic == 3:
            reason += f" (we called as {node.calling_ae!r})"
        elif source == 1 and diagnostic == 7:
            reason += f" (we called {node.ae_title!r})"
        kind = "permanently" if result == 1 else "transiently"
        where = _REJECT_SOURCES.get(source, "peer")
        return f"{node} {kind} rejected the association: {reason} [{where}]"
    if _no_context_accepted(assoc):
        return f"{node} accepted none of the proposed presentation contexts for {what}"
    if not tracker.connected:
        return _connection_failure(node)
    if tracker.peer_abort is not None:
        source, reason_code = tracker.peer_abort
        by = "peer" if source == 0 else "peer's DICOM stack"
        return f"{node} aborted the association request ({by}, reason {reason_code})"
    if assoc.acceptor.primitive is None:
        if time.monotonic() - tracker.started >= node.timeout_s:
            return f"no answer from {node} to the association request within {node.timeout_s:g} s"
        return f"{node} closed the connection without answering the association request"
    return f"association with {node} failed"


def _connection_failure(node: RemoteNode) -> str:
    """Find out why the TCP (or TLS) connection failed; pynetdicom only logs it."""
    address = f"{node.host}:{node.port}"
    probe_timeout = min(node.timeout_s, 5.0)
    try:
        with socket.create_connection((node.host, node.port), timeout=probe_timeout):
            pass
    except ConnectionRefusedError:
        return f"connection refused by {address} (is the DICOM node running on that port?)"
    except socket.gaierror:
        return f"cannot resolve host {node.host!r}"
    except TimeoutError:
        return f"no answer from {address} within {node.timeout_s:g} s (host down or firewall)"
    except OSError as exc:
        return f"cannot connect to {address}: {exc.strerror or exc}"
    if node.tls is not None:
        return f"TLS handshake with {address} failed (check certificates and TLS settings)"
    return f"connection to {address} failed or was closed by the peer"


def _status_of(rsp: Dataset | None) -> int | None:
    if rsp is None:
        return None
    status = rsp.get("Status")
    return int(status) if status is not None else None


def _finish(assoc: Association) -> None:
    """Release the association when still up; never raises."""
    try:
        if assoc.is_established:
            assoc.release()
    except Exception:  # pragma: no cover - the peer vanished while releasing
        LOGGER.debug("release failed", exc_info=True)
        assoc.abort()


__all__ = [
    "DEFAULT_CALLING_AE",
    "MAX_CONTEXTS",
    "STORED_STATUSES",
    "RemoteNode",
    "SendResult",
    "TlsClientSettings",
    "echo",
    "send_files",
    "validate_ae_title",
]
