from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import AppConfig
from appliance.store import Store
from tests.appliance.flow.helpers import make_config


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return make_config(tmp_path)


@pytest.fixture
def app_store(config: AppConfig) -> Iterator[Store]:
    store = Store(config.storage.database)
    yield store
    store.close()
