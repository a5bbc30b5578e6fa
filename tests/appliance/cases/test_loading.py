"""The trainers' API: only ACTIVE cases of the asked split; held-out cases never train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import dcmread

from appliance.cases.from_seg import case_from_seg
from appliance.cases.loading import load_cases
from appliance.cases.split import split_for, split_key
from appliance.config import AppConfig
from appliance.flow.ingest import ingest_files
from appliance.states import CaseOrigin, CaseSplit, CaseState
from appliance.store import Store
from tests.appliance.cases.support import DCMQI_CT, DCMQI_SEG, PACS, cases_config
from tests.peers import require_data


def test_trainers_get_only_active_cases_of_their_split(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None
    other = CaseSplit.TRAIN if case.split is CaseSplit.HELD_OUT else CaseSplit.HELD_OUT
    assert load_cases(store, "liver_ct", other) == []
    (loaded,) = load_cases(store, "liver_ct", case.split)
    assert loaded.case_id == case.id
    assert loaded.case.image.shape == loaded.case.labels.shape == (3, 512, 512)
    assert loaded.case.labels.dtype == np.uint8
    liver_hu = float(loaded.case.image[loaded.case.labels == 1].mean())
    assert 0.0 < liver_hu < 200.0  # soft tissue: the labels lie on the right voxels
    store.set_case_state(case.id, CaseState.EXCLUDED)
    assert load_cases(store, "liver_ct", case.split) == []
    store.set_case_state(case.id, CaseState.ACTIVE)
    assert [c.case_id for c in load_cases(store, "liver_ct", case.split)] == [case.id]


def test_held_out_cases_never_reach_training(tmp_path: Path, store: Store) -> None:
    require_data(DCMQI_SEG)
    config = cases_config(tmp_path, held_out_fraction=0.9)
    ingest_files(store, config, DCMQI_CT)
    study = str(dcmread(DCMQI_CT[0], stop_before_pixels=True).StudyInstanceUID)
    expected = split_for(study, split_key(store, config), 0.9)
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and case.split is expected
    train_ids = [c.case_id for c in load_cases(store, "liver_ct", CaseSplit.TRAIN)]
    assert (case.id in train_ids) == (expected is CaseSplit.TRAIN)
