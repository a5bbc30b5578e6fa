"""The federated benchmark's configs and the simulated sites' settings: the shipped
configs parse, bad values name the file and key, a virtual SuperNode becomes the site its
partition names, with the held-out split and seed the benchmark scores on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.errors import FederationError
from appliance.federation.params import from_record, to_record
from appliance.federation.settings import RunSettings, run_config_map, simulated_node_config
from appliance.federation.sim_sites import parse_sim_sites
from appliance.federation.simulation.config import (
    REPO_CONFIG_DIR,
    Method,
    load_config,
    parse_config,
    resolve_config_path,
)
from appliance.federation.site_data import load_site_cases, phantom_site_cases
from appliance.federation.site_settings import SiteSettings
from models.tasks import Modality, get_task

REPO = Path(__file__).resolve().parents[4]


def _minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "seeds": [0],
        "tasks": ["glioma_mr"],
        "methods": ["local", "fedavg"],
        "rounds": 2,
        "local_steps": 3,
        "task": {
            "glioma_mr": {
                "patch_size": [16, 16, 16],
                "target_spacing_mm": [6.0, 6.0, 6.0],
                "most_shifted_site": "site_b",
            }
        },
        "site": [
            {"preset": "site_a", "train": 2, "held_out": 1},
            {"preset": "site_b", "train": 1, "held_out": 1},
        ],
    }
    data.update(changes)
    return data


def test_shipped_configs_parse_and_compare_every_method() -> None:
    for name in ("quick", "full"):
        config = load_config(name)
        assert config.name == name
        assert set(config.methods) == set(Method) - {Method.PRETRAINED}
        assert len(config.sites) == 4
        assert config.smallest_site == "site_d"
        assert len(config.seeds) >= 3
        # every site has held-out cases and one is much smaller than the others
        sizes = sorted(s.train for s in config.sites)
        assert sizes[0] * 3 <= sizes[1]
    assert load_config("quick").device == "cpu"
    assert load_config("full").device == "cuda"
    assert set(load_config("full").tasks) == {"liver_ct", "glioma_mr"}


def test_config_by_path_and_unknown_name(tmp_path: Path) -> None:
    assert resolve_config_path("quick") == REPO_CONFIG_DIR / "quick.toml"
    with pytest.raises(FederationError, match=r"--config: .*shipped: full, quick"):
        resolve_config_path("nonsense")
    path = tmp_path / "mine.toml"
    path.write_text((REPO_CONFIG_DIR / "quick.toml").read_text().replace('"quick"', '"mine"'))
    assert load_config(str(path)).name == "mine"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"methods": ["fedavg", "fedsgd"]},
            r"methods: must be some of pretrained, local, centralised",
        ),
        ({"seeds": [0, 0]}, r"seeds: a seed is listed twice"),
        ({"seeds": [-1]}, r"seeds: must be a non-empty list of integers >= 0"),
        ({"tasks": ["spleen"]}, r"tasks: must be some of liver_ct, glioma_mr"),
        ({"rounds": 0}, r"rounds: must be >= 1"),
        ({"lr": "fast"}, r"lr: must be float"),
        ({"device": "tpu"}, r"device: must be cpu or cuda"),
        ({"network": {"filters": [8]}}, r"network.filters: must be >= 2 positive integers"),
        ({"network": {"norm": "layer"}}, r"network.norm: must be batch or instance"),
        ({"site": [{"preset": "site_a", "train": 2, "held_out": 1}]}, r"site: .*at least 2"),
        (
            {"site": [{"preset": "site_q", "train": 2, "held_out": 1}] * 2},
            r"site: unknown site 'site_q'",
        ),
        (
            {"site": [{"preset": "site_a", "train": 0, "held_out": 1}] * 2},
            r"site: .*>= 1 training",
        ),
        ({"task": {}}, r"task.glioma_mr: is required"),
        # nested values are named by their whole dotted key
        ({"network": {"res_units": "x"}}, r"network\.res_units: must be int"),
        ({"site": [{"train": 2, "held_out": 1}] * 2}, r"site\[0\]\.preset: is required"),
        (
            {
                "task": {
                    "glioma_mr": {
                        "patch_size": [16, 16],
                        "target_spacing_mm": [6.0, 6.0, 6.0],
                        "most_shifted_site": "site_b",
                    }
                }
            },
            r"task\.glioma_mr\.patch_size: must be 3 positive ints",
        ),
    ],
)
def test_bad_values_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(FederationError, match=message) as info:
        parse_config(_minimal(**changes), source="bench.toml")
    assert str(info.value).startswith("bench.toml: ")


def test_most_shifted_site_must_be_a_site() -> None:
    data = _minimal()
    data["task"]["glioma_mr"]["most_shifted_site"] = "site_c"
    with pytest.raises(FederationError, match=r"task.glioma_mr.most_shifted_site: 'site_c'"):
        parse_config(data)


def test_n_sites_adds_generated_hospitals_without_listing_them() -> None:
    from models.site_distribution import shift_score, site_hospital

    data = _minimal(n_sites=32, generated_sites={"seed": 4, "held_out": 1, "max_train": 3})
    del data["task"]["glioma_mr"]["most_shifted_site"]  # optional with generated sites
    config = parse_config(data)
    assert len(config.sites) == 34
    generated = config.sites[2:]
    assert [s.preset for s in generated] == [f"gen4_{i:03d}" for i in range(1, 33)]
    for s in generated:
        cases = site_hospital(s.preset).cases
        assert s.held_out == 1 and s.train == min(3, cases - 1) >= 1
    assert {s.train for s in generated} >= {1, 3}  # the long tail: some sites have 2 cases
    shifted = config.task_setup["glioma_mr"].most_shifted_site
    scores = {s.preset: shift_score(site_hospital(s.preset), ct=False) for s in config.sites}
    assert scores[shifted] == max(scores.values())
    # only generated sites: no [[site]] needed
    only = _minimal(n_sites=2)
    del only["site"], only["task"]["glioma_mr"]["most_shifted_site"]
    assert [s.preset for s in parse_config(only).sites] == ["gen0_001", "gen0_002"]
    sampled = parse_config(_minimal(round_fraction=0.5))
    assert sampled.round_fraction == 0.5 and sampled.to_dict()["round_fraction"] == 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_sites": 1000}, r"n_sites: must be 0 to 999"),
        ({"generated_sites": {"seed": 1}}, r"generated_sites: applies only with n_sites > 0"),
        ({"n_sites": 4, "generated_sites": {"max_train": 0}}, r"generated_sites.max_train"),
        ({"n_sites": 4, "generated_sites": {"seed": -1}}, r"generated_sites.seed: must be 0"),
        ({"round_sites": -2}, r"round_sites: must be >= 0"),
        ({"round_fraction": 0}, r"round_fraction: must be in \(0, 1\]"),
        ({"round_sites": 2, "methods": ["gossip"]}, r"round_sites: gossip pairs every site"),
    ],
)
def test_generated_sites_errors_name_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(FederationError, match=message):
        parse_config(_minimal(**changes), source="bench.toml")


def test_sim_sites_map_virtual_supernodes_to_sites(tmp_path: Path) -> None:
    run = RunSettings(
        task="glioma_mr", seed=3, sim_sites="site_a:2:1,site_d:1:2", sim_state_root=str(tmp_path)
    )
    # the run config carries the sim keys through Flower (they must be in the app's defaults)
    assert RunSettings.from_config(run_config_map(run)) == run
    node = simulated_node_config(run, 1)
    site = SiteSettings.from_config({**node, "partition-id": 1, "num-partitions": 2})
    assert site.site == "site_d" and site.phantom_preset == "site_d"
    assert site.phantom_cases == 3 and site.phantom_held_out == 2 and site.phantom_seed == 3
    assert site.state_dir == tmp_path / "site_d"
    with pytest.raises(FederationError, match="virtual SuperNode 2 has no site"):
        simulated_node_config(run, 2)
    assert simulated_node_config(RunSettings(), 0) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("site_a:2", "entries are preset:train:held_out"),
        ("site_a:x:1", "entries are preset:train:held_out"),
        ("site_a:2:0", "needs >= 1 training and >= 1 held-out"),
        ("site_a:2:1,site_a:3:1", "listed twice"),
        ("nowhere:2:1", "unknown site 'nowhere'"),
        ("gen0_000:2:1", "not a generated site name"),
    ],
)
def test_sim_sites_errors(text: str, message: str) -> None:
    with pytest.raises(FederationError, match=f"sim-sites: .*{message}"):
        parse_sim_sites(text)
    with pytest.raises(FederationError, match="sim-sites"):
        RunSettings.from_config({"sim-sites": text})


def test_phantom_site_holds_out_the_last_cases_and_seed_changes_patients() -> None:
    spec = get_task("glioma_mr")
    base = {"phantom-preset": "site_a", "phantom-matrix": "24,32,32", "phantom-spacing": "6,6,6"}
    site = SiteSettings.from_config({**base, "phantom-cases": 4, "phantom-held-out": 2})
    cases = load_site_cases(site, spec)
    assert len(cases.train) == 2 and len(cases.held_out) == 2
    everything = phantom_site_cases(site, Modality.MR)
    assert np.array_equal(cases.held_out[1].image, everything[3].case.image)
    assert everything[3].lesion_map.shape == everything[3].case.labels.shape
    other = SiteSettings.from_config({**base, "phantom-cases": 4, "phantom-seed": 1})
    assert not np.array_equal(
        phantom_site_cases(other, Modality.MR)[0].case.image, everything[0].case.image
    )
    with pytest.raises(FederationError, match="phantom-held-out"):
        SiteSettings.from_config({**base, "phantom-cases": 2, "phantom-held-out": 2})


def test_array_records_keep_zero_dimensional_entries() -> None:
    # BatchNorm's num_batches_tracked is 0-d; FedBN merges it back by shape
    state = {"bn.num_batches_tracked": np.array(7, dtype=np.int64), "w": np.ones((2, 3))}
    back = from_record(to_record(state))
    assert back["bn.num_batches_tracked"].shape == ()
    assert int(back["bn.num_batches_tracked"]) == 7
    assert back["w"].shape == (2, 3)


def test_image_ships_the_benchmark_configs() -> None:
    text = (REPO / "Dockerfile").read_text()
    copy = re.search(r"^COPY benchmarks/federation (\S+)$", text, re.M)
    env = re.search(r"^ENV APPLIANCE_BENCHMARK_DIR=(\S+)$", text, re.M)
    assert copy is not None and env is not None and copy.group(1) == env.group(1)
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "!benchmarks/federation" in ignore


def test_phantom_cache_gives_the_same_cases_from_disk(tmp_path: Path) -> None:
    base = {
        "phantom-preset": "site_b",
        "phantom-cases": 2,
        "phantom-matrix": "20,28,28",
        "phantom-spacing": "6,6,6",
        "phantom-seed": 5,
    }
    fresh = phantom_site_cases(SiteSettings.from_config(base), Modality.MR)
    cached_site = SiteSettings.from_config({**base, "phantom-cache": str(tmp_path)})
    first = phantom_site_cases(cached_site, Modality.MR)
    assert len(list(tmp_path.glob("site_b-*.npz"))) == 2
    # a new process would read the files: clear the in-process cache, then compare
    from appliance.federation import site_data

    site_data._phantoms.cache_clear()
    again = phantom_site_cases(cached_site, Modality.MR)
    for a, b, c in zip(fresh, first, again, strict=True):
        for x in (b, c):
            assert np.array_equal(a.case.image, x.case.image)
            assert np.array_equal(a.case.labels, x.case.labels)
            assert np.array_equal(a.case.affine, x.case.affine)
            assert np.array_equal(a.lesion_map, x.lesion_map)
    # a torn file is made again, not trusted
    victim = sorted(tmp_path.glob("site_b-*.npz"))[0]
    victim.write_bytes(b"torn")
    site_data._phantoms.cache_clear()
    healed = phantom_site_cases(cached_site, Modality.MR)
    assert np.array_equal(healed[0].case.image, fresh[0].case.image)


def test_gpu_config_refuses_a_machine_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from appliance.federation.simulation.run import simulate

    # the probe says what a CPU-only machine says (CI's, and this one's)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FederationError, match="device: config 'full' needs a CUDA GPU"):
        simulate(load_config("full"), tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_coarse_phantom_grid_keeps_the_field_of_view() -> None:
    from models.site_distribution import site_hospital

    spec = get_task("glioma_mr")
    base = {"phantom-preset": "gen0_005", "phantom-cases": 2}
    coarse = SiteSettings.from_config({**base, "phantom-grid-mm": 8})
    (case, _) = phantom_site_cases(coarse, Modality.MR)
    profile = site_hospital("gen0_005").mr
    extent = np.asarray(profile.matrix) * np.asarray(profile.spacing_mm)
    assert case.case.image.shape == tuple(max(8, round(float(e) / 8)) for e in extent)
    assert np.allclose(np.linalg.norm(case.case.affine[:3, :3], axis=0), 8.0)
    assert (case.case.labels > 0).any()
    assert len(load_site_cases(coarse, spec).train) == 1
    with pytest.raises(FederationError, match="phantom-grid-mm"):
        SiteSettings.from_config({**base, "phantom-grid-mm": 80})
    run = RunSettings(task="glioma_mr", sim_sites="gen0_005:1:1", sim_phantom_mm=8.0)
    assert simulated_node_config(run, 0)["phantom-grid-mm"] == 8.0
    assert parse_config(_minimal(phantom_grid_mm=6)).phantom_grid_mm == 6.0
    with pytest.raises(FederationError, match="phantom_grid_mm: must be 0 to 50"):
        parse_config(_minimal(phantom_grid_mm=-1))
