"""Model registry and model cards: atomic, immutable, checksummed bundles; safe names;
semver ordering; cards that validate themselves and round-trip through JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from models.errors import ModelsError, NetworkConfigError
from models.lifecycle import ModelState, activation_refusal
from models.model_card import (
    DEMO_INTENDED_USE,
    CardLabel,
    InvalidNameError,
    ModelCard,
    ModelCardError,
    Version,
    check_task_name,
    check_version,
    labels_for_task,
    preprocessing_for_task,
    version_key,
)
from models.registry import (
    ALLOWED_NETWORKS,
    CARD_FILE,
    WEIGHTS_FILE,
    BundleCorruptError,
    BundleExistsError,
    BundleNotFoundError,
    ModelRegistry,
    RegistryError,
    WeightsIntegrityError,
    build_network,
    resolve_network,
)
from models.tasks import LIVER_CT_SPEC

UNET_ARCH: dict[str, Any] = {
    "network": "UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "norm": "instance",
    },
}


def _fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": "Liver CT test UNet",
        "labels": labels_for_task(LIVER_CT_SPEC),
        "architecture": UNET_ARCH,
        "preprocessing": preprocessing_for_task(LIVER_CT_SPEC),
        "intended_use": DEMO_INTENDED_USE,
        "training_data": "12 synthetic abdominal CT phantoms",
        "metrics": {"dice_liver": 0.96, "dice_tumour": 0.8},
    }
    fields.update(overrides)
    return fields


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(build_network(UNET_ARCH).state_dict())


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def _card_dict(**overrides: Any) -> dict[str, Any]:
    card = ModelCard(
        task="liver_ct",
        version="1.0.0",
        weights_sha256="0" * 64,
        weights_file="weights.pt",
        created_at="2025-01-02T03:04:05+00:00",
        **_fields(),
    )
    data = card.to_dict()
    data.update(overrides)
    return data


# -- add / get / load ------------------------------------------------------------------------


def test_add_writes_a_complete_bundle_and_loads_the_same_tensors(registry: ModelRegistry) -> None:
    state = _state()
    bundle = registry.add("liver_ct", "1.0.0", state, federated_round=3, **_fields())

    assert bundle.path == registry.root / "liver_ct" / "1.0.0"
    assert sorted(p.name for p in bundle.path.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    assert [p.name for p in bundle.path.parent.iterdir()] == ["1.0.0"]  # no temp folder left
    digest = hashlib.sha256((bundle.path / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert bundle.card.weights_sha256 == digest
    assert json.loads((bundle.path / CARD_FILE).read_text())["weights_sha256"] == digest

    again = registry.get("liver_ct", "1.0.0")
    assert again == bundle
    assert again.card.intended_use == DEMO_INTENDED_USE
    assert again.card.labels[0].property_type.value == "10200004"
    assert again.provenance.weights_sha256 == digest
    assert again.provenance.federated_round == 3
    assert again.provenance.version == "1.0.0"

    loaded = registry.load_state_dict(again)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    registry.verify(again)


def test_load_network_rebuilds_the_architecture_with_the_weights(registry: ModelRegistry) -> None:
    torch.manual_seed(1)
    original = build_network(UNET_ARCH).eval()
    bundle = registry.add("liver_ct", "1.0.0", original.state_dict(), **_fields())
    rebuilt = registry.load_network(bundle)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(original(x), rebuilt(x))
    assert not rebuilt.training


def test_flipped_byte_in_weights_is_refused_naming_the_bundle(registry: ModelRegistry) -> None:
    bundle = registry.add("liver_ct", "1.0.0", _state(), **_fields())
    raw = bytearray(bundle.weights_path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    bundle.weights_path.write_bytes(bytes(raw))

    with pytest.raises(WeightsIntegrityError, match=r"liver_ct/1\.0\.0.*sha256"):
        registry.load_state_dict(bundle)
    with pytest.raises(WeightsIntegrityError):
        registry.verify(registry.get("liver_ct", "1.0.0"))
    with pytest.raises(WeightsIntegrityError):
        registry.load_network(bundle)


def test_missing_weights_file_is_a_clear_error(registry: ModelRegistry) -> None:
    bundle = registry.add("liver_ct", "1.0.0", _state(), **_fields())
    bundle.weights_path.unlink()
    with pytest.raises(BundleCorruptError, match=r"liver_ct/1\.0\.0.*weights\.pt is missing"):
        registry.load_state_dict(bundle)


class _Sneaky:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled code ran",))


def test_weights_are_loaded_with_weights_only_even_when_the_hash_matches(
    registry: ModelRegistry,
) -> None:
    bundle = registry.add("liver_ct", "1.0.0", _state(), **_fields())
    torch.save({"w": torch.zeros(1), "x": _Sneaky()}, bundle.weights_path)
    card = json.loads(bundle.card_path.read_text())
    card["weights_sha256"] = hashlib.sha256(bundle.weights_path.read_bytes()).hexdigest()
    bundle.card_path.write_text(json.dumps(card))
    with pytest.raises(BundleCorruptError, match=r"cannot load weights.pt"):
        registry.load_state_dict(registry.get("liver_ct", "1.0.0"))


def test_an_existing_version_is_never_overwritten(registry: ModelRegistry) -> None:
    first = registry.add("liver_ct", "1.0.0", _state(0), **_fields())
    before = first.weights_path.read_bytes()
    with pytest.raises(BundleExistsError, match=r"liver_ct/1\.0\.0 already exists"):
        registry.add("liver_ct", "1.0.0", _state(1), **_fields())
    assert first.weights_path.read_bytes() == before
    assert [p.name for p in first.path.parent.iterdir()] == ["1.0.0"]


def test_an_invalid_card_writes_nothing(registry: ModelRegistry) -> None:
    with pytest.raises(ModelCardError, match="labels"):
        registry.add("liver_ct", "1.0.0", _state(), **_fields(labels=()))
    with pytest.raises(ModelCardError, match="intended_use"):
        registry.add("liver_ct", "1.0.0", _state(), **_fields(intended_use=" "))
    with pytest.raises(RegistryError, match="not a tensor"):
        registry.add("liver_ct", "1.0.0", {"w": [1.0]}, **_fields())  # type: ignore[dict-item]
    assert not registry.root.exists()


def test_get_unknown_and_inconsistent_bundles(registry: ModelRegistry) -> None:
    with pytest.raises(BundleNotFoundError):
        registry.get("liver_ct", "9.9.9")
    bundle = registry.add("liver_ct", "1.0.0", _state(), **_fields())
    card = json.loads(bundle.card_path.read_text())
    card["version"] = "2.0.0"
    bundle.card_path.write_text(json.dumps(card))
    with pytest.raises(BundleCorruptError, match="must agree"):
        registry.get("liver_ct", "1.0.0")
    bundle.card_path.write_text("{not json")
    with pytest.raises(BundleCorruptError, match=r"invalid model_card.json"):
        registry.get("liver_ct", "1.0.0")


# -- listing and versions ------------------------------------------------------------------


def test_list_orders_versions_like_semver(registry: ModelRegistry) -> None:
    state = _state()
    for version in ("1.2.10", "2.0.0", "1.2.9", "1.10.0", "2.0.0-rc.1", "1.2.0"):
        registry.add("liver_ct", version, state, **_fields())
    registry.add("glioma_mr", "0.1.0", state, **_fields())

    assert [b.version for b in registry.list("liver_ct")] == [
        "1.2.0",
        "1.2.9",
        "1.2.10",
        "1.10.0",
        "2.0.0-rc.1",
        "2.0.0",
    ]
    assert [b.ref for b in registry.list()][:2] == ["glioma_mr/0.1.0", "liver_ct/1.2.0"]
    assert registry.versions("glioma_mr") == ["0.1.0"]
    latest = registry.latest("liver_ct")
    assert latest is not None and latest.version == "2.0.0"
    assert registry.latest("nothing_here") is None
    assert registry.list("nothing_here") == []


def test_list_skips_temporary_and_broken_folders(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.add("liver_ct", "1.0.0", _state(), **_fields())
    (registry.root / "liver_ct" / ".tmp-1.1.0-abcdef").mkdir()  # a crashed add
    (registry.root / "liver_ct" / "1.2.0").mkdir()  # no card
    (registry.root / "liver_ct" / "not-a-version").mkdir()
    (registry.root / ".hidden").mkdir()
    with caplog.at_level(logging.WARNING, logger="models.registry"):
        assert [b.ref for b in registry.list()] == ["liver_ct/1.0.0"]
    assert "liver_ct/1.2.0" in caplog.text


def test_empty_registry_lists_nothing(tmp_path: Path) -> None:
    assert ModelRegistry(tmp_path / "absent").list() == []


def test_semver_precedence() -> None:
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.2.9",
        "1.2.10",
        "10.0.0",
    ]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert Version.parse("1.2.10") > Version.parse("1.2.9")
    assert str(Version.parse("2.0.0-fed.r12")) == "2.0.0-fed.r12"


@pytest.mark.parametrize(
    "task",
    ["", "..", "../x", "a/b", "a\\b", ".hidden", "-rf", "liver ct", "x\x00", "a..b", "é", "a" * 65],
)
def test_unsafe_task_names_are_rejected_before_touching_disk(
    registry: ModelRegistry, task: str
) -> None:
    with pytest.raises(InvalidNameError):
        check_task_name(task)
    with pytest.raises(InvalidNameError):
        registry.add(task, "1.0.0", _state(), **_fields())
    with pytest.raises(InvalidNameError):
        registry.get(task, "1.0.0")
    with pytest.raises(InvalidNameError):
        registry.list(task)
    assert not registry.root.exists()


@pytest.mark.parametrize(
    "version",
    ["", "1", "1.2", "1.2.3.4", "01.2.3", "1.02.3", "v1.0.0", "1.0.0+build", "../1.0.0",
     "1.0.0/..", "1.0.0-", "1.0.0-01", "1.0.0..1", "1.0.0 ", "1." + "1" * 70 + ".0"],
)  # fmt: skip
def test_bad_versions_are_rejected_before_touching_disk(
    registry: ModelRegistry, version: str
) -> None:
    with pytest.raises(InvalidNameError):
        check_version(version)
    with pytest.raises(InvalidNameError):
        registry.add("liver_ct", version, _state(), **_fields())
    assert not registry.root.exists()


def test_errors_share_the_models_base() -> None:
    for error in (
        InvalidNameError,
        ModelCardError,
        RegistryError,
        WeightsIntegrityError,
        BundleExistsError,
        BundleNotFoundError,
        BundleCorruptError,
    ):
        assert issubclass(error, ModelsError)


# -- lifecycle vocabulary ------------------------------------------------------------------


def test_model_states_and_transitions() -> None:
    assert [s.value for s in ModelState] == [
        "candidate",
        "validated",
        "active",
        "rejected",
        "retired",
    ]
    assert ModelState.CANDIDATE.can_become("validated")
    assert ModelState.CANDIDATE.can_become(ModelState.REJECTED)
    assert ModelState.VALIDATED.can_become(ModelState.RETIRED)
    # becoming active (or leaving it) is an activation, never a plain state change
    assert not any(state.can_become(ModelState.ACTIVE) for state in ModelState)
    assert not ModelState.ACTIVE.can_become(ModelState.RETIRED)
    assert not ModelState.REJECTED.can_become(ModelState.VALIDATED)


def test_activation_rules() -> None:
    assert activation_refusal(ModelState.VALIDATED, forced=False) is None
    assert activation_refusal(ModelState.RETIRED, forced=False) is None  # rollback
    assert activation_refusal(ModelState.CANDIDATE, forced=True) is None  # gate bypassed
    assert "--force" in (activation_refusal(ModelState.CANDIDATE, forced=False) or "")
    assert activation_refusal(ModelState.REJECTED, forced=True) is not None
    assert activation_refusal(ModelState.ACTIVE, forced=True) is not None


# -- networks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "torch.nn.Linear",
        "monai.bundle.ConfigParser",
        "monai.networks.nets.DenseNet121",
        "DenseNet121",
        "monai.networks.nets.unet.DynUNet",
        "$os.system",
        "",
    ],
)
def test_only_whitelisted_networks_are_built(target: str) -> None:
    with pytest.raises(NetworkConfigError, match=r"not allowed|does not name"):
        resolve_network(target)
    with pytest.raises(NetworkConfigError):
        build_network({"network": target, "kwargs": {}})


def test_network_names_resolve_to_canonical_classes() -> None:
    assert resolve_network("DynUnet") == "DynUNet"
    assert resolve_network("monai.networks.nets.UNet") == "UNet"
    assert resolve_network("monai.networks.nets.dynunet.DynUNet") == "DynUNet"
    assert {"DynUNet", "SegResNet", "UNet"} <= ALLOWED_NETWORKS


@pytest.mark.parametrize(
    "bad",
    [
        {"norm": "$__import__('os').getcwd()"},
        {"norm": "@somewhere"},
        {"norm": "%other.json::net"},
        {"act": {"_target_": "torch.nn.ReLU"}},
        {"_mode_": "debug"},
        {"_debug_": True},
        {"dropout": float("nan")},
    ],
)
def test_network_kwargs_must_be_plain_values(bad: dict[str, Any]) -> None:
    arch = {"network": "UNet", "kwargs": {**UNET_ARCH["kwargs"], **bad}}
    with pytest.raises(NetworkConfigError):
        build_network(arch)


def test_bad_constructor_arguments_are_a_network_config_error() -> None:
    with pytest.raises(NetworkConfigError, match="could not build UNet"):
        build_network({"network": "UNet", "kwargs": {"spatial_dims": 3}})


# -- model cards ---------------------------------------------------------------------------


def test_card_round_trips_through_json_and_is_frozen() -> None:
    card = ModelCard.from_dict(_card_dict(federated_round=2, parent_version="0.9.0"))
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert again.to_dict() == card.to_dict()
    assert again.federated_round == 2 and again.parent_version == "0.9.0"
    assert again.preprocessing["target_spacing_mm"] == (1.5, 1.5, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.version = "2.0.0"  # type: ignore[misc]
    with pytest.raises(TypeError):
        card.architecture["kwargs"]["channels"] = [1]


def test_card_does_not_alias_the_callers_dicts() -> None:
    arch = json.loads(json.dumps(UNET_ARCH))
    card = ModelCard(
        task="liver_ct",
        version="1.0.0",
        weights_sha256="a" * 64,
        weights_file="weights.pt",
        created_at=ModelCard.now(),
        **_fields(architecture=arch),
    )
    arch["kwargs"]["in_channels"] = 99
    assert card.architecture["kwargs"]["in_channels"] == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"weights_sha256": "XYZ"}, "weights_sha256"),
        ({"weights_file": "../weights.pt"}, "weights_file"),
        ({"created_at": "2025-01-02T03:04:05"}, "created_at"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"task": "../etc"}, "task"),
        ({"version": "1.0"}, "version"),
        ({"parent_version": "latest"}, "parent_version"),
        ({"federated_round": -1}, "federated_round"),
        ({"federated_round": True}, "federated_round"),
        ({"metrics": {"dice": "high"}}, "metrics.dice"),
        ({"architecture": {"kwargs": {}}}, "architecture.network"),
        ({"architecture": {"network": "UNet"}}, "architecture.kwargs"),
        ({"preprocessing": {"patch_size": [96, 96]}}, "preprocessing.patch_size"),
        ({"labels": []}, "labels"),
        (
            {"labels": [{"index": 1, "name": "Liver", "codes": {"category": ["SCT"], "type": []}}]},
            "labels[0].codes.category",
        ),
        ({"labels": [{"index": 1, "name": "Liver"}]}, "labels[0].codes"),
        ({"format_version": 2}, "format_version"),
        ({"colour": "red"}, "unknown fields"),
        ({"name": ""}, "name"),
    ],
)
def test_card_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ModelCardError, match=re.escape(field)):
        ModelCard.from_dict(_card_dict(**overrides))


def test_card_json_errors() -> None:
    with pytest.raises(ModelCardError, match="not valid JSON"):
        ModelCard.from_json("{")
    data = _card_dict()
    del data["training_data"]
    with pytest.raises(ModelCardError, match="'training_data' is missing"):
        ModelCard.from_dict(data)
    text = json.dumps(_card_dict()).replace('"dice_liver": 0.96', '"dice_liver": NaN')
    with pytest.raises(ModelCardError, match="NaN"):
        ModelCard.from_json(text)


def test_card_labels_carry_codes() -> None:
    labels = labels_for_task(LIVER_CT_SPEC)
    assert [label.name for label in labels] == ["Liver", "Liver tumour"]
    tumour = labels[1].to_dict()
    assert tumour["codes"]["type"] == ["SCT", "108369006", "Neoplasm"]
    assert tumour["codes"]["anatomic_region"] == ["SCT", "10200004", "Liver"]
    assert CardLabel.from_dict(tumour) == labels[1]
