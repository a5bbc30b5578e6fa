"""Fixtures of the annotated-cases tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import AppConfig
from appliance.flow.ingest import ingest_files
from appliance.store import Store
from tests.appliance.cases.support import DCMQI_CT, DCMQI_SEG, cases_config
from tests.peers import require_data


@pytest.fixture
def dcmqi_store(tmp_path: Path, store: Store) -> tuple[AppConfig, Store]:
    require_data(DCMQI_SEG)
    config = cases_config(tmp_path)
    ingest_files(store, config, DCMQI_CT)
    return config, store
