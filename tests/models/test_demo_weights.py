"""Demo-weight recipes: phantom profiles by name and fine-tuning from a registered bundle."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.demo_weights import (
    PROFILES,
    RECIPES,
    DemoWeightsError,
    _network_from_args,
    build_parser,
    main,
    named_profile,
    train_demo_weights,
)
from models.networks import DEFAULT_NETWORK, Architecture, NetworkConfig
from models.phantoms import CT_DEFAULT, CT_FINE, MR_BRATS
from models.registry import ModelRegistry
from models.tasks import TaskName

#: A small abdomen and network so that a whole train -> evaluate -> register run is quick.
TINY_CT = replace(CT_DEFAULT, name="tiny", spacing_mm=(5.0, 5.0, 5.0), matrix=(32, 64, 64))
TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)


def _train(root: Path, version: str, network: NetworkConfig = TINY_NET, **kwargs: object) -> None:
    train_demo_weights(
        TaskName.LIVER_CT,
        root,
        cases=1,
        eval_cases=1,
        steps=1,
        batch_size=1,
        version=version,
        network=network,
        profile=TINY_CT,
        log=lambda _line: None,
        **kwargs,  # type: ignore[arg-type]
    )


def test_profiles_by_name() -> None:
    assert named_profile("liver_ct", None) is CT_DEFAULT
    assert named_profile("liver_ct", "ct_fine") is CT_FINE
    assert CT_FINE.spacing_mm == (2.0, 1.5, 1.5)
    # the fine abdomen covers the same field of view as the default one
    for fine, default, n, d in zip(
        CT_FINE.spacing_mm, CT_DEFAULT.spacing_mm, CT_FINE.matrix, CT_DEFAULT.matrix, strict=True
    ):
        assert abs(fine * n - default * d) <= fine
    with pytest.raises(DemoWeightsError, match="ct_default, ct_fine, ct_varied, ct_realistic"):
        named_profile("liver_ct", "ct_coarse")
    assert [p.name for p in PROFILES[TaskName.GLIOMA_MR]] == ["mr_default", "mr_varied", "mr_thick"]


def test_cli_refuses_an_unknown_profile_and_a_bad_lr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "glioma_mr", "--out", str(tmp_path), "--profile", "ct_fine"])
    assert exit_info.value.code == 2
    assert "mr_default" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "liver_ct", "--out", str(tmp_path), "--lr", "-1"])
    assert exit_info.value.code == 2
    assert "--lr" in capsys.readouterr().err
    for bad, says in (
        (["--network", "resnet"], "'dynunet', 'segresnet', 'unet'"),
        (["--filters", "16,x"], "filters must be integers"),
        (["--network", "segresnet", "--filters", "16,24"], "must double"),
        (["--filters", "16,32,64,128,256,512"], "2 to 5 resolution levels"),
        (["--network", "dynunet", "--filters", "16,32"], "no less than 3"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["--task", "liver_ct", "--out", str(tmp_path), *bad])
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing generated or registered


def test_another_architecture_is_trained_and_recorded(tmp_path: Path) -> None:
    _train(tmp_path, "0.1.0")
    _train(tmp_path, "0.2.0", network=NetworkConfig(name=Architecture.DYNUNET, filters=(4, 8, 16)))
    registry = ModelRegistry(tmp_path)
    default, other = registry.get("liver_ct", "0.1.0"), registry.get("liver_ct", "0.2.0")
    assert default is not None and other is not None
    assert default.card.architecture["network"] == "UNet"
    assert default.card.source["command"].endswith("--profile tiny --network unet --filters 4,8")
    assert other.card.architecture["network"] == "DynUNet"
    assert other.card.source["command"].endswith("--network dynunet --filters 4,8,16")
    assert type(registry.load_network(other)).__name__ == "DynUNet"


def test_fine_tuning_starts_from_the_parent_and_says_so(tmp_path: Path) -> None:
    _train(tmp_path, "0.1.0")
    registry = ModelRegistry(tmp_path)
    parent = registry.get("liver_ct", "0.1.0")
    assert parent is not None and parent.card.parent_version is None

    # A vanishing learning rate: the child's weights are the parent's, not a new draw.
    _train(tmp_path, "0.2.0", init_from="0.1.0", lr=1e-12, seed=5)
    child = registry.get("liver_ct", "0.2.0")
    assert child is not None
    assert child.card.parent_version == "0.1.0"
    assert f"Fine-tuned from liver_ct/0.1.0 (weights sha256 {parent.card.weights_sha256})" in (
        child.card.training_data
    )
    assert "--init-from 0.1.0 --lr 1e-12" in child.card.source["command"]
    before, after = registry.load_state_dict(parent), registry.load_state_dict(child)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.allclose(value.float(), after[key].float(), atol=1e-6), key

    # Without --init-from, the same seed-5 run starts from a random draw.
    _train(tmp_path, "0.3.0", seed=5)
    fresh = registry.load_state_dict(registry.get("liver_ct", "0.3.0"))
    assert any(
        not torch.allclose(value.float(), fresh[key].float(), atol=1e-3)
        for key, value in before.items()
        if value.is_floating_point()
    )


def test_fine_tuning_needs_a_parent_of_the_same_architecture(tmp_path: Path) -> None:
    with pytest.raises(DemoWeightsError, match=r"--init-from 9\.9\.9"):
        _train(tmp_path, "0.2.0", init_from="9.9.9")
    _train(tmp_path, "0.1.0")
    with pytest.raises(DemoWeightsError, match="architecture differs"):
        _train(
            tmp_path,
            "0.2.0",
            network=NetworkConfig(filters=(4, 8, 16), num_res_units=0),
            init_from="0.1.0",
        )
    assert [b.version for b in ModelRegistry(tmp_path).list("liver_ct")] == ["0.1.0"]


def test_glioma_brats_run_registers_a_four_channel_sigmoid_bundle(tmp_path: Path) -> None:
    tiny = replace(MR_BRATS, name="tiny_brats", spacing_mm=(5.0, 5.0, 5.0), matrix=(32, 46, 40))
    lines: list[str] = []
    bundle = train_demo_weights(
        TaskName.GLIOMA_BRATS,
        tmp_path,
        cases=1,
        eval_cases=1,
        steps=1,
        batch_size=1,
        network=TINY_NET,
        profile=tiny,
        log=lines.append,
    )
    card = bundle.card
    kwargs = card.architecture["kwargs"]
    assert (kwargs["in_channels"], kwargs["out_channels"]) == (4, 3)
    assert card.preprocessing["output_activation"] == "sigmoid"
    assert list(card.preprocessing["channels"]) == ["t1c", "t1", "t2", "flair"]
    for region in ("enhancing_tumour", "tumour_core", "whole_tumour"):
        assert 0.0 <= card.metrics[f"dice_{region}"] <= 1.0
    assert "mr_brats" in card.training_data
    assert any("Whole tumour" in line for line in lines)  # the evaluation table


def test_glioma_brats_defaults_to_a_small_network() -> None:
    network = RECIPES[TaskName.GLIOMA_BRATS].network
    assert network.filters == (8, 16, 32, 64)
    args = build_parser().parse_args(["--task", "glioma_brats", "--out", "x"])
    assert _network_from_args(args) == network
    args = build_parser().parse_args(["--task", "liver_ct", "--out", "x"])
    assert _network_from_args(args) == DEFAULT_NETWORK
    assert [p.name for p in PROFILES[TaskName.GLIOMA_BRATS]] == ["mr_brats", "mr_brats_varied"]
