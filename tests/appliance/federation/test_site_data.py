"""Where a site's federated cases come from: the appliance's store (train split only for
training, held-out split only for evaluation) and phantom presets. Loading only: the
real labelled case is never trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cases.from_seg import case_from_seg
from appliance.config import AppConfig, CasesConfig, StorageConfig
from appliance.errors import FederationError
from appliance.federation.site_data import load_site_cases
from appliance.federation.site_settings import SiteSettings
from appliance.flow.ingest import ingest_files
from appliance.states import CaseOrigin
from appliance.store import Store
from models.tasks import get_task
from tests.peers import SHARED_DATA, require_data

DCMQI = SHARED_DATA / "ct_abdomen_dcmqi_3slice"
PACS = "PACS"  # the caller of the DICOM annotation: listed and trusted


@pytest.mark.parametrize("held_out", [0.0, 0.9])
def test_store_source_respects_the_held_out_split(
    tmp_path: Path, store: Store, held_out: float
) -> None:
    seg = require_data(DCMQI / "liver_SEG_dcmqi.dcm")
    config = AppConfig(
        storage=StorageConfig(root=tmp_path / "data", fsync=False),
        cases=CasesConfig(
            held_out_fraction=held_out, annotation_callers=(PACS,), trusted_callers=(PACS,)
        ),
    )
    ingest_files(store, config, [DCMQI / f"0{i}.dcm" for i in (1, 2, 3)])
    case = case_from_seg(store, config, seg, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None
    site = SiteSettings.from_config(
        {"site-name": "here", "case-source": "store", "database": str(store.path)}
    )
    spec = get_task("liver_ct")
    if case.split.value == "train":
        cases = load_site_cases(site, spec)
        assert len(cases.train) == 1 and cases.held_out == ()
        assert cases.train[0].labels.shape == (3, 512, 512)
    else:  # the only case is held out: nothing to train on, said so
        with pytest.raises(FederationError, match="no active training cases"):
            load_site_cases(site, spec)


def test_store_source_needs_a_database(tmp_path: Path) -> None:
    site = SiteSettings.from_config(
        {"case-source": "store", "database": str(tmp_path / "missing.sqlite3")}
    )
    with pytest.raises(FederationError, match="database"):
        load_site_cases(site, get_task("liver_ct"))


def test_phantom_source_holds_the_last_case_out() -> None:
    site = SiteSettings.from_config(
        {
            "site-name": "site_c",
            "phantom-preset": "site_c",
            "phantom-cases": 3,
            "phantom-matrix": "28,36,36",
            "phantom-spacing": "6,6,6",
        }
    )
    cases = load_site_cases(site, get_task("liver_ct"))
    assert len(cases.train) == 2 and len(cases.held_out) == 1
    with pytest.raises(FederationError, match="phantom-preset"):
        load_site_cases(
            SiteSettings.from_config({"phantom-preset": "site_z"}), get_task("liver_ct")
        )
