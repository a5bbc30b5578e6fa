"""The federated benchmark's report from per-run records: seeds aggregated as mean ± std
(Dice, lesion recall per size bin, false positives per case, HD95 with its infinite
cases), the six targets decided with their intervals, and the markdown, JSON and PNG
files written (the rounds plot only when rounds were scored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.federation.simulation.config import SimConfig, load_config
from appliance.federation.simulation.report import summarise, write_report

SITES = ("site_a", "site_b", "site_c", "site_d")


def _site(dice: float, small: float | None = None) -> dict[str, Any]:
    return {
        "cases": 2,
        "dice": {"Liver": dice + 0.1, "Liver tumour": dice - 0.1},
        "dice_mean": dice,
        "small_lesion_dice": small,
        "small_lesion_cases": 0 if small is None else 2,
        "hd95_mm": {"Liver": 5.0, "Liver tumour": None},
        "hd95_missed": {"Liver": 0, "Liver tumour": 2},
        "lesions": {"small": 0 if small is None else 4, "medium": 2, "large": 1},
        "detected": {"small": 0 if small is None else round(4 * small), "medium": 1, "large": 1},
        "false_positive_components": 3,
    }


def _record(
    method: str, seed: int, dice: dict[str, float], small: float | None = None
) -> dict[str, Any]:
    return {
        "task": "liver_ct",
        "seed": seed,
        "method": method,
        "sites": {s: _site(dice[s], small if s == "site_c" else None) for s in SITES},
        "history": [{"round": r, "sites": {s: dice[s] * r / 3 for s in SITES}} for r in (1, 2, 3)],
        "bytes_sent": dict.fromkeys(SITES, 1_000_000),
        "bytes_received": dict.fromkeys(SITES, 1_000_000),
        "wall_s": 10.0 + seed,
        "score_s": 1.0,
        "extra": {},
    }


def _flat(value: float, **site: float) -> dict[str, float]:
    out = dict.fromkeys(SITES, value)
    out.update(site)
    return out


@pytest.fixture
def config() -> SimConfig:
    return load_config("quick")


def _records(fedgs_small: float, fedbn_b: float, cwt_d: float) -> list[dict[str, Any]]:
    out = []
    for seed in (0, 1, 2):
        jitter = 0.01 * seed
        out += [
            _record("local", seed, _flat(0.60 + jitter, site_d=0.40)),
            _record("centralised", seed, _flat(0.80 + jitter)),
            _record("fedavg", seed, _flat(0.795 + jitter, site_b=0.70), small=0.30),
            _record("fedprox", seed, _flat(0.795 + jitter), small=0.30),
            _record("fedbn", seed, _flat(0.78 + jitter, site_b=fedbn_b), small=0.30),
            _record("cwt", seed, _flat(0.70 + jitter, site_d=cwt_d), small=0.30),
            _record("swt", seed, _flat(0.65 + jitter), small=0.30),
            _record("gossip", seed, _flat(0.75 + jitter), small=0.30),
            _record("fedgs", seed, _flat(0.77 + jitter), small=fedgs_small),
        ]
    return out


def test_seeds_are_aggregated_as_mean_and_std(config: SimConfig) -> None:
    tasks = summarise(config, _records(0.4, 0.75, 0.5))
    local = tasks["liver_ct"]["methods"]["local"]
    mean, std, n = local["mean"]["dice_mean"]
    # sites 0.60+j x3 and site_d 0.40 -> 0.55 + 0.75 j for j = 0, 0.01, 0.02
    assert mean == pytest.approx(0.5575) and n == 3
    assert std == pytest.approx(0.0075 * (2 / 3) ** 0.5, rel=1e-6)
    assert local["sites"]["site_d"]["dice_mean"][0] == pytest.approx(0.40)
    assert local["sites"]["site_a"]["hd95_mm"]["Liver tumour"] is None
    assert local["sites"]["site_a"]["hd95_missed"]["Liver tumour"] == 6
    assert local["curve"][-1][0] == config.steps_per_site
    fedgs = tasks["liver_ct"]["methods"]["fedgs"]
    assert fedgs["mean"]["small_lesion_dice"][0] == pytest.approx(0.4)
    assert local["mean"]["small_lesion_dice"] is None


def test_recall_and_false_positives_are_pooled_over_sites(config: SimConfig) -> None:
    tasks = summarise(config, _records(0.5, 0.75, 0.5))
    fedgs = tasks["liver_ct"]["methods"]["fedgs"]
    # only site_c has small lesions: 4 of which fedgs finds 2
    assert fedgs["mean"]["recall"]["small"][0] == pytest.approx(0.5)
    assert fedgs["mean"]["recall"]["medium"][0] == pytest.approx(0.5)
    assert fedgs["mean"]["recall"]["large"][0] == pytest.approx(1.0)
    assert fedgs["sites"]["site_c"]["lesions"]["small"] == 12  # 4 per seed
    assert fedgs["mean"]["false_positives_per_case"][0] == pytest.approx(1.5)
    assert fedgs["mean"]["hd95_missed"]["Liver tumour"] == 2 * 4 * 3
    local = tasks["liver_ct"]["methods"]["local"]
    assert local["mean"]["recall"]["small"] is None


def test_the_targets_are_decisions_with_intervals(config: SimConfig) -> None:
    tasks = summarise(config, _records(fedgs_small=0.4, fedbn_b=0.75, cwt_d=0.5))
    targets = tasks["liver_ct"]["targets"]
    assert len(targets) == 6
    assert all(t["verdict"] in ("met", "missed", "undecided") for t in targets)
    first = targets[0]
    assert first["difference"]["n"] == 12 and first["rule"] == "within 1 point"
    # fedavg/fedprox trail centralised by exactly 0.5 points on every unit but site_b
    assert "best federated method by mean Dice: fedprox" in first["note"]
    assert first["verdict"] == "met"
    # quick has no pretrained run: target 6 cannot be decided
    assert targets[5]["verdict"] == "undecided"


def test_report_files(config: SimConfig, tmp_path: Path) -> None:
    written = write_report(config, _records(0.4, 0.75, 0.5), tmp_path, command="cmd --x")
    md = written["markdown"].read_text()
    assert "`cmd --x`" in md and "| fedbn |" in md and "### Targets" in md
    assert "| site_d | 2 | 2 |" in md
    assert "0.557 ± 0.006" in md  # local's mean over sites and seeds
    assert "### Dice per label and site" in md and "recall < 10 mm" in md
    assert "| (1) best federated method within 1 Dice point of centralised | **met** |" in md
    assert "↳ fedavg > local" in md  # the parts of a combined target
    data = json.loads(written["json"].read_text())
    assert data["config"]["name"] == "quick" and len(data["records"]) == 27
    assert data["tasks"]["liver_ct"]["targets"][0]["verdict"] == "met"
    pngs = [p for p in written.values() if p.suffix == ".png"]
    assert len(pngs) == 3
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({png.name})" in md


def test_report_without_round_scores_has_no_rounds_plot(config: SimConfig, tmp_path: Path) -> None:
    records = _records(0.4, 0.75, 0.5)
    for r in records:
        r["history"] = []
    written = write_report(config, records, tmp_path, command="cmd", wall_s=125.0)
    assert sorted(p.name for p in written.values() if p.suffix == ".png") == [
        "federation_quick_dice.png",
        "federation_quick_recall.png",
    ]
    md = written["markdown"].read_text()
    assert "in 2.1 min wall time" in md
    assert json.loads(written["json"].read_text())["wall_s"] == 125.0
