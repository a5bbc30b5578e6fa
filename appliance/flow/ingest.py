"""The listener's callbacks: record durable instances and rejections in the store."""

from __future__ import annotations

import logging

from appliance.store import NewInstance, Store
from appliance.store.audit import AuditEvent
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import AcceptedAssociation, Rejection
from dicom_bridge.uids import short_ref

LOG = logging.getLogger(__name__)


class Ingest:
    """Bridges listener events into the store (runs on association threads)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def on_instance(self, received: ReceivedInstance) -> None:
        is_new = self.store.record_instance(to_new_instance(received))
        if not is_new:
            LOG.info(
                "repeated instance %s in series %s (idempotent)",
                short_ref(received.key.sop_uid),
                short_ref(received.key.series_uid),
            )

    def on_association(self, association: AcceptedAssociation) -> None:
        self.store.audit.record(
            AuditEvent.ASSOCIATION,
            outcome="accepted",
            calling_ae=association.calling_ae,
            called_ae=association.called_ae,
            peer=f"{association.peer_host}:{association.peer_port}",
            tls=association.tls,
        )

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
    )
