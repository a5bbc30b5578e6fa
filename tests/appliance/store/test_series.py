"""Unit tests for appliance.store.series: instances, series lifecycle, rejections, concurrency."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from appliance.errors import InstanceConflictError, NotFoundError
from appliance.states import SeriesState
from appliance.store import Claim, NewInstance, Store
from tests.appliance.conftest import Clock

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def inst(n: int, series: str = SERIES, *, modality: str = "CT") -> NewInstance:
    sop = f"{series}.{n}"
    return NewInstance(
        sop_uid=sop,
        series_uid=series,
        study_uid=STUDY,
        sop_class_uid=CT,
        transfer_syntax_uid=EXPLICIT_LE,
        path=Path(f"/spool/{sop}.dcm"),
        size=1000 + n,
        calling_ae="PACS",
        modality=modality,
        series_description="abdomen",
        body_part_examined="ABDOMEN",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        instance_number=n,
    )


# -- instances ---------------------------------------------------------------------------------


def test_record_instance_is_idempotent(store: Store) -> None:
    assert store.record_instance(inst(1)) is True
    assert store.record_instance(inst(1)) is False
    assert store.instance_count() == 1
    assert store.has_instance(f"{SERIES}.1")
    assert not store.has_instance("1.2.3")
    series = store.get_series(SERIES)
    assert series.instances == 1
    assert series.generation == 1
    assert series.state is SeriesState.RECEIVING


def test_record_instance_fields(store: Store, clock: Clock) -> None:
    store.record_instance(inst(2))
    clock.advance(1)
    store.record_instance(inst(1))
    assert store.instance_uids() == {f"{SERIES}.1", f"{SERIES}.2"}
    records = store.series_instances(SERIES)
    assert [r.instance_number for r in records] == [1, 2]
    first = records[0]
    assert first.path == Path(f"/spool/{SERIES}.1.dcm")
    assert first.size == 1001
    assert first.calling_ae == "PACS"
    assert first.number_of_frames == 1
    series = store.get_series(SERIES)
    assert series.study_uid == STUDY
    assert series.modality == "CT"
    assert series.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert series.instances == 2
    assert series.first_instance_at == clock() - 1
    assert series.last_instance_at == clock()


def test_instance_under_another_series_is_a_conflict(store: Store) -> None:
    # What was acknowledged is never moved (tests/appliance/store/test_instance_conflicts.py).
    other = "1.2.826.0.1.3680043.8.498.3"
    store.record_instance(inst(1))
    moved = dataclasses.replace(inst(1), series_uid=other)
    with pytest.raises(InstanceConflictError):
        store.record_instance(moved)
    assert store.instance_count() == 1
    assert store.get_series(SERIES).instances == 1
    with pytest.raises(NotFoundError):
        store.get_series(other)


def test_get_series_unknown(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.get_series("9.9.9")


# -- series lifecycle ----------------------------------------------------------------------------


def test_series_completes_only_after_quiet_seconds(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    clock.advance(20)
    store.record_instance(inst(2))  # the quiet period restarts
    clock.advance(29)
    assert store.complete_quiet_series(30) == []
    assert store.get_series(SERIES).state is SeriesState.RECEIVING
    clock.advance(1.5)
    assert store.complete_quiet_series(30) == [SERIES]
    assert store.get_series(SERIES).state is SeriesState.COMPLETE
    assert store.complete_quiet_series(30) == []  # only RECEIVING series


def test_claim_and_finish(store: Store, clock: Clock) -> None:
    assert store.claim_complete_series() is None
    store.record_instance(inst(1))
    assert store.claim_complete_series() is None  # still receiving
    clock.advance(31)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim == Claim(SERIES, 1)
    assert store.get_series(SERIES).state is SeriesState.PROCESSING
    assert store.claim_complete_series() is None  # taken once

    assert store.finish_series(claim, SeriesState.DONE, result={"shape": [2, 512, 512]}) is True
    series = store.get_series(SERIES)
    assert series.state is SeriesState.DONE
    assert series.result == {"shape": [2, 512, 512]}
    assert series.result_generation == 1
    assert series.reason is None


def test_claim_takes_oldest_first(store: Store, clock: Clock) -> None:
    a, b = "1.2.3.1", "1.2.3.2"
    store.record_instance(inst(1, b))
    clock.advance(1)
    store.record_instance(inst(1, a))
    clock.advance(60)
    assert sorted(store.complete_quiet_series(30)) == [a, b]
    first = store.claim_complete_series()
    second = store.claim_complete_series()
    assert first is not None and second is not None
    assert [first.series_uid, second.series_uid] == [b, a]


def test_finish_rejects_non_final_state(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    clock.advance(31)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim is not None
    with pytest.raises(ValueError):
        store.finish_series(claim, SeriesState.RECEIVING)
    assert store.get_series(SERIES).state is SeriesState.PROCESSING


def _processed(store: Store, clock: Clock, state: SeriesState, **kw: object) -> Claim:
    clock.advance(31)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim is not None
    assert store.finish_series(claim, state, **kw) is True  # type: ignore[arg-type]
    return claim


def test_new_instance_after_done_reopens(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    _processed(store, clock, SeriesState.DONE, result={"shape": [1]})
    assert store.record_instance(inst(2)) is True
    series = store.get_series(SERIES)
    assert series.state is SeriesState.RECEIVING
    assert series.generation == 2
    assert series.instances == 2
    assert series.result_generation == 1  # the old result is recognisably stale


def test_new_instance_after_rejection_clears_reason(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    _processed(store, clock, SeriesState.REJECTED, reason="missing_slices", detail="gap at 3")
    rejected = store.get_series(SERIES)
    assert (rejected.reason, rejected.detail) == ("missing_slices", "gap at 3")
    store.record_instance(inst(2))
    series = store.get_series(SERIES)
    assert series.state is SeriesState.RECEIVING
    assert series.generation == 2
    assert series.reason is None
    assert series.detail is None


def test_repeat_instance_after_done_does_not_reopen(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    _processed(store, clock, SeriesState.DONE)
    assert store.record_instance(inst(1)) is False
    series = store.get_series(SERIES)
    assert series.state is SeriesState.DONE
    assert series.generation == 1


def test_stale_claim_is_not_finished(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    clock.advance(31)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim is not None
    store.record_instance(inst(2))  # arrives while the worker is processing
    assert store.finish_series(claim, SeriesState.DONE, result={"stale": True}) is False
    series = store.get_series(SERIES)
    assert series.state is SeriesState.RECEIVING
    assert series.generation == 2
    assert series.result is None
    assert series.result_generation is None

    clock.advance(31)
    store.complete_quiet_series(30)
    fresh = store.claim_complete_series()
    assert fresh == Claim(SERIES, 2)
    assert store.finish_series(fresh, SeriesState.DONE, result={"fresh": True}) is True
    assert store.get_series(SERIES).result == {"fresh": True}
    assert store.finish_series(fresh, SeriesState.FAILED) is False  # not PROCESSING any more


def test_requeue_interrupted(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    store.record_instance(inst(1, "1.2.3.4"))
    clock.advance(31)
    store.complete_quiet_series(30)
    assert store.claim_complete_series() is not None
    assert store.requeue_interrupted() == 1
    counts = store.series_counts()
    assert counts["complete"] == 2
    assert counts["processing"] == 0
    assert store.requeue_interrupted() == 0


def test_series_counts_and_list(store: Store, clock: Clock) -> None:
    counts = store.series_counts()
    assert set(counts) == {s.value for s in SeriesState}
    assert all(v == 0 for v in counts.values())
    store.record_instance(inst(1, "1.2.3.1"))
    clock.advance(1)
    store.record_instance(inst(1, "1.2.3.2"))
    assert store.series_counts()["receiving"] == 2
    assert [s.series_uid for s in store.list_series()] == ["1.2.3.2", "1.2.3.1"]  # newest first
    assert len(store.list_series(limit=1)) == 1


# -- rejections ----------------------------------------------------------------------------------


def test_rejections_recorded_newest_first(store: Store, clock: Clock) -> None:
    assert store.recent_rejections() == []
    store.record_rejection(
        "association", "calling AE not allowed", calling_ae="EVIL", peer_host="10.0.0.9"
    )
    clock.advance(1)
    store.record_rejection("instance", "invalid UID", status=0xC000, ref="abc123")
    clock.advance(1)
    store.record_rejection("series", "missing slices")
    recent = store.recent_rejections()
    assert [r.reason for r in recent] == ["missing slices", "invalid UID", "calling AE not allowed"]
    assert recent[1].status == 0xC000
    assert recent[1].ref == "abc123"
    assert recent[2].calling_ae == "EVIL"
    assert recent[2].peer_host == "10.0.0.9"
    assert recent[0].at == clock()
    assert [r.reason for r in store.recent_rejections(limit=2)] == ["missing slices", "invalid UID"]


# -- concurrency ----------------------------------------------------------------


def test_concurrent_record_instance(store: Store) -> None:
    threads, per_thread = 8, 50
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            barrier.wait()
            series = f"1.2.3.{t % 2}"  # two threads' worth of contention per series
            for n in range(per_thread):
                ok = store.record_instance(inst(t * 1000 + n, series))
                with lock:
                    results.append(ok)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert errors == []
    assert len(results) == threads * per_thread and all(results)
    assert store.instance_count() == threads * per_thread
    assert store.get_series("1.2.3.0").instances == threads * per_thread // 2
    assert store.get_series("1.2.3.1").instances == threads * per_thread // 2
    assert len(store.series_instances("1.2.3.0")) == threads * per_thread // 2


def test_finished_states() -> None:
    assert {state for state in SeriesState if state.finished} == {
        SeriesState.DONE,
        SeriesState.REJECTED,
        SeriesState.FAILED,
        SeriesState.SKIPPED,
    }


# -- MR sequence attributes (schema 7) ---------------------------------------------------------


def mr_inst(n: int, **attributes: object) -> NewInstance:
    return dataclasses.replace(inst(n, modality="MR"), **attributes)  # type: ignore[arg-type]


def test_mr_sequence_attributes_are_recorded_from_the_first_instance(store: Store) -> None:
    store.record_instance(
        mr_inst(
            1,
            contrast_bolus_agent="GADOTERATE",
            scanning_sequence=("SE", "IR"),
            echo_time_ms=95.5,
            repetition_time_ms=9000.0,
            inversion_time_ms=2500.0,
        )
    )
    store.record_instance(mr_inst(2, echo_time_ms=12.0, scanning_sequence=("GR",)))
    series = store.get_series(SERIES)
    assert series.instances == 2
    assert series.contrast_bolus_agent == "GADOTERATE"
    assert series.scanning_sequence == ("SE", "IR")
    assert series.echo_time_ms == 95.5
    assert series.repetition_time_ms == 9000.0
    assert series.inversion_time_ms == 2500.0
    assert store.list_series()[0] == series


def test_a_series_without_mr_sequence_attributes_has_them_empty(store: Store) -> None:
    store.record_instance(inst(1))
    series = store.get_series(SERIES)
    assert series.contrast_bolus_agent == "" and series.scanning_sequence == ()
    assert series.echo_time_ms is None
    assert series.repetition_time_ms is None and series.inversion_time_ms is None
