"""Demo-weight recipes: phantom profiles by name and fine-tuning from a registered bundle."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from models.cascade_spec import RefinerSettings
from models.demo_weights import (
    PROFILES,
    RECIPES,
    DemoWeightsError,
    _network_from_args,
    build_parser,
    evaluate_bundle,
    main,
    named_profile,
    named_profiles,
    phantom_cases,
    train_demo_weights,
)
from models.networks import DEFAULT_NETWORK, Architecture, NetworkConfig
from models.phantoms import CT_DEFAULT, CT_FINE, MR_BRATS
from models.precision import cpu_bf16_flags, training_precision
from models.progress import TrainingProgress, format_duration
from models.registry import ModelRegistry
from models.tasks import TaskName
from models.training import StepInfo, TrainingError

#: A small abdomen and network so that a whole train -> evaluate -> register run is quick.
TINY_CT = replace(CT_DEFAULT, name="tiny", spacing_mm=(5.0, 5.0, 5.0), matrix=(32, 64, 64))
TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)


def _train(
    root: Path, version: str, *, network: NetworkConfig = TINY_NET, **kwargs: object
) -> None:
    options: dict[str, object] = {"cases": 1, "eval_cases": 1, "steps": 1, "batch_size": 1}
    options["log"] = lambda _line: None
    options["profile"] = TINY_CT
    train_demo_weights(
        TaskName.LIVER_CT,
        root,
        version=version,
        network=network,
        **(options | kwargs),  # type: ignore[arg-type]
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


class _Crash(RuntimeError):
    """Raised from on_step to simulate an interrupted training run."""


def _weights(root: Path, version: str = "0.1.0") -> dict[str, torch.Tensor]:
    registry = ModelRegistry(root)
    return registry.load_state_dict(registry.get("liver_ct", version))


def test_an_interrupted_run_resumes_from_its_checkpoint_with_its_validation(
    tmp_path: Path,
) -> None:
    options: dict[str, Any] = {
        "steps": 4,
        "cases": 2,
        "batch_size": 2,
        "validate_every": 2,
        "validate_cases": 1,
        "thin_slab_probability": 0.5,
    }
    whole_root, resumed_root, plain_root = tmp_path / "whole", tmp_path / "resumed", tmp_path / "p"
    _train(whole_root, "0.1.0", **options)

    ckpt = tmp_path / "run" / "liver.ckpt"

    def crash_at_3(info: StepInfo) -> None:
        if info.step == 3:
            raise _Crash("simulated interruption")

    with pytest.raises(_Crash):
        _train(
            resumed_root,
            "0.1.0",
            checkpoint=ckpt,
            checkpoint_every=2,
            on_step=crash_at_3,
            **options,
        )
    assert ckpt.exists() and not ModelRegistry(resumed_root).list("liver_ct")
    lines: list[str] = []
    train_demo_weights(
        TaskName.LIVER_CT,
        resumed_root,
        eval_cases=1,
        version="0.1.0",
        network=TINY_NET,
        profile=TINY_CT,
        log=lines.append,
        checkpoint=ckpt,
        checkpoint_every=2,
        **options,
    )
    assert any("resuming from the checkpoint" in line for line in lines)
    assert any("resumed at step 2" in line for line in lines)
    # the step-2 validation ran before the interruption; its result came back from the
    # checkpoint, so the resumed run registers what the uninterrupted one did
    assert sum("validation at step" in line for line in lines) == 1  # step 4 only
    whole, resumed = _weights(whole_root), _weights(resumed_root)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    card = ModelRegistry(resumed_root).get("liver_ct", "0.1.0").card
    whole_card = ModelRegistry(whole_root).get("liver_ct", "0.1.0").card
    assert card.metrics == dict(whole_card.metrics) | {
        "train_seconds": card.metrics["train_seconds"]
    }
    best = int(card.metrics["validation_best_step"])
    assert best in (2, 4) and 0.0 <= card.metrics["validation_best_score"] <= 1.0
    assert f"Weights of step {best} of 4" in card.training_data
    assert "seed 9501" in card.training_data and "thin slabs p=0.5" in card.training_data
    assert card.source["command"].endswith(
        "--thin-slab-probability 0.5 --validate-every 2 --validate-cases 1 "
        "--network unet --filters 4,8"
    )

    # the same run without validation registers its last weights: different from the
    # best of the validation exactly when that was not the last step
    _train(plain_root, "0.1.0", **{**options, "validate_every": 0, "validate_cases": 0})
    last = _weights(plain_root)
    assert all(torch.equal(last[k], whole[k]) for k in last) == (best == 4)

    # another run (more steps) refuses the checkpoint
    with pytest.raises(TrainingError, match="another training run"):
        _train(resumed_root, "0.2.0", checkpoint=ckpt, **{**options, "steps": 5})


def test_the_card_says_which_precision_trained_it(tmp_path: Path) -> None:
    _train(tmp_path, "0.1.0")
    card = ModelRegistry(tmp_path).get("liver_ct", "0.1.0").card
    expected = training_precision(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    assert card.source["precision"] == str(expected.precision)
    assert f"precision {expected.precision} ({expected.reason})" in card.training_data


def test_cli_refuses_bad_training_options_before_drawing_phantoms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--task", "liver_ct", "--out", str(tmp_path)]
    bad_options = [
        (["--validate-every", "5"], "go together"),
        (["--validate-cases", "2"], "go together"),
        (["--thin-slab-probability", "1.5"], "--thin-slab-probability must be in [0, 1]"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--precision", "fp16"], "invalid choice"),
    ]
    if not torch.cuda.is_available() and not cpu_bf16_flags():
        bad_options.append((["--precision", "bf16"], "no native bf16"))
    for bad, says in bad_options:
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *bad])
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_progress_lines_and_log_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "train.log"
    log.parent.mkdir()
    log.write_text("earlier run\n")
    stream = io.StringIO()  # not a terminal: plain lines every `every` steps
    with TrainingProgress(prefix="[t] ", stream=stream, log_path=log, every=2) as progress:
        progress.note("resuming\nfrom step 2")  # every line gets its time
        for step in range(3, 8):  # a resumed run: steps 3..7 of 7, 2 s each
            progress(StepInfo(step, 7, 1.0 / step, 1e-3, 2.0 * (step - 2)))
    shown = stream.getvalue().splitlines()
    assert shown == [
        "[t] step 4/7 loss 0.2500 0.50 steps/s ETA 0:00:06",
        "[t] step 6/7 loss 0.1667 0.50 steps/s ETA 0:00:02",
        "[t] step 7/7 loss 0.1429 0.50 steps/s ETA 0:00:00",
    ]
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier run" and lines[1].endswith("Z resuming")  # appended
    assert lines[2].endswith("Z from step 2") and len(lines) == 3 + 5
    stamp, rest = lines[3].split(" ", 1)
    assert stamp.endswith("Z") and stamp[4] == "-" and "T" in stamp
    assert rest == "step 3/7 loss 0.333333 lr 1.000e-03 seconds 2.0"

    class _Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = _Terminal()
    with TrainingProgress(stream=terminal, refresh_s=0.0) as live:
        for step in (1, 2):
            live(StepInfo(step, 2, 0.5, 1e-3, float(step)))
    assert terminal.getvalue().count("\r") == 2 and terminal.getvalue().endswith("ETA 0:00:00\n")
    assert format_duration(3725.2) == "1:02:05" and format_duration(float("nan")) == "--:--:--"


def test_cli_names_the_checkpoint_it_cannot_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "train.ckpt"
    bad.write_text("junk\n")
    log = tmp_path / "train.log"
    argv = ["--task", "glioma_mr", "--out", str(tmp_path / "registry"), "--cases", "1"]
    argv += ["--steps", "1", "--eval-cases", "1", "--checkpoint", str(bad), "--log", str(log)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"--checkpoint {bad}: cannot read the training checkpoint train.ckpt" in err
    assert "resuming from the checkpoint" in log.read_text()
    assert not (tmp_path / "registry").exists()


def test_evaluate_on_several_seeds_prints_each_set_and_the_combined_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _train(tmp_path, "0.1.0")
    # the tiny abdomen as a named profile, so that the CLI can pick it (fast phantoms)
    monkeypatch.setitem(PROFILES, TaskName.LIVER_CT, (CT_DEFAULT, CT_FINE, TINY_CT))
    out = tmp_path / "figures.json"
    common = ["--task", "liver_ct", "--out", str(tmp_path), "--profile", "tiny"]
    args = [*common, "--evaluate-only", "--eval-cases", "2", "--seed", "0", "--seeds", "1"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "set 0, phantom seed 8001" in printed and "set 1, phantom seed 9001" in printed
    assert "combined: 4 phantoms of 2 sets (seeds 0, 1)" in printed
    assert printed.count("95 % interval") == 3  # two sets and the combined figures
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["bundle"] == "liver_ct/0.1.0"
    assert [s["seed"] for s in figures["sets"]] == [0, 1]
    assert [s["metrics"]["cases"] for s in figures["sets"]] == [2.0, 2.0]
    combined = figures["combined"]
    assert combined["cases"] == 4.0
    low, high = combined["dice_liver_ci95_low"], combined["dice_liver_ci95_high"]
    assert low <= combined["dice_liver"] <= high
    assert "hd95_inf_cases_liver_tumour" in combined
    assert figures["small_lesion"] == "equivalent-sphere diameter < 10 mm"
    # the same command gives the same figures (phantoms and bootstrap are seeded)
    again = tmp_path / "again.json"
    assert main([*args, "--json", str(again)]) == 0
    assert json.loads(again.read_text(encoding="utf-8")) == figures
    capsys.readouterr()
    # training takes one seed; a repeated evaluation seed is refused
    for bad, says in (
        (["--seed", "0", "--seed", "1"], "training takes one seed"),
        (["--evaluate-only", "--seeds", "0,0"], "each seed once"),
        (["--evaluate-only", "--seeds", "0,x"], "comma-separated integers"),
        (["--evaluate-only", "--eval-cases", "0"], "--eval-cases must be >= 1"),
        (["--json", str(out)], "--json is for --evaluate-only"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *bad])
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err


#: a refiner small enough for a test: 3 levels (DynUNet's least), stride-1 first level
TINY_REFINER_NET = NetworkConfig(name=Architecture.DYNUNET, filters=(4, 8, 8))
TINY_REFINER = RefinerSettings((4.0, 4.0, 4.0), (32, 32, 32), 8.0)


def test_a_two_stage_model_trains_its_refiner_on_a_registered_locator(tmp_path: Path) -> None:
    _train(tmp_path, "0.1.0")
    locator = ModelRegistry(tmp_path).get("liver_ct", "0.1.0")
    lines: list[str] = []
    options: dict[str, Any] = {"refine_from": "0.1.0", "refiner": TINY_REFINER}
    options |= {"validate_every": 1, "validate_cases": 1, "steps": 2}
    _train(tmp_path, "0.3.0", network=TINY_REFINER_NET, log=lines.append, **options)
    registry = ModelRegistry(tmp_path)
    bundle = registry.get("liver_ct", "0.3.0")
    card = bundle.card
    assert card.refiner == TINY_REFINER and card.parent_version == "0.1.0"
    assert card.architecture["network"] == "Cascade"
    assert card.architecture["kwargs"]["locator"] == locator.card.architecture
    assert card.architecture["kwargs"]["refiner"]["network"] == "DynUNet"
    # stage 1 is the registered locator, bit for bit; the refiner was trained
    weights, stage1 = registry.load_state_dict(bundle), registry.load_state_dict(locator)
    assert all(torch.equal(weights[f"locator.{k}"], v) for k, v in stage1.items())
    assert any(k.startswith("refiner.") for k in weights)
    assert "Two-stage model: stage 1 is liver_ct/0.1.0" in card.training_data
    assert " --refine-from 0.1.0 --refiner-spacing 4,4,4 --refiner-patch 32,32,32 " in (
        card.source["command"] + " "
    )
    assert card.source["command"].endswith(
        "--margin-mm 8 --validate-every 1 --validate-cases 1 --network dynunet --filters 4,8,8"
    )
    assert sum("validation at step" in line for line in lines) == 2
    assert any("cut to their truth box" in line for line in lines)
    # evaluate runs both stages; the card's metrics came from the same path
    result = evaluate_bundle(
        "liver_ct", tmp_path, version="0.3.0", eval_cases=1, profile=TINY_CT, log=lines.append
    )
    assert result.combined.cases == 1
    # fine-tuning a refiner starts from a two-stage version, and only from one
    _train(tmp_path, "0.3.1", network=TINY_REFINER_NET, init_from="0.3.0", **options)
    assert registry.get("liver_ct", "0.3.1").card.parent_version == "0.3.0"
    with pytest.raises(DemoWeightsError, match="must be a two-stage version"):
        _train(tmp_path, "0.3.2", network=TINY_REFINER_NET, init_from="0.1.0", **options)
    with pytest.raises(DemoWeightsError, match="stage 1 must be a one-stage model"):
        _train(tmp_path, "0.3.3", network=TINY_REFINER_NET, **{**options, "refine_from": "0.3.0"})


def test_cli_refiner_options_need_refine_from_and_valid_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--task", "liver_ct", "--out", str(tmp_path)]
    for bad, says in (
        (["--margin-mm", "5"], "they need --refine-from"),
        (["--refine-from", "0.1.0", "--refiner-patch", "64,64,40"], "multiples of 16"),
        (["--refine-from", "0.1.0", "--refiner-spacing", "1,x,1"], "three comma-separated"),
        (["--refine-from", "0.1.0", "--margin-mm", "-1"], "margin_mm"),
        (["--task", "glioma_mr", "--refine-from", "0.1.0"], "no two-stage recipe"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *bad])
        assert exit_info.value.code == 2
        assert says in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_training_evaluates_on_the_sets_and_profile_it_is_told(tmp_path: Path) -> None:
    _train(tmp_path, "0.1.0", eval_seeds=[0, 2], eval_profile=TINY_CT)
    card = ModelRegistry(tmp_path).get("liver_ct", "0.1.0").card
    assert card.metrics["cases"] == 2.0  # one phantom per set, both sets together
    assert "2 fresh phantoms of profile 'tiny' (2 set(s) of 1, phantom seed(s) 8001, 10001" in (
        card.training_data
    )
    assert card.source["command"].endswith(
        "--profile tiny --eval-profile tiny --eval-seeds 0,2 --network unet --filters 4,8"
    )
    with pytest.raises(DemoWeightsError, match="would be the training phantoms"):
        _train(tmp_path, "0.1.1", seed=1, eval_seeds=[0])


def test_a_profile_mix_and_the_blob_loss_are_trained_and_recorded(tmp_path: Path) -> None:
    other = replace(TINY_CT, name="tiny_b", noise_sigma=30.0)
    _train(tmp_path, "0.1.0", cases=2, profile=(TINY_CT, other), blob_loss_weight=0.5)
    card = ModelRegistry(tmp_path).get("liver_ct", "0.1.0").card
    assert "profile 'tiny'" in card.training_data and "profile 'tiny_b'" in card.training_data
    assert "cases alternating between the profiles" in card.training_data
    assert "blob loss weight 0.5" in card.training_data
    assert " --profile tiny,tiny_b " in card.source["command"]
    assert " --blob-loss-weight 0.5 " in card.source["command"]
    # the mix alternates: case 0 from the first profile, case 1 from the second
    cases = phantom_cases("liver_ct", seed=5, cases=2, profile=(TINY_CT, other))
    alone = phantom_cases("liver_ct", seed=5, cases=2, profile=other)
    assert not (cases[0][0].image == alone[0][0].image).all()
    assert (cases[1][0].image == alone[1][0].image).all()
    assert named_profiles("liver_ct", "ct_fine,ct_varied") == (
        named_profile("liver_ct", "ct_fine"),
        named_profile("liver_ct", "ct_varied"),
    )
    for bad in ("ct_fine,ct_fine", "ct_fine,", "ct_fine,ct_coarse"):
        with pytest.raises(DemoWeightsError, match="--profile"):
            named_profiles("liver_ct", bad)


def test_cli_refuses_a_negative_blob_loss_weight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "liver_ct", "--out", str(tmp_path), "--blob-loss-weight", "-1"])
    assert exit_info.value.code == 2
    assert "--blob-loss-weight" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
