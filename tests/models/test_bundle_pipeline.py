"""A bundle's own pre-processing, inferer and post-processing (models.bundle_pipeline):
read from the real model-zoo configs, refused where it cannot be run faithfully, and run
the way MONAI runs it."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Activations,
    AsDiscrete,
    Compose,
    Invertd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from torch import nn

from models.bundle_config import read_config
from models.bundle_pipeline import (
    PIPELINE_FORMAT,
    Action,
    BundlePipeline,
    Op,
    Stage,
    Step,
    check_channel_labels,
    describe,
    parse_pipeline,
    working_spacing,
)
from models.bundle_run import preprocess_image, run_pipeline, working_grid_voxels
from models.errors import BundleImportError, InputTooLargeError, SpecError
from models.geometry import to_metatensor, voxel_spacing
from tests.models.test_geometry import make_affine, oblique_directions
from tests.models.zoo import zoo_configs
from tests.peers import SHARED_DATA

ZOO = SHARED_DATA / "monai_model_zoo"
NONCOMMERCIAL_ZOO = SHARED_DATA / "noncommercial" / "monai_model_zoo"
SHAPE = (20, 24, 28)  # (slice, row, column)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def zoo_config(folder: Path) -> tuple[dict[str, Any], str]:
    zoo_configs(folder.name, folder.parent)  # skips naming the path, or fails on CI
    data, relative, _ = read_config(folder, "inference")
    return data, relative


def spleen() -> tuple[dict[str, Any], str]:
    return zoo_config(ZOO / "spleen_ct_segmentation")


def brats() -> tuple[dict[str, Any], str]:
    return zoo_config(ZOO / "brats_mri_segmentation")


def ops(steps: tuple[Step, ...]) -> list[tuple[Op, Action]]:
    return [(s.op, s.action) for s in steps]


# -- the real configs ----------------------------------------------------------------------


def test_spleen_pipeline_is_read_with_its_parameters() -> None:
    pipeline = parse_pipeline(*spleen())
    assert pipeline.file == "configs/inference.json"
    assert ops(pipeline.preprocessing) == [
        (Op.LOAD_IMAGE, Action.NO_OP),
        (Op.ENSURE_CHANNEL_FIRST, Action.NO_OP),
        (Op.ORIENTATION, Action.RUN),
        (Op.SPACING, Action.RUN),
        (Op.SCALE_INTENSITY_RANGE, Action.RUN),
        (Op.ENSURE_TYPE, Action.NO_OP),
    ]
    orientation, spacing, scale = pipeline.preprocessing[2:5]
    assert orientation.transform == "Orientationd"
    assert dict(orientation.params) == {"axcodes": "RAS"}
    assert spacing.params["pixdim"] == (1.5, 1.5, 2.0)
    assert spacing.params["mode"] == "bilinear"
    assert dict(scale.params) == {
        "a_min": -57.0,
        "a_max": 164.0,
        "b_min": 0.0,
        "b_max": 1.0,
        "clip": True,
    }
    assert scale.ignored_args == ("keys",)
    assert pipeline.inferer.op is Op.SLIDING_WINDOW
    assert pipeline.inferer.params["roi_size"] == (96, 96, 96)
    assert pipeline.inferer.params["sw_batch_size"] == 4
    assert pipeline.inferer.params["overlap"] == 0.5
    assert pipeline.inferer.params["mode"] == "constant"
    assert ops(pipeline.postprocessing) == [
        (Op.ACTIVATIONS, Action.RUN),
        (Op.INVERT, Action.RUN),
        (Op.AS_DISCRETE, Action.RUN),
        (Op.SAVE_IMAGE, Action.IGNORED),
    ]
    assert pipeline.postprocessing[1].params["nearest_interp"] is False
    assert pipeline.activation == "softmax"
    assert not pipeline.multi_label
    assert working_spacing(pipeline) == (1.5, 1.5, 2.0)
    assert pipeline.postprocessing[3].where == "postprocessing.transforms[3]"


def test_whole_body_pixdim_expression_and_order_of_inversion() -> None:
    pipeline = parse_pipeline(*zoo_config(ZOO / "wholeBody_ct_segmentation"))
    assert working_spacing(pipeline) == (1.5, 1.5, 1.5)  # highres: true
    normalize, scale = pipeline.preprocessing[5:7]
    assert normalize.op is Op.NORMALIZE_INTENSITY
    assert dict(normalize.params) == {"nonzero": True, "channel_wise": False}
    assert scale.op is Op.SCALE_INTENSITY
    assert dict(scale.params) == {"minv": -1.0, "maxv": 1.0, "channel_wise": False}
    inferer = pipeline.inferer
    assert inferer.params["mode"] == "gaussian"
    assert inferer.params["padding_mode"] == "replicate"
    assert inferer.params["overlap"] == 0.25
    assert inferer.params["sw_batch_size"] == 1
    assert "device" in inferer.ignored_args  # "$torch.device(...)" is never evaluated
    # argmax first, then the label map is inverted with nearest neighbour
    assert [s.op for s in pipeline.postprocessing[:3]] == [
        Op.ACTIVATIONS,
        Op.AS_DISCRETE,
        Op.INVERT,
    ]
    assert pipeline.postprocessing[2].params["nearest_interp"] is True


def test_brats_pipeline_no_resampling_sigmoid_threshold_and_ignored_label_encoding() -> None:
    pipeline = parse_pipeline(*brats())
    assert ops(pipeline.preprocessing) == [
        (Op.LOAD_IMAGE, Action.NO_OP),
        (Op.NORMALIZE_INTENSITY, Action.RUN),
    ]
    assert dict(pipeline.preprocessing[1].params) == {"nonzero": True, "channel_wise": True}
    assert "image_only" in pipeline.preprocessing[0].ignored_args
    assert working_spacing(pipeline) is None
    assert pipeline.inferer.params["roi_size"] == (240, 240, 160)
    assert pipeline.activation == "sigmoid"
    assert pipeline.multi_label
    assert pipeline.discretisation.params["threshold"] == 0.5
    lam = pipeline.postprocessing[3]
    assert (lam.op, lam.action, lam.transform) == (Op.LABEL_ENCODING, Action.IGNORED, "Lambdad")
    assert lam.params["func"].startswith("$lambda x: torch.where")
    assert "output label encoding" in lam.note
    text = "\n".join(describe(pipeline))
    assert "postprocessing.transforms[3]: Lambdad - ignored: output label encoding" in text
    assert "NormalizeIntensityd(nonzero=True, channel_wise=True) - run" in text


def test_multi_organ_yaml_pipeline() -> None:
    config, relative = zoo_config(NONCOMMERCIAL_ZOO / "multi_organ_segmentation")
    assert relative == "configs/inference.yaml"
    pipeline = parse_pipeline(config, relative)
    assert working_spacing(pipeline) == (1.0, 1.0, 1.0)
    scale = pipeline.running(Op.SCALE_INTENSITY_RANGE)[0]
    assert (scale.params["a_min"], scale.params["a_max"]) == (-500.0, 500.0)
    assert pipeline.inferer.params["overlap"] == 0.625
    assert pipeline.activation == "softmax"
    assert pipeline.discretisation.params["argmax"] is True


@pytest.mark.parametrize(
    "folder",
    [
        ZOO / "spleen_ct_segmentation",
        ZOO / "wholeBody_ct_segmentation",
        ZOO / "brats_mri_segmentation",
        NONCOMMERCIAL_ZOO / "multi_organ_segmentation",
    ],
    ids=lambda p: p.name,
)
def test_json_round_trip_and_frozen(folder: Path) -> None:
    pipeline = parse_pipeline(*zoo_config(folder))
    data = json.loads(json.dumps(pipeline.to_dict()))
    assert data["format"] == PIPELINE_FORMAT
    assert set(data) == {"format", "file", "preprocessing", "inferer", "postprocessing"}
    assert BundlePipeline.from_dict(data) == pipeline
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.inferer = pipeline.inferer  # type: ignore[misc]
    assert isinstance(pipeline.inferer.params, MappingProxyType)
    with pytest.raises(TypeError):
        pipeline.inferer.params["overlap"] = 0.9  # type: ignore[index]
    assert isinstance(pipeline.preprocessing, tuple)


def test_from_dict_validates() -> None:
    data = parse_pipeline(*spleen()).to_dict()
    bad = copy.deepcopy(data)
    bad["preprocessing"][3]["params"]["pixdim"] = [1.5, -1.0, 2.0]
    with pytest.raises(BundleImportError, match=r"pixdim|positive"):
        BundlePipeline.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["preprocessing"][3]["params"]["diagonal"] = True
    with pytest.raises(BundleImportError, match="parameters"):
        BundlePipeline.from_dict(bad)
    bad = copy.deepcopy(data)
    del bad["postprocessing"][2]
    with pytest.raises(BundleImportError, match="no AsDiscrete"):
        BundlePipeline.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["inferer"]["op"] = "Spacing"
    with pytest.raises(BundleImportError):
        BundlePipeline.from_dict(bad)
    bad = copy.deepcopy(data)
    bad["format"] = "bundle-pipeline/99"
    with pytest.raises(BundleImportError, match="format"):
        BundlePipeline.from_dict(bad)


# -- refusals ------------------------------------------------------------------------------


def _pre(config: dict[str, Any]) -> list[Any]:
    transforms: list[Any] = config["preprocessing"]["transforms"]
    return transforms


def _post(config: dict[str, Any]) -> list[Any]:
    transforms: list[Any] = config["postprocessing"]["transforms"]
    return transforms


def _refused(config: dict[str, Any], *fragments: str) -> None:
    with pytest.raises(BundleImportError) as caught:
        parse_pipeline(config, "configs/inference.json")
    message = str(caught.value)
    assert "configs/inference.json" in message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_transform_is_refused_with_its_position() -> None:
    config, _ = spleen()
    _pre(config).insert(3, {"_target_": "RandFlipd", "keys": "image", "prob": 0.5})
    _refused(
        config,
        "transform RandFlipd at preprocessing.transforms[3] cannot be run faithfully by the "
        "appliance",
    )


def test_lambda_in_the_preprocessing_is_refused() -> None:
    config, _ = spleen()
    _pre(config).insert(2, {"_target_": "Lambdad", "keys": "image", "func": "$lambda x: x"})
    _refused(config, "Lambdad at preprocessing.transforms[2]")


def test_lambda_in_the_postprocessing_before_as_discrete_is_refused() -> None:
    config, _ = brats()
    _post(config).insert(1, {"_target_": "Lambdad", "keys": "pred", "func": "$lambda x: -x"})
    _refused(config, "Lambdad at postprocessing.transforms[1]", "after AsDiscrete")


def test_lambda_not_feeding_save_image_is_refused() -> None:
    config, _ = brats()
    _post(config).insert(5, {"_target_": "Invertd", "keys": "pred", "nearest_interp": True})
    _refused(config, "Lambdad at postprocessing.transforms[3]", "feeding SaveImage")


def test_crop_foreground_with_a_lambda_select_fn_is_refused() -> None:
    config, _ = spleen()
    _pre(config).insert(
        4,
        {
            "_target_": "CropForegroundd",
            "keys": "image",
            "source_key": "image",
            "select_fn": "$lambda x: x > 1",
        },
    )
    _refused(config, "CropForegroundd at preprocessing.transforms[4]", "select_fn")


def test_crop_foreground_with_the_default_select_fn_is_run() -> None:
    config, _ = spleen()
    _pre(config).insert(
        5,
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 2},
    )
    step = parse_pipeline(config, "configs/inference.json").preprocessing[5]
    assert (step.op, step.action) == (Op.CROP_FOREGROUND, Action.RUN)
    assert step.params["margin"] == (2, 2, 2)
    assert step.params["allow_smaller"] is False  # MONAI 1.6's default, made explicit


def test_as_discrete_without_argmax_or_threshold_is_refused() -> None:
    config, _ = spleen()
    _post(config)[2] = {"_target_": "AsDiscreted", "keys": "pred", "to_onehot": 2}
    _refused(config, "AsDiscreted at postprocessing.transforms[2]", "argmax")


@pytest.mark.parametrize(
    ("index", "change", "fragments"),
    [
        (3, {"diagonal": True}, ("Spacingd at preprocessing.transforms[3]", "diagonal")),
        (3, {"pixdim": "$[float(x) for x in range(3)]"}, ("preprocessing.transforms[3]",)),
        (3, {"antialias": True}, ("unsupported arguments antialias",)),
        (2, {"axcodes": "RRS"}, ("Orientationd at preprocessing.transforms[2]", "axcodes")),
        (4, {"a_max": -57}, ("a_min equals a_max",)),
    ],
)
def test_unsupported_arguments_are_refused(
    index: int, change: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    config, _ = spleen()
    _pre(config)[index].update(change)
    _refused(config, *fragments)


def test_activations_with_other_code_is_refused() -> None:
    config, _ = spleen()
    _post(config)[0]["other"] = "$lambda x: x * 2"
    _refused(config, "postprocessing.transforms[0]")


def test_missing_inferer_and_postprocessing_are_refused() -> None:
    config, _ = spleen()
    del config["inferer"]
    _refused(config, "no 'inferer'")
    config, _ = spleen()
    del config["postprocessing"]
    _refused(config, "no 'postprocessing'")
    config, _ = spleen()
    config["inferer"] = {"_target_": "SliceInferer", "roi_size": [96, 96]}
    _refused(config, "SliceInferer at inferer")


def test_references_to_transforms_and_the_simple_inferer() -> None:
    config, _ = spleen()
    config["scale"] = _pre(config)[4]
    _pre(config)[4] = "@scale"
    config["inferer"] = {"_target_": "monai.inferers.SimpleInferer"}
    pipeline = parse_pipeline(config, "configs/inference.json")
    assert pipeline.preprocessing[4].params["a_min"] == -57.0
    assert pipeline.inferer.op is Op.SIMPLE


def test_channel_labels_are_checked_against_the_output() -> None:
    softmax = parse_pipeline(*spleen())
    sigmoid = parse_pipeline(*brats())
    assert check_channel_labels(softmax, {1: 1}) == 1
    assert check_channel_labels(softmax, {1: 1, 2: 1}) == 1  # argmax: channels may merge
    assert check_channel_labels(sigmoid, {0: 1, 1: 2, 2: 3}) == 3
    with pytest.raises(SpecError, match="task label 2 has no network channel"):
        check_channel_labels(sigmoid, {0: 1, 2: 3})
    with pytest.raises(SpecError, match="needs one"):
        check_channel_labels(sigmoid, {0: 1, 1: 1})
    with pytest.raises(SpecError):
        check_channel_labels(softmax, {})


# -- running it ----------------------------------------------------------------------------


class SpleenNet(nn.Module):
    """Two channels: foreground where the scaled intensity is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), (x - 0.5) * 10.0], dim=1)


class RecordingNet(SpleenNet):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return super().forward(x)


def ct_image() -> tuple[np.ndarray, np.ndarray]:
    """A smooth HU volume (-200..300) with a bright ball, on an oblique grid."""
    s, r, c = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    image = -200.0 + 12.0 * c + 6.0 * r
    ball = (s - 10) ** 2 + (r - 12) ** 2 + (c - 9) ** 2 < 30
    image[ball] = 250.0
    affine = make_affine(
        directions=oblique_directions(20, 10),
        pixel_spacing=(1.2, 1.1),
        slice_spacing=2.5,
        reverse_slices=True,
    )
    return image.astype(np.float32), affine


def test_spleen_result_matches_monai_transforms_built_by_hand() -> None:
    pipeline = parse_pipeline(*spleen())
    image, affine = ct_image()
    net = SpleenNet()
    result = run_pipeline(net, pipeline, image, affine, device="cpu", channel_labels={1: 1})

    by_hand = Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=RAS_LABELS),
            Spacingd(keys="image", pixdim=(1.5, 1.5, 2.0), mode="bilinear"),
            ScaleIntensityRanged(
                keys="image", a_min=-57, a_max=164, b_min=0.0, b_max=1.0, clip=True
            ),
        ]
    )
    data = by_hand({"image": to_metatensor(image[None], affine)})
    with torch.no_grad():
        logits = sliding_window_inference(
            data["image"].as_tensor()[None], (96, 96, 96), 4, net, overlap=0.5
        )
    probabilities = Activations(softmax=True)(logits[0])
    inverter = Invertd(keys="pred", transform=by_hand, orig_keys="image", nearest_interp=False)
    on_input = inverter({"image": data["image"], "pred": MetaTensor(probabilities)})["pred"]
    expected = AsDiscrete(argmax=True)(on_input)[0].numpy().astype(np.uint8)

    assert result.mask.dtype == np.uint8
    assert result.mask.shape == SHAPE
    assert 0 < int(expected.sum()) < expected.size
    np.testing.assert_array_equal(result.mask, expected)
    assert {"preprocess", "inference", "postprocess", "total"} <= set(result.timings_s)


def test_the_network_sees_the_bundles_grid_and_intensities() -> None:
    pipeline = parse_pipeline(*spleen())
    image, affine = ct_image()
    data, _ = preprocess_image(pipeline, image, affine)
    preprocessed = data["image"]
    assert isinstance(preprocessed, MetaTensor)
    np.testing.assert_allclose(voxel_spacing(preprocessed.affine), (1.5, 1.5, 2.0), atol=1e-6)

    net = RecordingNet()
    run_pipeline(net, pipeline, image, affine, device="cpu", channel_labels={1: 1})
    assert net.inputs and all(tuple(x.shape) == (1, 1, 96, 96, 96) for x in net.inputs)
    seen = torch.cat([x.reshape(-1) for x in net.inputs])
    assert float(seen.min()) >= 0.0 and float(seen.max()) <= 1.0
    assert float(seen.max()) == 1.0  # the ball (250 HU) is clipped at a_max

    simple = dataclasses.replace(
        pipeline, inferer=Step(Stage.INFERER, None, "SimpleInferer", Op.SIMPLE, Action.RUN)
    )
    net = RecordingNet()
    run_pipeline(net, simple, image, affine, device="cpu", channel_labels={1: 1})
    (received,) = net.inputs
    torch.testing.assert_close(received[0], preprocessed.as_tensor())


def test_keep_largest_connected_component_is_refused_with_the_reason() -> None:
    config, _ = spleen()
    _post(config).insert(3, {"_target_": "KeepLargestConnectedComponentd", "keys": "pred"})
    _refused(config, "KeepLargestConnectedComponentd at postprocessing.transforms[3]", "scikit")


class BratsNet(nn.Module):
    """Three sigmoid channels: channel k is on where input channel k is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :3] - 0.5) * 20.0


def test_brats_sigmoid_pipeline_gives_one_mask_per_label() -> None:
    pipeline = parse_pipeline(*brats())
    rng = np.random.default_rng(7)
    shape = (12, 14, 16)
    image = rng.normal(100.0, 30.0, size=(4, *shape)).astype(np.float32)
    image[:, :2] = 0.0  # background outside the head
    affine = np.diag([1.0, 1.0, 1.0, 1.0])

    data, _ = preprocess_image(pipeline, image, affine)
    assert tuple(data["image"].shape) == (4, 16, 14, 12)  # as LoadImage reads a series

    result = run_pipeline(
        BratsNet(), pipeline, image, affine, device="cpu", channel_labels={0: 1, 1: 2, 2: 3}
    )
    assert result.mask.dtype == bool
    assert result.mask.shape == (3, *shape)
    for channel in range(3):
        values = image[channel]
        nonzero = values != 0
        z = np.zeros_like(values)
        z[nonzero] = (values[nonzero] - values[nonzero].mean()) / values[nonzero].std()
        np.testing.assert_array_equal(result.mask[channel], z > 0.5)
    assert result.mask.any() and not result.mask[:, :2].any()

    reordered = run_pipeline(
        BratsNet(), pipeline, image, affine, device="cpu", channel_labels={2: 1, 0: 2, 1: 3}
    )
    np.testing.assert_array_equal(reordered.mask[0], result.mask[2])


def test_working_grid_is_bounded_before_anything_is_allocated() -> None:
    pipeline = parse_pipeline(*spleen())
    image, affine = ct_image()
    assert working_grid_voxels(pipeline, SHAPE, affine) >= 96**3
    bomb = np.diag([400.0, 400.0, 400.0, 1.0])  # few voxels, a huge body
    with pytest.raises(InputTooLargeError, match=r"1\.5 x 1\.5 x 2 mm"):
        run_pipeline(SpleenNet(), pipeline, image, bomb, channel_labels={1: 1})
    with pytest.raises(InputTooLargeError, match="its own grid"):
        run_pipeline(
            BratsNet(),
            parse_pipeline(*brats()),
            np.zeros((4, 8, 8, 8), dtype=np.float32),
            affine,
            channel_labels={0: 1, 1: 2, 2: 3},
            max_working_voxels=240 * 240 * 160 - 1,
        )
