"""appliance.config.sections and app: a section built in code checks itself as one read
from TOML is checked, names every bad key as the file would, and normalises what it keeps."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance.config import (
    AppConfig,
    CallerConfig,
    CasesConfig,
    DestinationConfig,
    DicomConfig,
    HttpConfig,
    InferenceConfig,
    LimitsConfig,
    LoggingConfig,
    ModelsConfig,
    OutboxConfig,
    OutputConfig,
    RetentionConfig,
    StorageConfig,
    TlsConfig,
    parse_config,
)
from appliance.errors import ConfigError
from dicom_bridge.limits import SizeLimits


def issues(make: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
    """Build ``make(*args, **kwargs)``, expect a ConfigError, return {key: message}."""
    with pytest.raises(ConfigError) as info:
        make(*args, **kwargs)
    return {issue.key: issue.message for issue in info.value.issues}


@pytest.mark.parametrize(
    ("make", "kwargs", "key", "words"),
    [
        (DicomConfig, {"port": 0}, "dicom.port", "1 to 65535"),
        (DicomConfig, {"ae_title": "BAD\\AE"}, "dicom.ae_title", "backslash"),
        (DicomConfig, {"series_quiet_seconds": 0}, "dicom.series_quiet_seconds", "0.1 to 86400"),
        (DicomConfig, {"allowed_callers": ("PACS",)}, "dicom.allowed_callers", "AE titles"),
        (StorageConfig, {"min_free_mb": -1}, "storage.min_free_mb", "0 to 100000000"),
        (StorageConfig, {"fsync": "yes"}, "storage.fsync", "true or false"),
        (OutboxConfig, {"max_attempts": 0}, "outbox.max_attempts", "1 to 1000"),
        (LoggingConfig, {"level": "LOUD"}, "logging.level", "DEBUG, INFO, WARNING, ERROR"),
        (LoggingConfig, {"format": "xml"}, "logging.format", "text, json"),
        (RetentionConfig, {"source_days": "soon"}, "retention.source_days", '"forever"'),
        (RetentionConfig, {"interval_hours": -1}, "retention.interval_hours", "0 to 8760"),
        (HttpConfig, {"bind": "bad host!"}, "http.bind", "IP address or host name"),
        (HttpConfig, {"port": 70000}, "http.port", "1 to 65535"),
        (ModelsConfig, {"device": "tpu"}, "models.device", "auto, cpu, cuda"),
        (ModelsConfig, {"gate_margin": 2.0}, "models.gate_margin", "0 to 1"),
        (InferenceConfig, {"threads": 0}, "inference.threads", "integer from 1 to 1024"),
        (InferenceConfig, {"threads": 1.5}, "inference.threads", "integer from 1 to 1024"),
        (OutputConfig, {"seg_type": "RLE"}, "output.seg_type", "BINARY, LABELMAP"),
        (OutputConfig, {"destinations": "pacs"}, "output.destinations", "list of destination"),
        (CasesConfig, {"held_out_fraction": 0.95}, "cases.held_out_fraction", "0 to 0.9"),
        (CasesConfig, {"split_key": "short"}, "cases.split_key", "at least 16"),
        (LimitsConfig, {"max_instance_mb": 0}, "limits.max_instance_mb", "1 to 65536"),
        (LimitsConfig, {"max_frame_pixels": 1.5}, "limits.max_frame_pixels", "integer"),
        (LimitsConfig, {"max_working_voxels": 10}, "limits.max_working_voxels", "262144 to"),
        (DicomConfig, {"network_timeout_seconds": 0}, "dicom.network_timeout_seconds", "1 to"),
    ],
)
def test_a_section_built_in_code_names_its_bad_key(
    make: Any, kwargs: dict[str, Any], key: str, words: str
) -> None:
    found = issues(make, **kwargs)
    assert list(found) == [key]
    assert words in found[key]


@pytest.mark.parametrize(
    ("section", "kwargs"),
    [
        ("dicom", {"port": 70000}),
        ("storage", {"min_free_mb": -1}),
        ("outbox", {"poll_seconds": 0}),
        ("logging", {"level": "LOUD"}),
        ("retention", {"results_days": -3}),
        ("http", {"port": 0}),
        ("models", {"gate_min_cases": 0}),
        ("output", {"seg_type": "RLE"}),
        ("cases", {"held_out_fraction": 1.5}),
        ("limits", {"max_series_voxels": -1}),
    ],
)
def test_code_and_toml_report_the_same_issue(section: str, kwargs: dict[str, Any]) -> None:
    """The rule lives in the section: the file's problem is the object's problem."""
    assert section in {f.name for f in dataclasses.fields(AppConfig)}
    with pytest.raises(ConfigError) as from_toml:
        parse_config({section: kwargs})
    make = type(getattr(AppConfig(), section))
    with pytest.raises(ConfigError) as from_code:
        make(**kwargs)
    assert from_code.value.issues == from_toml.value.issues


def test_all_of_a_sections_problems_are_reported_at_once() -> None:
    found = issues(DicomConfig, port=0, ae_title="", max_associations=0, bind="not a host")
    assert set(found) == {"dicom.port", "dicom.ae_title", "dicom.max_associations", "dicom.bind"}


def test_outbox_backoff_max_below_initial_in_code() -> None:
    found = issues(OutboxConfig, backoff_initial_seconds=60.0, backoff_max_seconds=5.0)
    assert "backoff_initial_seconds" in found["outbox.backoff_max_seconds"]
    assert OutboxConfig(backoff_initial_seconds=5.0, backoff_max_seconds=5.0)


def test_items_name_their_keys_relative_to_themselves(tmp_path: Path) -> None:
    """A destination, caller or TLS table does not know where it sits; the loader puts
    its keys in place (``destinations[0].port``, see test_loading)."""
    found = issues(DestinationConfig, "has space", "X\\Y", "10.0.0.5", 0, timeout_seconds=0)
    assert set(found) == {"name", "ae_title", "port", "timeout_seconds"}
    found = issues(DestinationConfig, None, None, None, None)
    assert found == {
        "name": "is required",
        "ae_title": "is required",
        "host": "is required",
        "port": "is required (an integer from 1 to 65535)",
    }
    assert set(issues(CallerConfig, "A" * 17, "bad host!")) == {"ae_title", "host"}
    found = issues(TlsConfig, tmp_path / "no-cert.pem", tmp_path / "no-key.pem", None, True)
    assert "does not exist" in found["cert_file"] and "does not exist" in found["key_file"]
    assert "require_client_cert" in found["ca_file"]


def test_a_section_refuses_a_wrong_nested_object() -> None:
    found = issues(DicomConfig, tls="cert.pem")
    assert "TlsConfig" in found["dicom.tls"]
    found = issues(AppConfig, dicom=StorageConfig())
    assert "DicomConfig" in found["dicom"]


def test_sections_normalise_what_they_accept(tmp_path: Path) -> None:
    dicom = DicomConfig(ae_title=" PACS ", series_quiet_seconds=30, allowed_callers=[])  # type: ignore[arg-type]
    assert dicom.ae_title == "PACS"
    assert isinstance(dicom.series_quiet_seconds, float)
    assert dicom.allowed_callers == ()
    assert LoggingConfig(level="debug", format="JSON") == LoggingConfig("DEBUG", "json")
    assert ModelsConfig(device="CPU", shipped=None).device == "cpu"
    assert ModelsConfig(root=str(tmp_path), shipped=None).root == tmp_path  # type: ignore[arg-type]
    assert OutputConfig(seg_type="labelmap", destinations=["a", "a", "b"]) == OutputConfig(  # type: ignore[arg-type]
        destinations=("a", "b"), seg_type="LABELMAP"
    )
    assert RetentionConfig(source_days="forever", results_days=7).source_days is None  # type: ignore[arg-type]
    assert CasesConfig(split_key=" " + "k" * 16 + " ").split_key == "k" * 16
    assert StorageConfig(root=str(tmp_path)).root == tmp_path  # type: ignore[arg-type]


def test_replace_checks_again() -> None:
    dicom = DicomConfig()
    assert dataclasses.replace(dicom, port=104).port == 104
    with pytest.raises(ConfigError, match=r"dicom\.port"):
        dataclasses.replace(dicom, port=0)


def _dest(name: str) -> DestinationConfig:
    return DestinationConfig(name, "PACS", "10.0.0.5", 104)


def test_app_config_checks_what_involves_several_sections() -> None:
    found = issues(AppConfig, destinations=(_dest("pacs"), _dest("pacs")))
    assert "'pacs'" in found["destinations"] and "more than once" in found["destinations"]
    found = issues(
        AppConfig, destinations=(_dest("pacs"),), output=OutputConfig(destinations=("nope",))
    )
    assert found["output.destinations"] == "'nope' is not a configured destination (known: pacs)"
    found = issues(AppConfig, destinations=("pacs",))
    assert "destinations" in found
    ok = AppConfig(destinations=(_dest("pacs"),), output=OutputConfig(destinations=("pacs",)))
    assert ok.output_destinations == ("pacs",)


def test_a_bad_section_fails_before_the_whole_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        AppConfig(storage=StorageConfig(min_free_mb=-5), http=HttpConfig())
    assert [issue.key for issue in info.value.issues] == ["storage.min_free_mb"]
    assert str(info.value).startswith("config is invalid:\n  storage.min_free_mb: ")


def test_defaults_are_valid() -> None:
    config = AppConfig()
    assert config == parse_config({})
    assert config.federation.strategy == "fedavg"


def test_limits_reach_dicom_bridge_in_bytes() -> None:
    limits = parse_config({"limits": {"max_instance_mb": 64, "max_frame_pixels": 1 << 20}})
    assert limits.limits.sizes.max_instance_bytes == 64 * 2**20
    assert limits.limits.sizes.max_frame_pixels == 1 << 20
    assert AppConfig().limits.sizes == SizeLimits()  # the defaults are dicom_bridge's


def test_inference_threads_default_to_the_cores_this_process_may_use() -> None:
    import os

    assert InferenceConfig().threads == len(os.sched_getaffinity(0))
    assert parse_config({"inference": {"threads": 1}}).inference.threads == 1
    assert parse_config({}).inference == InferenceConfig()
    with pytest.raises(ConfigError, match=r"inference\.thread"):
        parse_config({"inference": {"thread": 2}})
