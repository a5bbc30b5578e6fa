"""Importing MONAI-bundle-style folders that the tests build themselves (tiny networks,
random weights): what works, what is refused, and that nothing executable gets through."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from monai.networks.nets import DynUNet, UNet

from models.bundle_import import (
    IMPORTED_INTENDED_USE,
    BundleImportError,
    import_monai_bundle,
    read_monai_bundle,
)
from models.model_card import CardLabel, InvalidNameError, labels_for_task, thaw
from models.registry import (
    BundleExistsError,
    ModelRegistry,
    WeightsIntegrityError,
    build_network,
)
from models.tasks import GLIOMA_MR_SPEC, LIVER_CT_SPEC, Code
from tests.models.zoo import NONCOMMERCIAL_ZOO, zoo_bundle, zoo_configs

DYNUNET_DEF: dict[str, Any] = {
    "_target_": "DynUNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "kernel_size": [3, 3, 3],
    "strides": [1, 2, 2],
    "upsample_kernel_size": [2, 2],
    "filters": [4, 8, 16],
    "norm_name": "instance",
}

#: A liver bundle's own pipeline, as the model zoo writes them (read as data, never run).
PIPELINE: dict[str, Any] = {
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {
                "_target_": "Spacingd",
                "keys": "image",
                "pixdim": [1.5, 1.5, 2.0],
                "mode": "bilinear",
            },
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -100,
                "a_max": 250,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
        ],
    },
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "overlap": 0.25},
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "nearest_interp": False,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ],
    },
}

METADATA: dict[str, Any] = {
    "schema": "https://example.invalid/meta_schema_20240725.json",
    "version": "0.3.1",
    "changelog": {"0.3.1": "smaller", "0.1.0": "first"},
    "monai_version": "1.6.1",
    "pytorch_version": "2.13.0",
    "numpy_version": "2.0.0",
    "name": "Tiny liver DynUNet",
    "task": "Liver and tumour segmentation",
    "description": "A tiny test network",
    "authors": "Test suite",
    "copyright": "none",
    "data_source": "random weights",
    "eval_metrics": {"mean_dice": 0.5, "notes": "n/a"},
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
        "outputs": {"pred": {"type": "image", "num_channels": 3}},
    },
}


def _dynunet(seed: int = 0, filters: list[int] | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in DYNUNET_DEF.items() if k != "_target_"}
    if filters is not None:
        kwargs["filters"] = filters
    return DynUNet(**kwargs).eval()


def write_bundle(
    root: Path,
    *,
    network: torch.nn.Module | None = None,
    network_def: Any = None,
    inference_extra: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, torch.Tensor]], Any] | None = None,
) -> Path:
    """A MONAI-bundle-style folder: configs/metadata.json, configs/inference.json,
    models/model.pt (a state dict, or whatever ``checkpoint`` wraps it into)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA))
    inference: dict[str, Any] = {
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def if network_def is not None else DYNUNET_DEF,
        "network": "$@network_def.to(@device)",
        "preprocessing": PIPELINE["preprocessing"],
        "inferer": PIPELINE["inferer"],
        "postprocessing": PIPELINE["postprocessing"],
    }
    inference.update(inference_extra or {})
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    state = dict((network if network is not None else _dynunet()).state_dict())
    torch.save(checkpoint(state) if checkpoint else state, root / "models" / "model.pt")
    return root


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


# -- what works ----------------------------------------------------------------------------


def test_import_registers_a_bundle_whose_weights_give_identical_outputs(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    original = _dynunet(seed=7)
    src = write_bundle(tmp_path / "liver_bundle", network=original)

    bundle = import_monai_bundle(src, registry, task="liver_ct")

    card = bundle.card
    assert bundle.ref == "liver_ct/0.3.1"  # version from metadata.json
    assert card.name == "Tiny liver DynUNet"
    assert card.architecture["network"] == "DynUNet"
    assert card.architecture["kwargs"]["filters"] == (4, 8, 16)
    assert card.labels == labels_for_task(LIVER_CT_SPEC)
    assert card.preprocessing["target_spacing_mm"] == (1.5, 1.5, 2.0)
    assert card.intended_use == IMPORTED_INTENDED_USE
    assert card.training_data == "random weights"
    assert dict(card.metrics) == {"mean_dice": 0.5}
    assert card.source["kind"] == "monai_bundle"
    assert card.source["network_target"] == "DynUNet"
    assert card.source["bundle_description"] == "A tiny test network"
    assert card.source["changelog"]["0.3.1"] == "smaller"
    assert registry.list("liver_ct") == [bundle]

    # Rebuild by hand from the card, as any consumer would.
    rebuilt = build_network(card.architecture)
    rebuilt.load_state_dict(registry.load_state_dict(bundle), strict=True)
    rebuilt.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = original(x)
        assert torch.equal(rebuilt(x), expected)
        assert torch.equal(registry.load_network(bundle)(x), expected)


def test_import_resolves_references_and_literal_expressions(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    torch.manual_seed(3)
    original = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=2,
        channels=(4, 8, 16),
        strides=(2, 2),
        num_res_units=1,
        norm="batch",
    ).eval()
    network_def = {
        "_target_": "monai.networks.nets.UNet",
        "_desc_": "tiny glioma UNet",
        "spatial_dims": "@spatial_dims",
        "in_channels": 1,
        "out_channels": "@output_classes",
        "channels": "$(4, 8, 16)",
        "strides": "$[2, 2]",
        "num_res_units": "@network_config::res_units",
        "norm": "batch",
    }
    src = write_bundle(
        tmp_path / "glioma",
        network=original,
        network_def=network_def,
        inference_extra={
            "spatial_dims": 3,
            "output_classes": "@num_classes",
            "num_classes": 2,
            "network_config": {"res_units": 1},
        },
        metadata={**METADATA, "version": "1.0.0", "name": "Tiny glioma UNet"},
        checkpoint=lambda sd: {"model": sd, "optimizer": {"lr": 0.1}, "epoch": 4},
    )
    bundle = import_monai_bundle(src, registry, task="glioma_mr", version="2.1.0")
    assert bundle.ref == "glioma_mr/2.1.0"
    assert dict(bundle.card.architecture["kwargs"]) == {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": (4, 8, 16),
        "strides": (2, 2),
        "num_res_units": 1,
        "norm": "batch",
    }
    assert bundle.card.labels == labels_for_task(GLIOMA_MR_SPEC)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(registry.load_network(bundle)(x), original(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 1},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # saved from DataParallel
        lambda sd: {"network": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict-key", "module-prefix", "network-key-with-prefix"],
)
def test_checkpoint_forms(tmp_path: Path, registry: ModelRegistry, wrap: Any) -> None:
    src = write_bundle(tmp_path / "b", network=_dynunet(seed=2), checkpoint=wrap)
    bundle = import_monai_bundle(src, registry, task="liver_ct")
    state = registry.load_state_dict(bundle)
    expected = _dynunet(seed=2).state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_custom_task_with_explicit_labels(tmp_path: Path, registry: ModelRegistry) -> None:
    spleen = CardLabel(
        1,
        "Spleen",
        Code("SCT", "91723000", "Anatomical Structure"),
        ["SCT", "78961009", "Spleen"],  # type: ignore[arg-type]
    )
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    network_def = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
    }
    src = write_bundle(tmp_path / "spleen", network=net, network_def=network_def)
    with pytest.raises(BundleImportError, match="pass labels="):
        import_monai_bundle(src, registry, task="spleen_ct")
    bundle = import_monai_bundle(
        src,
        registry,
        task="spleen_ct",
        labels=[spleen],
        preprocessing={"target_spacing_mm": [1.5, 1.5, 2.0], "patch_size": [96, 96, 96]},
        intended_use="Research only",
    )
    assert bundle.card.labels[0].property_type == Code("SCT", "78961009", "Spleen")
    assert bundle.card.intended_use == "Research only"


# -- integrity -----------------------------------------------------------------------------


def test_corrupted_weights_after_import_are_refused(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    bundle = import_monai_bundle(write_bundle(tmp_path / "b"), registry, task="liver_ct")
    raw = bytearray(bundle.weights_path.read_bytes())
    raw[-100] ^= 0xFF
    bundle.weights_path.write_bytes(bytes(raw))
    with pytest.raises(WeightsIntegrityError, match=r"liver_ct/0\.3\.1"):
        registry.load_state_dict(bundle)
    with pytest.raises(WeightsIntegrityError):
        registry.load_network(bundle)


def test_importing_the_same_version_twice_is_refused(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    src = write_bundle(tmp_path / "b")
    first = import_monai_bundle(src, registry, task="liver_ct")
    with pytest.raises(BundleExistsError):
        import_monai_bundle(src, registry, task="liver_ct")
    assert registry.list() == [first]
    assert import_monai_bundle(src, registry, task="liver_ct", version="0.3.2").version == "0.3.2"


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "message"),
    [
        ("configs/metadata.json", r"configs/metadata.json \(or .yaml, .yml\) is missing"),
        ("configs/inference.json", r"configs/inference.json \(or .yaml, .yml\) is missing"),
        ("models/model.pt", "models/model.pt is missing"),
    ],
)
def test_missing_files_are_named(
    tmp_path: Path, registry: ModelRegistry, relative: str, message: str
) -> None:
    src = write_bundle(tmp_path / "b")
    (src / relative).unlink()
    with pytest.raises(BundleImportError, match=message):
        import_monai_bundle(src, registry, task="liver_ct")
    assert registry.list() == []


def test_missing_folder_and_unsupported_formats(tmp_path: Path, registry: ModelRegistry) -> None:
    with pytest.raises(BundleImportError, match="does not exist"):
        import_monai_bundle(tmp_path / "nowhere", registry, task="liver_ct")
    src = write_bundle(tmp_path / "b")
    (src / "models" / "model.pt").rename(src / "models" / "model.ts")
    with pytest.raises(BundleImportError, match="TorchScript weights are not supported"):
        read_monai_bundle(src)
    (src / "configs" / "inference.json").write_text(json.dumps({"network_def": DYNUNET_DEF}))
    with pytest.raises(BundleImportError, match="TorchScript weights are not supported"):
        read_monai_bundle(src)


@pytest.mark.parametrize("relative", ["configs/metadata.json", "configs/inference.json"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": "1.0.0", "version": "2.0.0"}', "duplicate key"),
        ("[1, 2, 3]", "must hold a mapping"),
        (b"\xff\xfe\x00", "not valid JSON"),
    ],
)
def test_bad_json_is_named(
    tmp_path: Path, registry: ModelRegistry, relative: str, content: str | bytes, message: str
) -> None:
    src = write_bundle(tmp_path / "b")
    path = src / relative
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(BundleImportError, match=f"{relative}.*{message}"):
        import_monai_bundle(src, registry, task="liver_ct")


def test_weights_that_are_not_plain_tensors_are_refused(tmp_path: Path) -> None:
    src = write_bundle(tmp_path / "b")
    (src / "models" / "model.pt").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(BundleImportError, match=r"models/model.pt cannot be loaded"):
        read_monai_bundle(src)
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, src / "models" / "model.pt")
    with pytest.raises(BundleImportError, match="neither a state dict nor a checkpoint"):
        read_monai_bundle(src)


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path("should-never-exist"),))


def test_pickled_code_in_weights_is_never_run(
    tmp_path: Path, registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    src = write_bundle(tmp_path / "b")
    torch.save({"model": _dynunet().state_dict(), "extra": _Payload()}, src / "models" / "model.pt")
    with pytest.raises(BundleImportError, match="weights_only"):
        import_monai_bundle(src, registry, task="liver_ct")
    assert not (tmp_path / "should-never-exist").exists()


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "$os.system",
        "builtins.exec",
        "torch.nn.Linear",
        "monai.networks.nets.DenseNet121",
        "monai.bundle.ConfigParser",
        "subprocess.Popen",
    ],
)
def test_non_whitelisted_targets_are_refused(
    tmp_path: Path, registry: ModelRegistry, target: str
) -> None:
    src = write_bundle(tmp_path / "b", network_def={**DYNUNET_DEF, "_target_": target})
    with pytest.raises(BundleImportError, match=r"network_def\._target_.*not allowed"):
        import_monai_bundle(src, registry, task="liver_ct")
    assert registry.list() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_name": "$__import__('pathlib').Path('pwned').touch()"}, "not allowed"),
        ({"norm_name": "$torch.nn.InstanceNorm3d"}, "not allowed"),
        ({"norm_name": "%other.json::norm"}, "macro"),
        ({"norm_name": "@undefined_entry"}, "not defined"),
        ({"norm_name": "@device"}, "not allowed"),  # a reference to an expression
        ({"norm_name": "@#sibling"}, "relative reference"),
        ({"act_name": {"_target_": "torch.nn.ReLU"}}, "nested components"),
        ({"_mode_": "callable"}, "_mode_"),
        ({"_requires_": "@device"}, "_requires_"),
        ({"_disabled_": True}, "_disabled_"),
        ({"deep_supervision": "$set()"}, "not allowed"),
    ],
)
def test_executable_or_unsupported_network_defs_are_refused(
    tmp_path: Path,
    registry: ModelRegistry,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    src = write_bundle(tmp_path / "b", network_def={**DYNUNET_DEF, **change})
    with pytest.raises(BundleImportError, match=message):
        import_monai_bundle(src, registry, task="liver_ct")
    assert not (tmp_path / "pwned").exists()
    assert registry.list() == []


def test_network_def_problems_are_named(tmp_path: Path, registry: ModelRegistry) -> None:
    src = write_bundle(tmp_path / "a", inference_extra={"network_def": "@net_a", "net_a": "@net_a"})
    with pytest.raises(BundleImportError, match="circular"):
        read_monai_bundle(src)
    src = write_bundle(tmp_path / "b")
    (src / "configs" / "inference.json").write_text(json.dumps({"network": "x"}))
    with pytest.raises(BundleImportError, match="no 'network_def'"):
        read_monai_bundle(src)
    src = write_bundle(tmp_path / "c", network_def={"spatial_dims": 3})
    with pytest.raises(BundleImportError, match="_target_"):
        read_monai_bundle(src)
    src = write_bundle(tmp_path / "d", network_def={**DYNUNET_DEF, "no_such_argument": 1})
    with pytest.raises(
        BundleImportError,
        match=r"DynUNet in the installed MONAI 1\.6\.\d+ has no argument 'no_such_argument' "
        r"\(the bundle was written for MONAI 1\.6\.1\)",
    ):
        read_monai_bundle(src)


def test_architecture_mismatch_is_refused(tmp_path: Path, registry: ModelRegistry) -> None:
    # Weights of a wider network than network_def describes.
    src = write_bundle(tmp_path / "b", network=_dynunet(filters=[8, 16, 32]))
    with pytest.raises(BundleImportError, match=r"does not match the network.*size mismatch"):
        import_monai_bundle(src, registry, task="liver_ct")
    # Weights of a different network altogether.
    other = UNet(3, 1, 3, channels=(4, 8), strides=(2,))
    src = write_bundle(tmp_path / "c", network=other)
    with pytest.raises(BundleImportError, match=r"does not match the network.*Missing key"):
        import_monai_bundle(src, registry, task="liver_ct")
    assert registry.list() == []


def test_network_must_fit_the_task(tmp_path: Path, registry: ModelRegistry) -> None:
    src = write_bundle(tmp_path / "b")  # 3 output channels: liver task
    with pytest.raises(BundleImportError, match=r"out_channels is 3, but 1 label\(s\) need 2"):
        import_monai_bundle(src, registry, task="glioma_mr")
    two_channel = {**DYNUNET_DEF, "in_channels": 2}
    net = DynUNet(**{k: v for k, v in two_channel.items() if k != "_target_"})
    src = write_bundle(tmp_path / "c", network=net, network_def=two_channel)
    with pytest.raises(BundleImportError, match="in_channels is 2, but task liver_ct has 1"):
        import_monai_bundle(src, registry, task="liver_ct")


def test_versions_and_names_are_checked(tmp_path: Path, registry: ModelRegistry) -> None:
    src = write_bundle(tmp_path / "b", metadata={**METADATA, "version": "0.3"})
    with pytest.raises(BundleImportError, match=r"metadata.json field 'version'.*pass version="):
        import_monai_bundle(src, registry, task="liver_ct")
    no_version = {k: v for k, v in METADATA.items() if k != "version"}
    src = write_bundle(tmp_path / "c", metadata=no_version)
    with pytest.raises(BundleImportError, match="has no 'version'"):
        import_monai_bundle(src, registry, task="liver_ct")
    for task, version in (("../liver_ct", None), ("liver_ct", "../../1.0.0"), ("a/b", "1.0.0")):
        with pytest.raises(InvalidNameError):
            import_monai_bundle(src, registry, task=task, version=version)
    assert not registry.root.exists()


def test_yaml_configs_are_read_with_the_safe_loader(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    src = write_bundle(tmp_path / "b")
    for stem in ("metadata", "inference"):
        path = src / "configs" / f"{stem}.json"
        (src / "configs" / f"{stem}.yaml").write_text(yaml.safe_dump(json.loads(path.read_text())))
        path.unlink()
    bundle = import_monai_bundle(src, registry, task="liver_ct")
    assert set(bundle.card.source["files_sha256"]) == {
        "configs/metadata.yaml",
        "configs/inference.yaml",
        "models/model.pt",
    }
    # A Python object tag is refused by the safe loader; a repeated key is refused too.
    other = write_bundle(tmp_path / "c")
    (other / "configs" / "inference.json").unlink()
    (other / "configs" / "inference.yaml").write_text(
        "network_def: !!python/object/apply:os.system ['true']\n"
    )
    with pytest.raises(BundleImportError, match=r"inference\.yaml is not valid YAML"):
        import_monai_bundle(other, registry, task="liver_ct")
    (other / "configs" / "inference.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(BundleImportError, match="duplicate key 'a'"):
        import_monai_bundle(other, registry, task="liver_ct")


def test_plain_expressions_are_evaluated_and_code_is_refused(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    network_def = dict(DYNUNET_DEF)
    network_def["kernel_size"] = "$[5, 5, 5] if @settings#deep else [1 + 2] + @rest"
    src = write_bundle(
        tmp_path / "b",
        network_def=network_def,
        inference_extra={"settings": {"deep": False}, "rest": [3, 3]},
    )
    bundle = import_monai_bundle(src, registry, task="liver_ct")
    assert list(bundle.card.architecture["kwargs"]["kernel_size"]) == [3, 3, 3]
    for code, reason in (
        ("$__import__('os').system('true')", "Call"),
        ("$torch.float32", "Attribute"),
        ("$[0] * 10**9", "arithmetic on a list"),
        ("$2 ** 10000", "a power that large"),
        ("$(lambda: 1)()", "Call"),
    ):
        bad = dict(DYNUNET_DEF)
        bad["kernel_size"] = code
        folder = write_bundle(tmp_path / f"bad{len(code)}{reason[:3]}", network_def=bad)
        with pytest.raises(BundleImportError, match=f"is not allowed .*{reason}"):
            import_monai_bundle(folder, registry, task="liver_ct")


# -- channels, MONAI versions, the forward pass at the declared shape ----------------------


def test_card_records_the_channel_mapping_and_monai_versions(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    import monai

    src = write_bundle(tmp_path / "b")  # no channel_def: laid out like the task
    card = import_monai_bundle(src, registry, task="liver_ct").card
    assert thaw(card.preprocessing["bundle"]) == {
        "out_channels": 3,
        "activation": "softmax",
        "channel_labels": {"1": 1, "2": 2},
        "channel_def": {},
    }
    assert card.source["bundle_monai_version"] == "1.6.1"
    assert card.source["installed_monai_version"] == monai.__version__
    assert "missing_labels" not in card.source and "translations" not in card.source


def test_sigmoid_bundles_are_recognised_from_their_postprocessing(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    net = DynUNet(
        **{**{k: v for k, v in DYNUNET_DEF.items() if k != "_target_"}, "out_channels": 1}
    )
    metadata = json.loads(json.dumps(METADATA))
    metadata["network_data_format"]["outputs"]["pred"] = {"channel_def": {"0": "Whole tumor"}}
    src = write_bundle(
        tmp_path / "b",
        network=net,
        network_def={**DYNUNET_DEF, "out_channels": 1},
        metadata=metadata,
        inference_extra={
            "use_sigmoid": True,
            "postprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {
                        "_target_": "monai.transforms.Activationsd",
                        "keys": "pred",
                        "sigmoid": "@use_sigmoid",
                    },
                    {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                ],
            },
        },
    )
    bundle = import_monai_bundle(src, registry, task="glioma_mr")
    assert thaw(bundle.card.preprocessing["bundle"]["channel_labels"]) == {"0": 1}
    assert bundle.card.preprocessing["bundle"]["activation"] == "sigmoid"


SWIN_DEF_FOR_MONAI_14: dict[str, Any] = {
    "_target_": "SwinUNETR",
    "img_size": [96, 96, 96],
    "in_channels": 1,
    "out_channels": 3,
    "feature_size": 12,
    "spatial_dims": 3,
}


def test_swinunetr_img_size_is_dropped_with_a_note(tmp_path: Path, registry: ModelRegistry) -> None:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, spatial_dims=3)
    src = write_bundle(
        tmp_path / "swin",
        network=net,
        network_def=SWIN_DEF_FOR_MONAI_14,
        metadata={**METADATA, "monai_version": "1.4.0"},
        # 64^3: at 32^3 SwinUNETR's bottleneck is one voxel, which instance norm refuses
        inference_extra={"inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 64]}},
    )
    note = (
        "SwinUNETR: img_size dropped (removed in MONAI 1.5; the network takes any input "
        "divisible by 32)"
    )
    read = read_monai_bundle(src)  # built and loaded strictly without img_size
    assert "img_size" not in read.kwargs and read.translations == (note,)
    card = import_monai_bundle(src, registry, task="liver_ct").card  # runs once (einops)
    assert "img_size" not in card.architecture["kwargs"]
    assert card.source["translations"] == (note,)
    assert card.source["bundle_monai_version"] == "1.4.0"

    other = {**SWIN_DEF_FOR_MONAI_14, "upsample_kernel_size": 2}
    src = write_bundle(
        tmp_path / "swin2",
        network=net,
        network_def=other,
        metadata={**METADATA, "monai_version": "1.4.0"},
    )
    with pytest.raises(
        BundleImportError,
        match=r"SwinUNETR in the installed MONAI 1\.6\.\d+ has no argument "
        r"'upsample_kernel_size' \(the bundle was written for MONAI 1\.4\.0\)",
    ):
        import_monai_bundle(src, registry, task="liver_ct")


def test_the_network_runs_at_the_declared_shape(tmp_path: Path, registry: ModelRegistry) -> None:
    # DynUNet with strides [1, 2, 2] needs sides divisible by 4: a 30^3 roi does not run.
    src = write_bundle(
        tmp_path / "a",
        inference_extra={
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@roi"},
            "roi": [30, 30, 30],
        },
    )
    with pytest.raises(
        BundleImportError,
        match=r"MONAI bundle a: a forward pass on a \[1, 1, 30, 30, 30\] input failed: "
        r"RuntimeError: .*\(input shape from configs/inference\.json inferer\.roi_size\)",
    ):
        import_monai_bundle(src, registry, task="liver_ct")
    assert registry.list() == []
    metadata = json.loads(json.dumps(METADATA))
    metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] = [1024, 1024, 1024]
    # No window: the network gets the whole image, of the metadata's declared shape.
    src = write_bundle(
        tmp_path / "b",
        metadata=metadata,
        inference_extra={"inferer": {"_target_": "SimpleInferer"}},
    )
    with pytest.raises(BundleImportError, match=r"declared input \[1024, 1024, 1024\].*larger"):
        import_monai_bundle(src, registry, task="liver_ct")


def test_zoo_spleen_is_refused_for_liver(tmp_path: Path, registry: ModelRegistry) -> None:
    src = zoo_bundle(tmp_path, "spleen_ct_segmentation")
    with pytest.raises(
        BundleImportError, match="spleen_ct_segmentation segments background, spleen"
    ):
        import_monai_bundle(src, registry, task="liver_ct")
    # Named by the site, the spleen channel would be accepted (and run at 96^3).
    card = import_monai_bundle(src, registry, task="liver_ct", label_map={1: "Liver"}).card
    assert thaw(card.preprocessing["bundle"]["channel_labels"]) == {"1": 1}
    assert card.source["missing_labels"] == ("Liver tumour",)
    assert card.source["label_map_override"] == {"1": "Liver"}


def test_zoo_multi_organ_yaml_is_refused_with_the_reason(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    import shutil

    src = tmp_path / "multi_organ_segmentation"
    shutil.copytree(zoo_configs("multi_organ_segmentation", NONCOMMERCIAL_ZOO), src / "configs")
    (src / "models").mkdir()
    torch.save({"w": torch.zeros(1)}, src / "models" / "model.pt")
    with pytest.raises(
        BundleImportError,
        match=r"configs/inference\.yaml: network_def\._target_: network "
        r"'monai\.networks\.nets\.DiNTS' is not allowed",
    ):
        import_monai_bundle(src, registry, task="liver_ct")
