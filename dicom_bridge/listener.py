"""The DICOM listener: a pynetdicom C-ECHO / C-STORE SCP writing to the spool.

A C-STORE is acknowledged with success only after the instance is durable: written
to a temporary file by :class:`~dicom_bridge.spool.Spool` and handed to the
``on_instance`` callback, which records it in the appliance's store and, in the same atomic
step, publishes it under its final name. What was acknowledged is never replaced: a
repeat with identical bytes is a success that writes nothing, a conflicting one (other
bytes, or another study/series) is refused by the callback. Any failure on the
way gives the peer a DICOM failure status and a logged reason; the association and the
service carry on. Handlers never raise and never log patient data.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import ssl
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_bridge.connections import (
    ConnectionCallback,
    ConnectionGuard,
    GuardSettings,
    start_guarded_server,
)
from dicom_bridge.encoding import check_lengths, inflate, inflated_size
from dicom_bridge.errors import (
    DicomBridgeError,
    InstanceRejectedError,
    InvalidUIDError,
    MalformedDatasetError,
)
from dicom_bridge.file_meta import encode_file_meta_group
from dicom_bridge.instance import ReceivedInstance, describe
from dicom_bridge.limits import KEYS, MIB, SizeLimitError, SizeLimits, check_image_header
from dicom_bridge.netutil import quiet_identifiers, set_tcp_nodelay
from dicom_bridge.sop_classes import (
    ACCEPTED_STORAGE_CLASSES,
    ACCEPTED_TRANSFER_SYNTAXES,
    UNCOMPRESSED_SYNTAXES,
)
from dicom_bridge.spool import Spool, SpoolKey
from dicom_bridge.uids import short_ref, validate_uid

LOG = logging.getLogger(__name__)


class StoreStatus(IntEnum):
    """C-STORE response statuses this listener sends."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    # Refused: out of resources, over a configured size limit (``[limits]``). Out of
    # resources it is: the same instance goes through once the site raises the limit.
    TOO_LARGE = 0xA701
    DISK_LOW = 0xA702  # refused: out of resources, free space below the watermark
    DATASET_MISMATCH = 0xA900  # dataset does not match the SOP class / instance in the request
    CANNOT_UNDERSTAND = 0xC000  # the dataset cannot be parsed
    INVALID_UID = 0xC001  # a UID is missing or unsafe
    INVALID_PIXEL_DATA = 0xC002  # uncompressed pixel data shorter than its header says
    # The SOP Instance UID was already acknowledged with other bytes or in another
    # study/series. PS3.4 B.2.3 gives C-STORE three failure classes: A7xx "Refused: out of
    # resources" (senders retry it later: wrong, a retry cannot succeed), A9xx "data set
    # does not match SOP class" (wrong: the dataset may be a valid instance of its class)
    # and Cxxx "Error: cannot understand", whose meaning the SCP defines. 0x0111 "duplicate
    # SOP instance" (PS3.7 C.4) is N-CREATE's and 0x0110 "processing failure" reads as a
    # transient fault, so a dedicated Cxxx code it is: a non-retryable error that the
    # sender's log, /metrics and `appliance status` tell apart from other refusals.
    SOP_INSTANCE_CONFLICT = 0xC003


@dataclass(frozen=True, slots=True)
class AllowedCaller:
    """A calling AE title allowed to associate, optionally pinned to one peer host."""

    ae_title: str
    host: str | None = None


@dataclass(frozen=True, slots=True)
class TlsServerSettings:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile=str(self.cert_file), keyfile=str(self.key_file))
        if self.ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE
        return ctx


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    ae_title: str
    bind: str = "0.0.0.0"
    port: int = 11112
    max_associations: int = 10
    allowed_callers: tuple[AllowedCaller, ...] = ()  # empty: any caller
    tls: TlsServerSettings | None = None
    max_pdu_size: int = 131072
    #: refuse C-STOREs (0xA702) while the spool's file system has less free space than
    #: this (plus the instance); 0 turns the check off
    min_free_bytes: int = 0
    #: seconds from accept to a complete A-ASSOCIATE-RQ (TLS handshake included)
    first_pdu_timeout: float = 30.0
    #: concurrent connections from one peer address; more are closed at once
    max_connections_per_peer: int = 8
    #: seconds an established association may stay silent before it is closed
    network_timeout: float = 60.0
    #: sizes bounded before they are allocated (instance, frame, voxels)
    limits: SizeLimits = field(default_factory=SizeLimits)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused association or C-STORE, for the record (no patient data)."""

    scope: str  # "association" or "instance"
    reason: str
    status: int | None
    calling_ae: str
    peer_host: str
    sop_ref: str | None = None  # short hash of the SOP Instance UID, when known


@dataclass(frozen=True, slots=True)
class AcceptedAssociation:
    """An association this listener accepted, for the record."""

    calling_ae: str
    called_ae: str
    peer_host: str
    peer_port: int
    tls: bool


FreeSpaceProbe = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Free space for unprivileged writers on ``path``'s file system."""
    return shutil.disk_usage(path).free


Publish = Callable[[], Path]
#: Records a received instance. ``publish`` moves its staged file to ``received.path``; the
#: callback calls it inside the atomic step (the store's transaction) that decides the
#: instance is new. It returns False for an identical repeat (nothing is published, the
#: peer still gets success) and raises :class:`InstanceRejectedError` to refuse the
#: instance (e.g. a conflicting repeat). Returning anything else without having called
#: ``publish`` lets the listener publish the file itself.
InstanceCallback = Callable[[ReceivedInstance, Publish], bool | None]
RejectionCallback = Callable[[Rejection], None]
AssociationCallback = Callable[[AcceptedAssociation], None]


class Listener:
    """C-ECHO/C-STORE SCP. ``start()`` returns once the port is bound."""

    def __init__(
        self,
        settings: ListenerSettings,
        spool: Spool,
        on_instance: InstanceCallback,
        on_rejection: RejectionCallback | None = None,
        on_association: AssociationCallback | None = None,
        *,
        free_space: FreeSpaceProbe = free_bytes,
        on_connection_refused: ConnectionCallback | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._on_instance = on_instance
        self._on_rejection = on_rejection
        self._on_association = on_association
        self._free_space = free_space
        self._server: Any = None
        self._lock = threading.Lock()
        self._disk_low = False  # for logging the transitions only
        # Dataset bytes received so far of each association's current C-STORE.
        self._incoming: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self.disk_refusals = 0
        self.guard = ConnectionGuard(
            GuardSettings(
                first_pdu_timeout=settings.first_pdu_timeout,
                max_connections_per_peer=settings.max_connections_per_peer,
                network_timeout=settings.network_timeout,
                max_pdu_size=settings.max_pdu_size,
            ),
            on_connection_refused,
        )
        quiet_identifiers()

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.network_timeout = self.settings.network_timeout
        ae.dimse_timeout = 60
        ae.acse_timeout = 30
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_STORAGE_CLASSES:
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        handlers = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_PDU_RECV, self._count_dataset_bytes),
        ]
        ssl_context = self.settings.tls.context() if self.settings.tls else None
        self._server = start_guarded_server(
            ae,
            (self.settings.bind, self.settings.port),
            evt_handlers=handlers,
            ssl_context=ssl_context,
            guard=self.guard,
        )
        LOG.info(
            "listener %s on %s:%d (tls=%s, max associations %d)",
            self.settings.ae_title,
            self.settings.bind,
            self.port,
            ssl_context is not None,
            self.settings.max_associations,
        )

    @property
    def port(self) -> int:
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- association control ------------------------------------------------------------
    def caller_allowed(self, ae_title: str, host: str) -> bool:
        allowed = self.settings.allowed_callers
        if not allowed:
            return True
        title = ae_title.strip()
        return any(c.ae_title == title and (c.host is None or c.host == host) for c in allowed)

    def _handle_requested(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        primitive = cast(A_ASSOCIATE, requestor.primitive)
        title = str(primitive.calling_ae_title).strip()
        host = str(requestor.address)
        if self.caller_allowed(title, host):
            return
        LOG.warning("association refused: calling AE %r from %s is not allowed", title, host)
        self._record(Rejection("association", "calling AE title not allowed", None, title, host))
        # 0x01 rejected-permanent, 0x01 service user, 0x03 calling AE title not recognised
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)
        event.assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ

    def _handle_accepted(self, event: evt.Event) -> None:
        if self._on_association is None:
            return
        requestor = event.assoc.requestor
        try:
            self._on_association(
                AcceptedAssociation(
                    calling_ae=str(requestor.ae_title).strip(),
                    called_ae=str(event.assoc.acceptor.ae_title).strip(),
                    peer_host=str(requestor.address),
                    peer_port=int(requestor.port or 0),
                    tls=self.settings.tls is not None,
                )
            )
        except Exception:  # recording must not break the association
            LOG.exception("could not record an accepted association")

    # -- C-STORE ------------------------------------------------------------------------
    def _count_dataset_bytes(self, event: evt.Event) -> None:
        """Bound the encoded size of an instance while its P-DATA arrives: pynetdicom
        holds the whole dataset in memory before the C-STORE handler runs, so one over
        ``limits.max_instance_mb`` aborts the association (at most one PDU later)."""
        pdu = event.pdu
        if not isinstance(pdu, P_DATA_TF):
            return
        assoc = event.assoc
        total = self._incoming.get(assoc, 0)
        if total < 0:  # already refused; the abort is under way
            return
        limit = self.settings.limits.max_instance_bytes
        for item in pdu.presentation_data_value_items:
            value = item.presentation_data_value or b""
            if not value or value[0] & 0x01:  # a command fragment
                continue
            total += len(value) - 1
            if total > limit:
                self._incoming[assoc] = -1
                self._refuse_oversized(event, limit)
                return
            if value[0] & 0x02:  # the last fragment: the next dataset starts from 0
                total = 0
        self._incoming[assoc] = total

    def _refuse_oversized(self, event: evt.Event, limit: int) -> None:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        peer_host = str(event.assoc.requestor.address)
        reason = (
            f"instance_too_large: the dataset is over {limit // MIB} MiB "
            f"({KEYS['max_instance_bytes']}); association aborted"
        )
        LOG.warning("C-STORE from %s refused: %s", calling_ae, reason)
        self._record(Rejection("instance", reason, None, calling_ae, peer_host))
        event.assoc.abort()

    def _handle_store(self, event: evt.Event) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        peer_host = str(event.assoc.requestor.address)
        request = cast(C_STORE, event.request)
        sop_ref = _safe_ref(request.AffectedSOPInstanceUID)
        try:
            self._check_disk(request)
            received = self._accept(event, calling_ae, peer_host)
        except InstanceRejectedError as exc:
            status = exc.status
            # Low disk is logged once when it starts (see _check_disk), not per instance.
            LOG.log(
                logging.DEBUG if status == StoreStatus.DISK_LOW else logging.WARNING,
                "C-STORE %s from %s refused (0x%04X): %s",
                sop_ref,
                calling_ae,
                status,
                exc.reason,
            )
            self._record(
                Rejection("instance", exc.reason, int(status), calling_ae, peer_host, sop_ref)
            )
            return int(status)
        except Exception as exc:  # a handler must never raise: report and carry on
            reason = f"could not store instance: {type(exc).__name__}: {_safe_text(exc)}"
            LOG.error("C-STORE %s from %s failed (0xA700): %s", sop_ref, calling_ae, reason)
            self._record(
                Rejection(
                    "instance",
                    reason,
                    int(StoreStatus.OUT_OF_RESOURCES),
                    calling_ae,
                    peer_host,
                    sop_ref,
                )
            )
            return int(StoreStatus.OUT_OF_RESOURCES)
        LOG.debug("received %s (%d bytes) from %s", sop_ref, received.size, calling_ae)
        return int(StoreStatus.SUCCESS)

    def _check_disk(self, request: C_STORE) -> None:
        """Refuse, before anything is written, while free space is below the watermark.
        Nothing already stored is ever removed to make room; ingest resumes by itself as
        soon as space returns (each C-STORE checks again)."""
        watermark = self.settings.min_free_bytes
        if watermark <= 0:
            return
        incoming = len(cast(BytesIO, request.DataSet).getbuffer())
        try:
            free = self._free_space(self.spool.root)
        except OSError as exc:
            raise _rejected(
                f"cannot measure free disk space: {exc.strerror}", StoreStatus.DISK_LOW
            ) from exc
        with self._lock:
            if free - incoming < watermark:
                self.disk_refusals += 1
                if not self._disk_low:
                    self._disk_low = True
                    LOG.error(
                        "disk space low: %d MiB free, watermark %d MiB; refusing new "
                        "C-STOREs (0xA702) until space returns",
                        free // 2**20,
                        watermark // 2**20,
                    )
                raise _rejected(
                    f"free disk space below the watermark ({free // 2**20} MiB free, "
                    f"{watermark // 2**20} MiB required)",
                    StoreStatus.DISK_LOW,
                )
            if self._disk_low:
                self._disk_low = False
                LOG.warning(
                    "disk space back above the watermark (%d MiB free): accepting C-STOREs "
                    "again after %d refusals",
                    free // 2**20,
                    self.disk_refusals,
                )

    @property
    def disk_low(self) -> bool:
        return self._disk_low

    def _accept(self, event: evt.Event, calling_ae: str, peer_host: str) -> ReceivedInstance:
        request = cast(C_STORE, event.request)
        transfer_syntax = UID(str(event.context.transfer_syntax))
        stream = cast(BytesIO, request.DataSet)
        header = (
            b"\x00" * 128
            + b"DICM"
            + encode_file_meta_group(
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
                str(transfer_syntax),
            )
        )
        if transfer_syntax.is_deflated:
            # Rare: inflate (bounded) to check the encoding, parse through pydicom's file
            # reader, store the bytes as received.
            received = stream.getvalue()
            limit = self.settings.limits.max_instance_bytes
            try:
                # Counted in small chunks first: a bomb is refused before it is held.
                size = inflated_size(received, limit)
                if size > limit:
                    raise SizeLimitError(
                        f"the deflated dataset inflates to more than {limit // MIB} MiB",
                        KEYS["max_instance_bytes"],
                    )
                inflated = inflate(received, limit)
            except MalformedDatasetError as exc:
                raise _rejected(str(exc), StoreStatus.CANNOT_UNDERSTAND) from exc
            except SizeLimitError as exc:
                raise _rejected(str(exc), StoreStatus.TOO_LARGE) from exc
            encoded = header + received
            ds = _parse_dataset(BytesIO(inflated), ExplicitVRLittleEndian)
            digest = hashlib.sha256(received).hexdigest()
            return self._store(
                ds, request, transfer_syntax, (encoded,), inflated, digest, calling_ae, peer_host
            )
        # Fast path: parse the header only (large values deferred), write the received
        # bytes behind the file meta without copying or re-encoding them.
        ds = _parse_dataset(stream, transfer_syntax)
        with stream.getbuffer() as view:
            digest = hashlib.sha256(view).hexdigest()
            return self._store(
                ds, request, transfer_syntax, (header, view), view, digest, calling_ae, peer_host
            )

    def _store(
        self,
        ds: Dataset,
        request: C_STORE,
        transfer_syntax: UID,
        chunks: tuple[bytes | memoryview, ...],
        dataset: bytes | memoryview,
        sha256: str,
        calling_ae: str,
        peer_host: str,
    ) -> ReceivedInstance:
        try:
            key = SpoolKey(
                study_uid=validate_uid(ds.get("StudyInstanceUID"), what="StudyInstanceUID"),
                series_uid=validate_uid(ds.get("SeriesInstanceUID"), what="SeriesInstanceUID"),
                sop_uid=validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID"),
            )
        except InvalidUIDError as exc:
            raise _rejected(str(exc), StoreStatus.INVALID_UID) from exc
        if key.sop_uid != str(request.AffectedSOPInstanceUID).strip():
            raise _rejected(
                "SOPInstanceUID in the dataset differs from the C-STORE request",
                StoreStatus.DATASET_MISMATCH,
            )
        sop_class = str(ds.get("SOPClassUID", "")).strip()
        if sop_class != str(request.AffectedSOPClassUID).strip():
            raise _rejected(
                "SOPClassUID in the dataset differs from the C-STORE request",
                StoreStatus.DATASET_MISMATCH,
            )
        try:
            check_image_header(ds, self.settings.limits)
        except SizeLimitError as exc:
            raise _rejected(str(exc), StoreStatus.TOO_LARGE) from exc
        except MalformedDatasetError as exc:
            raise _rejected(_safe_text(exc), StoreStatus.CANNOT_UNDERSTAND) from exc
        if transfer_syntax in UNCOMPRESSED_SYNTAXES:
            # Deflated: parsed from the inflated file, so nothing was deferred past its end.
            available = None if transfer_syntax.is_deflated else len(dataset)
            _check_native_pixel_length(ds, available)
        _check_encoding(dataset, transfer_syntax)
        # Staged first: only the instance the store accepts (atomically, in its transaction)
        # is renamed into place; a repeat or a refused one leaves nothing in the spool.
        staged = self.spool.stage(key, chunks)
        try:
            received = describe(
                ds,
                key=key,
                transfer_syntax_uid=str(transfer_syntax),
                path=staged.final,
                size=sum(len(c) for c in chunks),
                calling_ae=calling_ae,
                peer_host=peer_host,
                sha256=sha256,
            )
            if self._on_instance(received, staged.publish) is not False:
                staged.publish()
        finally:
            staged.discard()
        return received

    def _record(self, rejection: Rejection) -> None:
        if self._on_rejection is None:
            return
        try:
            self._on_rejection(rejection)
        except Exception:  # recording a rejection must not break the association
            LOG.exception("could not record a rejection")


def _handle_echo(event: evt.Event) -> int:
    return 0x0000


def _rejected(reason: str, status: StoreStatus) -> InstanceRejectedError:
    return InstanceRejectedError(reason, int(status))


# Values longer than this are not read while parsing the header (pixel data, overlays...).
_DEFER_BYTES = 4096
_PIXEL_DATA = 0x7FE00010


def _parse_dataset(stream: BytesIO, transfer_syntax: UID) -> Dataset:
    """Parse the received dataset without reading large values (they stay in the buffer)."""
    try:
        stream.seek(0)
        ds = read_dataset(
            stream,
            is_implicit_VR=transfer_syntax.is_implicit_VR,
            is_little_endian=transfer_syntax.is_little_endian,
            defer_size=_DEFER_BYTES,
        )
        _touch(ds)
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise _cannot_parse(exc) from exc
    return ds


def _check_encoding(data: bytes | memoryview, transfer_syntax: UID) -> None:
    """Refuse (0xC000) a dataset with an element whose declared length runs past the end
    of the dataset or of its sequence: pydicom would silently drop what follows."""
    try:
        check_lengths(
            data,
            implicit_vr=transfer_syntax.is_implicit_VR,
            little_endian=transfer_syntax.is_little_endian,
        )
    except MalformedDatasetError as exc:
        raise _rejected(
            f"dataset encoding is broken: {_safe_text(exc)}", StoreStatus.CANNOT_UNDERSTAND
        ) from exc


def _touch(ds: Dataset) -> None:
    """Convert the elements the listener relies on, so a garbled header fails here."""
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        ds.get(keyword)


def _cannot_parse(exc: BaseException) -> InstanceRejectedError:
    return _rejected(
        f"dataset cannot be parsed: {type(exc).__name__}: {_safe_text(exc)}",
        StoreStatus.CANNOT_UNDERSTAND,
    )


def _check_native_pixel_length(ds: Dataset, available: int | None) -> None:
    """Reject uncompressed pixel data shorter than its header says, or cut off in transit."""
    raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if raw is None:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _rejected(
            "pixel data present but Rows/Columns/BitsAllocated are missing or invalid",
            StoreStatus.INVALID_PIXEL_DATA,
        ) from exc
    pixels = rows * cols * samples * frames
    expected = (pixels + 7) // 8 if bits == 1 else pixels * ((bits + 7) // 8)
    length = _element_length(raw)
    if available is not None and isinstance(raw, RawDataElement) and raw.value is None:
        # Deferred: the element's declared length must fit in what actually arrived.
        length = min(length, max(0, available - raw.value_tell))
    if length < expected:
        raise _rejected(
            f"pixel data is truncated: {length} bytes, header needs {expected}",
            StoreStatus.INVALID_PIXEL_DATA,
        )


def _element_length(element: object) -> int:
    if isinstance(element, RawDataElement):
        if element.value is not None:
            return len(element.value)
        return 0 if element.length == 0xFFFFFFFF else int(element.length)
    value = getattr(element, "value", None)
    return len(value) if isinstance(value, bytes | bytearray) else 0


def _safe_ref(uid: object) -> str:
    try:
        return short_ref(validate_uid(uid))
    except DicomBridgeError:
        return "invalid-uid"


def _safe_text(exc: BaseException) -> str:
    """An exception message cut short; pydicom messages name tags, not values."""
    text = str(exc).replace("\n", " ")
    return text[:200]
