"""``appliance models ...`` and ``appliance jobs ...`` through typer's CliRunner."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import load_config
from appliance.flow.ingest import to_new_instance
from appliance.flow.worker import Worker
from appliance.store import Store
from dicom_bridge.instance import describe_spooled_file
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.appliance.tiny_models import make_tiny_bundle

CONFIG = """\
[storage]
root = "{root}"
fsync = false

[models]
shipped = ""
device = "cpu"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 1
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(CONFIG.format(root=tmp_path / "data"), encoding="utf-8")
    return path


def run(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config_file)])
    return result.exit_code, result.stdout, result.stderr


def test_import_activate_rollback(tmp_path: Path, config_file: Path) -> None:
    first = make_tiny_bundle(tmp_path / "src", version="1.0.0")
    second = make_tiny_bundle(tmp_path / "src", version="1.1.0", seed=1)

    code, out, err = run(config_file, "models", "import", str(first.path), "--task", "liver_ct")
    assert code == 0, err
    assert "liver_ct/1.0.0" in out and "candidate" in out
    code, out, err = run(config_file, "models", "activate", "liver_ct", "1.0.0")
    assert code == 1 and "--force" in err
    code, out, err = run(config_file, "models", "activate", "liver_ct", "1.0.0", "--force")
    assert code == 0 and "1.0.0 is active" in out, err

    code, out, err = run(config_file, "models", "import", str(second.path), "--task", "liver_ct")
    assert code == 0, err
    code, out, err = run(config_file, "models", "activate", "liver_ct", "1.1.0", "--force")
    assert code == 0 and "was 1.0.0" in out, err
    code, out, err = run(config_file, "models", "list", "--json")
    listed = {m["version"]: m["state"] for m in json.loads(out)}
    assert listed == {"1.0.0": "retired", "1.1.0": "active"}

    code, out, err = run(config_file, "models", "rollback", "liver_ct")
    assert code == 0 and "rolled back to 1.0.0" in out, err
    code, out, err = run(config_file, "models", "show", "liver_ct", "1.0.0")
    assert code == 0, err
    assert "liver_ct/1.0.0: active" in out and first.card.weights_sha256 in out
    code, out, err = run(config_file, "models", "list")
    assert "1.1.0" in out and "retired" in out

    # the same version twice, a wrong task, a folder that is no bundle
    code, _, err = run(config_file, "models", "import", str(first.path), "--task", "liver_ct")
    assert code == 1 and "already" in err
    code, _, err = run(config_file, "models", "import", str(first.path), "--task", "glioma_mr")
    assert code == 1 and "liver_ct" in err
    code, _, err = run(config_file, "models", "import", str(tmp_path), "--task", "liver_ct")
    assert code == 1 and "neither" in err


def test_jobs_list_and_retry(tmp_path: Path, config_file: Path) -> None:
    config = load_config(config_file)
    store = Store(config.storage.database)
    try:
        for path in write_series(tmp_path / "ct", SeriesGeometry(slices=12, rows=32, columns=32)):
            store.record_instance(to_new_instance(describe_spooled_file(path)))
        store.complete_quiet_series(-1.0)
        assert Worker(store, threading.Event(), config).run_once()
    finally:
        store.close()

    code, out, err = run(config_file, "jobs", "list", "--json")
    assert code == 0, err
    (job,) = json.loads(out)
    assert job["state"] == "failed" and job["reason"] == "no_active_model"
    code, out, _ = run(config_file, "jobs", "list")
    assert "no_active_model" in out
    code, out, err = run(config_file, "status")
    assert code == 0 and "no_active_model" in out, err

    bundle = make_tiny_bundle(tmp_path / "src")
    assert run(config_file, "models", "import", str(bundle.path), "--task", "liver_ct")[0] == 0
    assert run(config_file, "models", "activate", "liver_ct", "0.0.1-test", "--force")[0] == 0
    code, out, err = run(config_file, "jobs", "retry", str(job["id"]))
    assert code == 0 and "queued" in out, err
    code, _, err = run(config_file, "jobs", "retry", str(job["id"]))
    assert code == 1 and "only failed jobs" in err
    code, _, err = run(config_file, "jobs", "retry", "999")
    assert code == 1 and "no job 999" in err

    store = Store(config.storage.database)
    try:
        assert Worker(store, threading.Event(), config).run_once()
    finally:
        store.close()
    code, out, err = run(config_file, "status", "--json")
    report = json.loads(out)
    (entry,) = report["jobs"]
    assert entry["state"] == "done" and entry["attempts"] == 2
    assert entry["model"]["version"] == "0.0.1-test"
    assert {"volume_s", "inference_s", "seg_s", "sr_s", "enqueue_s"} <= set(entry["timings"])
    code, out, _ = run(config_file, "status")
    assert "active models: liver_ct 0.0.1-test" in out and "inference" in out


def test_import_a_monai_bundle_folder(tmp_path: Path, config_file: Path) -> None:
    from tests.models.test_bundle_import import write_bundle

    src = write_bundle(tmp_path / "monai_bundle")
    code, out, err = run(
        config_file, "models", "import", str(src), "--task", "liver_ct", "--version", "2.0.0"
    )
    assert code == 0, err
    assert "liver_ct/2.0.0" in out and "candidate" in out
    code, out, _ = run(config_file, "models", "list", "--json")
    (model,) = json.loads(out)
    assert model["origin"] == "monai_bundle" and model["state"] == "candidate"
    code, out, err = run(config_file, "models", "show", "liver_ct", "2.0.0")
    assert code == 0 and '"network": "DynUNet"' in out, err


def _rewrite(bundle_dir: Path, *, weights: bytes | None = None, **card_changes: object) -> None:
    """Edit a registry bundle on disk and make its card vouch for the result (its sha256)."""
    import hashlib

    card_path = bundle_dir / "model_card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    weights_path = bundle_dir / card["weights_file"]
    if weights is not None:
        weights_path.write_bytes(weights)
    card.update(card_changes)
    card["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    card_path.write_text(json.dumps(card), encoding="utf-8")


def _nan_weights(bundle_dir: Path) -> bytes:
    import io

    import torch

    state = torch.load(bundle_dir / "weights.pt", weights_only=True)
    buffer = io.BytesIO()
    torch.save({k: torch.full_like(v, float("nan")) for k, v in state.items()}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "nan"])
def test_import_refuses_a_bundle_whose_card_vouches_for_unloadable_weights(
    tmp_path: Path, config_file: Path, damage: str
) -> None:
    bundle = make_tiny_bundle(tmp_path / "src", version="1.0.0")
    bad = b"not a torch file\n" * 64 if damage == "garbage" else _nan_weights(bundle.path)
    _rewrite(bundle.path, weights=bad)

    code, out, err = run(config_file, "models", "import", str(bundle.path), "--task", "liver_ct")
    assert code == 1, out
    assert "1.0.0" in err and "liver_ct" in err
    assert ("cannot load" if damage == "garbage" else "not finite") in err
    code, out, _ = run(config_file, "models", "list", "--json")
    assert json.loads(out) == []
    registry_root = load_config(config_file).models_root
    assert not registry_root.exists() or not any(registry_root.rglob("model_card.json"))


def test_activate_force_refuses_a_bundle_made_unloadable_after_import(
    tmp_path: Path, config_file: Path
) -> None:
    first = make_tiny_bundle(tmp_path / "src", version="1.0.0")
    second = make_tiny_bundle(tmp_path / "src", version="1.1.0", seed=1)
    for bundle in (first, second):
        code, _, err = run(config_file, "models", "import", str(bundle.path), "--task", "liver_ct")
        assert code == 0, err
    code, out, err = run(config_file, "models", "activate", "liver_ct", "1.0.0", "--force")
    assert code == 0, err
    listed_models = json.loads(run(config_file, "models", "list", "--json")[1])
    (installed,) = (Path(m["path"]) for m in listed_models if m["version"] == "1.1.0")

    # garbage weights, card hash fixed: the card no longer matches the registration
    original = (installed / "weights.pt").read_bytes()
    _rewrite(installed, weights=b"garbage" * 100)
    code, _, err = run(config_file, "models", "activate", "liver_ct", "1.1.0", "--force")
    assert code == 1 and "refusing to activate" in err and "liver_ct/1.1.0" in err

    # weights as registered, but the card's network no longer fits them
    _rewrite(installed, weights=original)
    arch = json.loads((installed / "model_card.json").read_text())["architecture"]
    arch["kwargs"]["channels"] = [8, 16]
    _rewrite(installed, architecture=arch)
    code, _, err = run(config_file, "models", "activate", "liver_ct", "1.1.0", "--force")
    assert code == 1 and "refusing to activate" in err and "do not fit" in err

    code, out, _ = run(config_file, "models", "list", "--json")
    listed = {m["version"]: m["state"] for m in json.loads(out)}
    assert listed == {"1.0.0": "active", "1.1.0": "candidate"}


# -- real model-zoo bundles (configs from ../shared/data, weights built from network_def) --


def test_import_zoo_spleen_for_liver_is_refused_and_label_maps_are_checked(
    tmp_path: Path, config_file: Path
) -> None:
    from tests.models.zoo import zoo_bundle

    src = zoo_bundle(tmp_path, "spleen_ct_segmentation")
    code, out, err = run(config_file, "models", "import", str(src), "--task", "liver_ct")
    assert code == 1, out
    assert (
        "spleen_ct_segmentation segments background, spleen; task liver_ct needs Liver, "
        "Liver tumour: no output channel for Liver (give --label-map CHANNEL=Liver if one of "
        "the bundle's channels is liver)"
    ) in " ".join(err.split())
    bad = {
        "5=liver": "channel 5 is not an output channel of spleen_ct_segmentation (0..1)",
        "0=liver": "channel 0 is spleen_ct_segmentation's background",
        "1=kidney": "task liver_ct has no label 'kidney'",
        "1=9": "task liver_ct has no label '9'",
    }
    for label_map, message in bad.items():
        code, _, err = run(
            config_file,
            "models",
            "import",
            str(src),
            "--task",
            "liver_ct",
            "--label-map",
            label_map,
        )
        assert code == 1 and message in " ".join(err.split()), (label_map, err)
    code, _, err = run(
        config_file, "models", "import", str(src), "--task", "liver_ct", "--label-map", "one=1"
    )
    assert code == 2 and "expected CHANNEL=LABEL" in err
    code, out, _ = run(config_file, "models", "list", "--json")
    assert code == 0 and "liver_ct" not in out  # nothing refused stayed registered
    # The site says the spleen channel is to be used as the liver: imported, with a warning.
    code, out, err = run(
        config_file, "models", "import", str(src), "--task", "liver_ct", "--label-map", "1=Liver"
    )
    assert code == 0, err
    assert "imported liver_ct/" in out
    assert "warning" in err and "Liver tumour" in err


def test_import_zoo_wholebody_for_liver(tmp_path: Path, config_file: Path) -> None:
    from models.model_card import ModelCard
    from tests.models.zoo import zoo_bundle, zoo_metadata

    src = zoo_bundle(tmp_path, "wholeBody_ct_segmentation")
    code, out, err = run(config_file, "models", "import", str(src), "--task", "liver_ct")
    assert code == 0, err
    version = zoo_metadata("wholeBody_ct_segmentation")["version"]
    assert f"imported liver_ct/{version}" in out
    assert "warning: liver_ct/" in err and "no output channel for Liver tumour" in err
    card_file = tmp_path / "data" / "models" / "liver_ct" / version / "model_card.json"
    card = ModelCard.from_json(card_file.read_text(encoding="utf-8"))
    bundle = card.preprocessing["bundle"]
    assert dict(bundle["channel_labels"]) == {"5": 1}
    assert bundle["activation"] == "softmax" and bundle["out_channels"] == 105
    assert bundle["channel_def"]["5"] == "liver"
    assert card.source["missing_labels"] == ("Liver tumour",)
    assert card.source["bundle_monai_version"] == "1.4.0"
    assert [label.name for label in card.labels] == ["Liver", "Liver tumour"]
