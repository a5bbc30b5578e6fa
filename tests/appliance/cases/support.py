"""Shared data and helpers of the annotated-cases tests."""

from __future__ import annotations

from pathlib import Path

from appliance.config import AppConfig, CasesConfig, StorageConfig
from tests.peers import SHARED_DATA

DCMQI = SHARED_DATA / "ct_abdomen_dcmqi_3slice"
DCMQI_CT = [DCMQI / f"0{i}.dcm" for i in (1, 2, 3)]
DCMQI_SEG = DCMQI / "liver_SEG_dcmqi.dcm"
TOTALSEG = SHARED_DATA / "ct_abdomen_totalseg_j2k"


#: The caller the tests' DICOM annotations come from: listed and trusted by cases_config.
PACS = "PACS"


def cases_config(tmp_path: Path, **cases: object) -> AppConfig:
    cases.setdefault("annotation_callers", (PACS,))
    cases.setdefault("trusted_callers", (PACS,))
    return AppConfig(
        storage=StorageConfig(root=tmp_path / "data", fsync=False),
        cases=CasesConfig(**cases),  # type: ignore[arg-type]
    )
