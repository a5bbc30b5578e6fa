"""The SQLite store: the only package with SQL in it.

One database file in WAL mode. Every write is its own short transaction; the listener
calls :meth:`Store.record_instance` before it acknowledges a C-STORE, so an acknowledged
instance is always both in the spool and in this table. ``synchronous=NORMAL`` is enough
for process crashes (WAL frames reach the OS before commit returns); after a power loss,
:func:`appliance.service.reconcile_spool` re-indexes any fsync'd spool file whose row was lost.

One module per concern, each a mixin over the one connection (:mod:`.db`):
:mod:`.series` (instances, series, rejections), :mod:`.jobs`, :mod:`.outbox`,
:mod:`.models`, :mod:`.cases`, :mod:`.retention`; the records they hand out and the
row-to-record mapping are in :mod:`.records`, the audit trail in :mod:`.audit`.
"""

from __future__ import annotations

from appliance.store.cases import CaseStore
from appliance.store.db import SCHEMA_VERSION
from appliance.store.jobs import JobStore
from appliance.store.models import ModelStore
from appliance.store.outbox import OutboxStore
from appliance.store.records import (
    ActivationRecord,
    CaseRecord,
    CaseRefusal,
    Claim,
    Enqueue,
    InstanceRecord,
    JobRecord,
    ModelRecord,
    NewCase,
    NewInstance,
    OutboxItem,
    RejectionRecord,
    RetentionJob,
    RetentionSeries,
    SeriesRecord,
)
from appliance.store.retention import RetentionStore
from appliance.store.series import RejectionStore, SeriesStore
from appliance.store.studies import StudyStore

__all__ = [
    "SCHEMA_VERSION",
    "ActivationRecord",
    "CaseRecord",
    "CaseRefusal",
    "Claim",
    "Enqueue",
    "InstanceRecord",
    "JobRecord",
    "ModelRecord",
    "NewCase",
    "NewInstance",
    "OutboxItem",
    "RejectionRecord",
    "RetentionJob",
    "RetentionSeries",
    "SeriesRecord",
    "Store",
]


class Store(
    SeriesStore,
    StudyStore,
    RejectionStore,
    JobStore,
    OutboxStore,
    ModelStore,
    CaseStore,
    RetentionStore,
):
    """Thread-safe access to the appliance database (one connection, one lock)."""
