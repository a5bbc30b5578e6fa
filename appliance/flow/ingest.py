"""Instances into the store: the listener's callbacks (durable instances, associations and
rejections) and :func:`ingest_files`, DICOM files given on the command line put into the
spool and the store as if they had been received (``appliance cases import --series DIR``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from appliance.config import AppConfig
from appliance.errors import ApplianceError, InstanceConflictError
from appliance.store import InstanceRecord, NewInstance, Store
from appliance.store.audit import AuditEvent
from dicom_bridge.connections import RefusedConnection
from dicom_bridge.errors import DicomBridgeError, InstanceRejectedError
from dicom_bridge.instance import ReceivedInstance, describe_spooled_file
from dicom_bridge.listener import AcceptedAssociation, Publish, Rejection, StoreStatus
from dicom_bridge.spool import Spool
from dicom_bridge.uids import short_ref

LOG = logging.getLogger(__name__)


class Ingest:
    """Bridges listener events into the store (runs on association threads)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_instance(self, received: ReceivedInstance, publish: Publish) -> bool:
        """Record ``received`` and publish its file in the store's transaction; False for
        an identical repeat (success, nothing written). A conflicting repeat is refused
        (:attr:`StoreStatus.SOP_INSTANCE_CONFLICT`); the first copy stays as it was."""
        try:
            is_new = self.store.record_instance(to_new_instance(received), publish)
        except InstanceConflictError as exc:
            raise InstanceRejectedError(
                f"{exc.reason}: {exc}", int(StoreStatus.SOP_INSTANCE_CONFLICT)
            ) from exc
        if not is_new:
            LOG.info(
                "repeated instance %s in series %s: identical bytes, acknowledged, "
                "nothing rewritten",
                short_ref(received.key.sop_uid),
                short_ref(received.key.series_uid),
            )
        return is_new

    def on_association(self, association: AcceptedAssociation) -> None:
        self.store.audit.record(
            AuditEvent.ASSOCIATION,
            outcome="accepted",
            calling_ae=association.calling_ae,
            called_ae=association.called_ae,
            peer=f"{association.peer_host}:{association.peer_port}",
            tls=association.tls,
        )

    def on_connection_refused(self, refused: RefusedConnection) -> None:
        """A connection closed before it became an association (per-peer cap, first-PDU
        timeout, failed TLS handshake): counted for ``/metrics``, by reason."""
        self.store.bump("connections_refused", str(refused.reason))

    def on_rejection(self, rejection: Rejection) -> None:
        self.store.record_rejection(
            rejection.scope,
            rejection.reason,
            status=rejection.status,
            calling_ae=rejection.calling_ae,
            peer_host=rejection.peer_host,
            ref=rejection.sop_ref,
        )


def to_new_instance(received: ReceivedInstance) -> NewInstance:
    return NewInstance(
        sop_uid=received.key.sop_uid,
        series_uid=received.key.series_uid,
        study_uid=received.key.study_uid,
        sop_class_uid=received.sop_class_uid,
        transfer_syntax_uid=received.transfer_syntax_uid,
        path=received.path,
        size=received.size,
        calling_ae=received.calling_ae,
        modality=received.modality,
        series_description=received.series_description,
        body_part_examined=received.body_part_examined,
        image_type=received.image_type,
        instance_number=received.instance_number,
        number_of_frames=received.number_of_frames,
        sha256=received.sha256,
        contrast_bolus_agent=received.contrast_bolus_agent,
        scanning_sequence=received.scanning_sequence,
        echo_time_ms=received.echo_time_ms,
        repetition_time_ms=received.repetition_time_ms,
        inversion_time_ms=received.inversion_time_ms,
    )


def ingest_files(store: Store, config: AppConfig, files: Sequence[Path]) -> list[InstanceRecord]:
    """Put DICOM files into the spool and the store as if they had been received
    (calling AE ``CLI-IMPORT``); returns their records. Raises ApplianceError naming the
    file by its position when one is not a storable DICOM instance, or repeats an instance
    already recorded with other bytes or in another series (which stays as it was)."""
    from pydicom import dcmread

    from dicom_bridge.encoding import dataset_sha256
    from dicom_bridge.instance import describe
    from dicom_bridge.spool import Spool, SpoolKey
    from dicom_bridge.uids import validate_uid

    spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync)
    prepared = []
    for index, path in enumerate(files):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = SpoolKey(
                validate_uid(ds.get("StudyInstanceUID"), what="StudyInstanceUID"),
                validate_uid(ds.get("SeriesInstanceUID"), what="SeriesInstanceUID"),
                validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID"),
            )
        except DicomBridgeError as exc:
            raise ApplianceError(f"file {index + 1} ({Path(path).name}): {exc}") from exc
        except Exception as exc:
            raise ApplianceError(
                f"file {index + 1} ({Path(path).name}) is not DICOM ({type(exc).__name__})"
            ) from exc
        prepared.append((path, ds, key))
    records = []
    for index, (path, ds, key) in enumerate(prepared):
        raw = Path(path).read_bytes()
        staged = spool.stage(key, (raw,))
        try:
            received = describe(
                ds,
                key=key,
                transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
                path=staged.final,
                size=len(raw),
                calling_ae="CLI-IMPORT",
                peer_host="",
                sha256=dataset_sha256(raw),
            )
            store.record_instance(to_new_instance(received), staged.publish)
        except InstanceConflictError as exc:
            raise ApplianceError(f"file {index + 1} ({Path(path).name}): {exc}") from exc
        finally:
            staged.discard()
        records.append(key.sop_uid)
    return store.instances_by_sop(records)


def index_spool(store: Store, spool: Spool) -> int:
    """Index spool files that have no row: after a power loss (at start-up), or all of
    them when `appliance storage reindex` rebuilds a lost database. Return how many."""
    removed = spool.remove_partials()
    if removed:
        LOG.info("removed %d partial spool files from an interrupted write", removed)
    known = store.instance_uids()
    added = 0
    for path in spool.iter_files():
        if path.stem in known:
            continue
        try:
            received = describe_spooled_file(path)
        except DicomBridgeError as exc:
            LOG.warning("spool file without a record could not be re-indexed: %s", exc)
            continue
        store.record_instance(to_new_instance(received))
        added += 1
    if added:
        LOG.warning("re-indexed %d spool files that had no database row", added)
    return added
