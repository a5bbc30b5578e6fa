"""Unit tests for the outbox: store operations, backoff, and OutboxSender with a fake send.

The real network path (send_files against dcmtk/Orthanc) is covered by interop tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.config import AppConfig, OutboxConfig, parse_config
from appliance.errors import NotFoundError, StoreError
from appliance.flow.outbox import OutboxSender, backoff_seconds, remote_node
from appliance.states import OutboxState
from appliance.store import Store
from dicom_bridge.errors import SendError
from dicom_bridge.sender import RemoteNode, SendResult
from tests.appliance.conftest import Clock


def config(**outbox: object) -> AppConfig:
    settings: dict[str, object] = {
        "max_attempts": 3,
        "backoff_initial_seconds": 10,
        "backoff_max_seconds": 25,
    }
    settings.update(outbox)
    return parse_config(
        {
            "dicom": {"ae_title": "SEGAPP"},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                {
                    "name": "viewer",
                    "ae_title": "VIEW",
                    "host": "127.0.0.1",
                    "port": 105,
                    "calling_ae": "SEGOUT",
                    "timeout_seconds": 5,
                },
            ],
            "outbox": settings,
        }
    )


def dicom_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / f"obj{n}.dcm"
    path.write_bytes(b"\0" * 132)  # the fake sender never reads it
    return path


class FakeSend:
    """Records calls; answers each file with the next scripted outcome."""

    def __init__(self, *outcomes: bool | int | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[RemoteNode, list[Path]]] = []

    def __call__(self, node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
        self.calls.append((node, list(paths)))
        outcome = self.outcomes.pop(0) if self.outcomes else True
        if isinstance(outcome, Exception):
            raise outcome
        results = []
        for path in paths:
            if outcome is True:
                results.append(SendResult(path, "1.2.3", 0x0000, True, None))
            else:
                status = 0xA700 if outcome is False else int(outcome)
                results.append(SendResult(path, "1.2.3", status, False, "refused: out of space"))
        return results


# -- store operations ----------------------------------------------------------------------------


def test_enqueue_claim_mark_sent(store: Store, clock: Clock) -> None:
    a = store.enqueue("pacs", Path("/a.dcm"), "1.2.1", "1.2")
    b = store.enqueue("pacs", Path("/b.dcm"), "1.2.2")
    item = store.get_outbox(a)
    assert item.state is OutboxState.PENDING
    assert (item.destination, item.path, item.sop_uid, item.series_uid) == (
        "pacs",
        Path("/a.dcm"),
        "1.2.1",
        "1.2",
    )
    assert item.attempts == 0
    assert item.next_attempt_at == clock()

    claimed = store.claim_due()
    assert [i.id for i in claimed] == [a, b]
    assert all(i.state is OutboxState.SENDING for i in claimed)
    assert store.claim_due() == []  # not claimed twice

    store.mark_sent(a, 0x0000)
    sent = store.get_outbox(a)
    assert sent.state is OutboxState.SENT
    assert sent.attempts == 1
    assert sent.last_status == 0
    assert sent.last_error is None
    counts = store.outbox_counts()
    assert counts == {"pending": 0, "sending": 1, "sent": 1, "dead": 0}


def test_claim_due_respects_limit_and_time(store: Store, clock: Clock) -> None:
    ids = [store.enqueue("pacs", Path(f"/{n}.dcm"), f"1.{n}") for n in range(5)]
    assert [i.id for i in store.claim_due(limit=2)] == ids[:2]
    assert [i.id for i in store.claim_due()] == ids[2:]


def test_mark_send_failed_pending_then_dead(store: Store, clock: Clock) -> None:
    item_id = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    store.claim_due()
    state = store.mark_send_failed(item_id, "refused", 0xA700, retry_at=clock() + 60)
    assert state is OutboxState.PENDING
    item = store.get_outbox(item_id)
    assert item.state is OutboxState.PENDING
    assert item.attempts == 1
    assert item.next_attempt_at == clock() + 60
    assert (item.last_error, item.last_status) == ("refused", 0xA700)

    assert store.claim_due() == []  # not due yet
    clock.advance(60)
    assert [i.id for i in store.claim_due()] == [item_id]

    state = store.mark_send_failed(item_id, "still refused", None, retry_at=None)
    assert state is OutboxState.DEAD
    dead = store.get_outbox(item_id)
    assert dead.state is OutboxState.DEAD
    assert dead.attempts == 2
    assert dead.last_error == "still refused"
    clock.advance(10_000)
    assert store.claim_due() == []  # dead items are never claimed


def test_retry_outbox_revives_dead(store: Store, clock: Clock) -> None:
    item_id = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    store.claim_due()
    store.mark_send_failed(item_id, "x", None, retry_at=None)
    clock.advance(100)
    revived = store.retry_outbox(item_id)
    assert revived.state is OutboxState.PENDING
    assert revived.attempts == 0
    assert revived.next_attempt_at == clock()
    assert [i.id for i in store.claim_due()] == [item_id]


def test_retry_outbox_pending_item_made_due_now(store: Store, clock: Clock) -> None:
    item_id = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    store.claim_due()
    store.mark_send_failed(item_id, "x", None, retry_at=clock() + 3600)
    assert store.retry_outbox(item_id).next_attempt_at == clock()
    assert [i.id for i in store.claim_due()] == [item_id]


def test_retry_outbox_unknown_and_sent(store: Store) -> None:
    with pytest.raises(NotFoundError, match="999"):
        store.retry_outbox(999)
    with pytest.raises(NotFoundError):
        store.get_outbox(999)
    item_id = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    store.claim_due()
    store.mark_sent(item_id, 0)
    with pytest.raises(StoreError, match="sent"):
        store.retry_outbox(item_id)
    assert store.get_outbox(item_id).state is OutboxState.SENT


def test_requeue_sending(store: Store) -> None:
    a = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    store.claim_due()
    b = store.enqueue("pacs", Path("/b.dcm"), "1.2.2")
    assert store.requeue_sending() == 1
    assert store.get_outbox(a).state is OutboxState.PENDING
    assert store.get_outbox(a).attempts == 0
    assert [i.id for i in store.claim_due()] == [a, b]


def test_list_outbox(store: Store) -> None:
    a = store.enqueue("pacs", Path("/a.dcm"), "1.2.1")
    b = store.enqueue("pacs", Path("/b.dcm"), "1.2.2")
    store.claim_due(limit=1)
    store.mark_send_failed(a, "x", None, retry_at=None)
    assert [i.id for i in store.list_outbox()] == [b, a]  # newest first
    assert [i.id for i in store.list_outbox(states=[OutboxState.DEAD])] == [a]
    assert [i.id for i in store.list_outbox(states=[OutboxState.DEAD, OutboxState.PENDING])] == [
        b,
        a,
    ]
    assert store.list_outbox(states=[OutboxState.SENT]) == []
    assert len(store.list_outbox(limit=1)) == 1


# -- backoff ---------------------------------------------------------------------------------------


def test_backoff_is_exponential_and_capped() -> None:
    settings = OutboxConfig(backoff_initial_seconds=5.0, backoff_max_seconds=60.0)
    assert [backoff_seconds(n, settings) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert backoff_seconds(0, settings) == 5.0
    assert backoff_seconds(1000, settings) == 60.0  # no overflow on large attempt counts


# -- remote node -----------------------------------------------------------------------------------


def test_remote_node_from_destination() -> None:
    cfg = config()
    pacs = remote_node(cfg.destination("pacs"), cfg.dicom.ae_title)
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae) == (
        "PACS",
        "127.0.0.1",
        104,
        "SEGAPP",
    )
    assert pacs.tls is None
    viewer = remote_node(cfg.destination("viewer"), cfg.dicom.ae_title)
    assert viewer.calling_ae == "SEGOUT"
    assert viewer.timeout_s == 5.0


# -- OutboxSender ----------------------------------------------------------------------------------


def test_sender_sends_due_items_grouped_by_destination(store: Store, tmp_path: Path) -> None:
    files = [dicom_file(tmp_path, n) for n in range(3)]
    a = store.enqueue("pacs", files[0], "1.1")
    b = store.enqueue("viewer", files[1], "1.2")
    c = store.enqueue("pacs", files[2], "1.3")
    send = FakeSend()
    sender = OutboxSender(store, config(), send=send)
    assert sender.run_once() == 3
    by_ae = {node.ae_title: paths for node, paths in send.calls}
    assert by_ae == {"PACS": [files[0], files[2]], "VIEW": [files[1]]}
    for item_id in (a, b, c):
        item = store.get_outbox(item_id)
        assert item.state is OutboxState.SENT
        assert item.attempts == 1
    assert sender.run_once() == 0
    assert len(send.calls) == 2


def test_failing_sends_back_off_then_go_dead(store: Store, clock: Clock, tmp_path: Path) -> None:
    item_id = store.enqueue("pacs", dicom_file(tmp_path, 1), "1.1")
    send = FakeSend(False, False, False, True)
    sender = OutboxSender(store, config(), send=send)

    assert sender.run_once() == 1
    item = store.get_outbox(item_id)
    assert item.state is OutboxState.PENDING
    assert item.attempts == 1
    assert item.next_attempt_at == clock() + 10
    assert item.last_status == 0xA700
    assert item.last_error == "refused: out of space"

    clock.advance(9)
    assert sender.run_once() == 0  # not due yet
    clock.advance(1)
    assert sender.run_once() == 1
    item = store.get_outbox(item_id)
    assert item.state is OutboxState.PENDING
    assert item.attempts == 2
    assert item.next_attempt_at == clock() + 20

    clock.advance(20)
    assert sender.run_once() == 1
    item = store.get_outbox(item_id)
    assert item.state is OutboxState.DEAD  # max_attempts = 3
    assert item.attempts == 3
    clock.advance(10_000)
    assert sender.run_once() == 0
    assert len(send.calls) == 3

    store.retry_outbox(item_id)
    assert sender.run_once() == 1
    assert store.get_outbox(item_id).state is OutboxState.SENT


def test_backoff_is_capped_in_sender(store: Store, clock: Clock, tmp_path: Path) -> None:
    item_id = store.enqueue("pacs", dicom_file(tmp_path, 1), "1.1")
    sender = OutboxSender(store, config(max_attempts=10), send=FakeSend(*[False] * 5))
    delays = []
    for _ in range(4):
        assert sender.run_once() == 1
        item = store.get_outbox(item_id)
        delays.append(item.next_attempt_at - clock())
        clock.advance(delays[-1])
    assert delays == [10, 20, 25, 25]


def test_send_error_fails_the_whole_group(store: Store, clock: Clock, tmp_path: Path) -> None:
    ids = [store.enqueue("pacs", dicom_file(tmp_path, n), f"1.{n}") for n in range(3)]
    other = store.enqueue("viewer", dicom_file(tmp_path, 9), "1.9")

    def send(node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
        if node.ae_title == "PACS":
            raise SendError("association rejected by PACS")
        return [SendResult(p, "1.9", 0, True, None) for p in paths]

    OutboxSender(store, config(), send=send).run_once()
    for item_id in ids:
        item = store.get_outbox(item_id)
        assert item.state is OutboxState.PENDING
        assert item.attempts == 1
        assert item.last_error == "association rejected by PACS"
        assert item.next_attempt_at == clock() + 10
    assert store.get_outbox(other).state is OutboxState.SENT  # other destinations unaffected


def test_mixed_results_per_file(store: Store, tmp_path: Path) -> None:
    a = store.enqueue("pacs", dicom_file(tmp_path, 1), "1.1")
    b = store.enqueue("pacs", dicom_file(tmp_path, 2), "1.2")

    def send(node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
        return [
            SendResult(paths[0], "1.1", 0xB000, True, None),
            SendResult(paths[1], "1.2", 0xC000, False, "cannot understand"),
        ]

    OutboxSender(store, config(), send=send).run_once()
    assert store.get_outbox(a).state is OutboxState.SENT
    assert store.get_outbox(a).last_status == 0xB000
    failed = store.get_outbox(b)
    assert failed.state is OutboxState.PENDING
    assert (failed.last_status, failed.last_error) == (0xC000, "cannot understand")


def test_unknown_destination_is_recorded(store: Store, tmp_path: Path) -> None:
    item_id = store.enqueue("gone", dicom_file(tmp_path, 1), "1.1")
    send = FakeSend()
    OutboxSender(store, config(), send=send).run_once()
    assert send.calls == []
    item = store.get_outbox(item_id)
    assert item.state in (OutboxState.PENDING, OutboxState.DEAD)
    assert item.attempts == 1
    assert item.last_error is not None and "'gone'" in item.last_error
    assert "not configured" in item.last_error


def test_missing_file_goes_dead_immediately(store: Store, tmp_path: Path) -> None:
    present = dicom_file(tmp_path, 1)
    a = store.enqueue("pacs", present, "1.1")
    b = store.enqueue("pacs", tmp_path / "vanished.dcm", "1.2")
    send = FakeSend()
    OutboxSender(store, config(), send=send).run_once()
    assert [paths for _, paths in send.calls] == [[present]]
    assert store.get_outbox(a).state is OutboxState.SENT
    gone = store.get_outbox(b)
    assert gone.state is OutboxState.DEAD
    assert gone.attempts == 1
    assert gone.last_error is not None and "no longer exists" in gone.last_error


def test_only_missing_files_means_no_send(store: Store, tmp_path: Path) -> None:
    item_id = store.enqueue("pacs", tmp_path / "vanished.dcm", "1.2")
    send = FakeSend()
    OutboxSender(store, config(), send=send).run_once()
    assert send.calls == []
    assert store.get_outbox(item_id).state is OutboxState.DEAD


def test_unexpected_sender_error_never_strands_items(store: Store, tmp_path: Path) -> None:
    ids = [store.enqueue("pacs", dicom_file(tmp_path, n), f"1.{n}") for n in range(2)]

    def send(node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
        raise RuntimeError("bug in a sender")

    def short(node: RemoteNode, paths: Sequence[Path]) -> list[SendResult]:
        return []  # fewer results than files

    for fn in (send, short):
        OutboxSender(store, config(), send=fn).run_once()
        for item_id in ids:
            item = store.get_outbox(item_id)
            assert item.state is OutboxState.PENDING, "a failed pass must not leave SENDING"
            assert item.last_error
        store.retry_outbox(ids[0])
        store.retry_outbox(ids[1])
