"""``appliance storage reindex`` on real spool files, a real store and the real CLI: series
with a result on disk become done without any outbox row, the others are held; refusals
(records present, a running service) and an unreadable database kept aside."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import load_config
from appliance.flow.pipeline import result_dir_for
from appliance.ops.reindex import newest_result_generation
from appliance.states import SeriesState
from appliance.store import Store
from appliance.store.integrity import ServiceLock
from dicom_bridge.spool import Spool, SpoolKey
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

CONFIG = """\
[storage]
root = "{root}"
fsync = false
min_free_mb = 0

[models]
shipped = ""
device = "cpu"
"""


def _spool_series(spool: Spool, directory: Path, identity: SeriesIdentity) -> None:
    for path in write_series(
        directory, SeriesGeometry(slices=3, rows=16, columns=16), identity=identity
    ):
        ds = dcmread(path, stop_before_pixels=True)
        key = SpoolKey(identity.study_uid, identity.series_uid, str(ds.SOPInstanceUID))
        spool.write(key, (path.read_bytes(),))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, SeriesIdentity, SeriesIdentity]]:
    """A storage root whose database was lost: two spooled series, one with a result
    (generation 2) on disk."""
    config_path = tmp_path / "appliance.toml"
    config_path.write_text(CONFIG.format(root=tmp_path / "data"))
    config = load_config(config_path)
    spool = Spool(config.storage.spool_dir, fsync=False)
    delivered, unprocessed = SeriesIdentity(), SeriesIdentity(series_number=2)
    _spool_series(spool, tmp_path / "a", delivered)
    _spool_series(spool, tmp_path / "b", unprocessed)
    for generation in (1, 2):
        result = result_dir_for(config, delivered.series_uid, generation)
        result.mkdir(parents=True)
        (result / "seg.dcm").write_bytes(b"SEG")
    yield config_path, delivered, unprocessed


def _run(config_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["storage", "reindex", *args, "--config", str(config_path)])
    return result.exit_code, result.output


def test_reindex_marks_delivered_series_done_and_holds_the_rest(
    site: tuple[Path, SeriesIdentity, SeriesIdentity],
) -> None:
    config_path, delivered, unprocessed = site
    code, output = _run(config_path)
    assert code == 0, output
    assert "1 series with a result marked done" in output
    assert "1 series without a result held" in output
    store = Store(config_path.parent / "data" / "appliance.sqlite3")
    try:
        assert store.instance_count() == 6
        done = store.get_series(delivered.series_uid)
        assert (done.state, done.reason) == (SeriesState.DONE, "reindexed")
        assert done.generation == done.result_generation == 2  # next instance: gen 3
        held = store.get_series(unprocessed.series_uid)
        assert (held.state, held.reason) == (SeriesState.SKIPPED, "reindexed")
        assert sum(store.outbox_counts().values()) == 0, "nothing is queued to be sent"
        assert store.claim_complete_series() is None, "nothing is queued for processing"
    finally:
        store.close()

    code, output = _run(config_path)
    assert code == 1 and "holds records" in output and "--force" in output

    code, output = _run(config_path, "--force", "--process-unfinished")
    assert code == 0, output
    store = Store(config_path.parent / "data" / "appliance.sqlite3")
    try:
        assert store.instance_count() == 6
        assert store.get_series(unprocessed.series_uid).state is SeriesState.COMPLETE
        assert store.get_series(delivered.series_uid).state is SeriesState.DONE
        assert sum(store.outbox_counts().values()) == 0
    finally:
        store.close()


def test_reindex_keeps_an_unreadable_database_aside(
    site: tuple[Path, SeriesIdentity, SeriesIdentity],
) -> None:
    config_path, _, _ = site
    database = config_path.parent / "data" / "appliance.sqlite3"
    database.write_bytes(b"not a database " * 500)
    code, output = _run(config_path)
    assert code == 0, output
    kept = list(database.parent.glob("appliance.sqlite3.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"not a database")
    assert "kept as" in output and "(was unreadable)" in output


def test_reindex_is_refused_while_the_service_holds_the_database(
    site: tuple[Path, SeriesIdentity, SeriesIdentity],
) -> None:
    config_path, _, _ = site
    database = config_path.parent / "data" / "appliance.sqlite3"
    with ServiceLock(database):
        code, output = _run(config_path)
    assert code == 1
    assert "in use by a running appliance" in output
    assert not database.exists(), "nothing was built"


def test_newest_result_generation_ignores_empty_and_foreign_folders(tmp_path: Path) -> None:
    uid = "1.2.826.0.1.3680043.8.498.5"
    (tmp_path / uid / "gen-3").mkdir(parents=True)  # empty: the result was not written
    (tmp_path / uid / "gen-2").mkdir()
    (tmp_path / uid / "gen-2" / "seg.dcm").write_bytes(b"x")
    (tmp_path / uid / "notes").mkdir()
    assert newest_result_generation(tmp_path, uid) == 2
    assert newest_result_generation(tmp_path, "1.2.3") is None
    assert newest_result_generation(tmp_path, "../etc") is None
