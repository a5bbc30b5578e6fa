"""The federated benchmark's report from per-run records: seeds aggregated as mean ± std,
the four targets decided from the numbers (met, missed, or not decidable), and the
markdown, JSON and PNG files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from appliance.federation.simulation.config import SimConfig, load_config
from appliance.federation.simulation.report import check_targets, summarise, write_report

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


def test_targets_met(config: SimConfig) -> None:
    tasks = summarise(config, _records(fedgs_small=0.4, fedbn_b=0.75, cwt_d=0.5))
    verdicts = [t["met"] for t in tasks["liver_ct"]["targets"]]
    assert verdicts == [True, True, True, True]
    assert "gap +0.5 points" in tasks["liver_ct"]["targets"][0]["detail"]


def test_targets_missed_say_by_how_much(config: SimConfig) -> None:
    records = _records(fedgs_small=0.2, fedbn_b=0.65, cwt_d=0.35)
    records = [r for r in records if r["method"] not in ("fedavg", "fedprox")] + [
        _record("fedavg", s, _flat(0.75, site_b=0.70), small=0.30) for s in (0, 1, 2)
    ]
    targets = check_targets(config, "liver_ct", summarise(config, records)["liver_ct"]["methods"])
    assert [t.met for t in targets] == [False, False, False, False]
    assert "best fedgs 0.780" in targets[0].detail and "gap +3.0 points" in targets[0].detail
    assert "fedbn 0.650 vs fedavg 0.700" in targets[1].detail
    assert "fedgs 0.200 vs fedavg 0.300" in targets[2].detail
    assert "not above local: cwt" in targets[3].detail


def test_targets_not_decidable_without_the_runs(config: SimConfig) -> None:
    records = [r for r in _records(0.4, 0.75, 0.5) if r["method"] in ("local", "fedbn")]
    targets = check_targets(config, "liver_ct", summarise(config, records)["liver_ct"]["methods"])
    assert [t.met for t in targets[:3]] == [None, None, None]
    assert targets[3].met is True


def test_report_files(config: SimConfig, tmp_path: Path) -> None:
    written = write_report(config, _records(0.4, 0.75, 0.5), tmp_path, command="cmd --x")
    md = written["markdown"].read_text()
    assert "`cmd --x`" in md and "| fedbn |" in md and "### Targets" in md
    assert "| site_d | 2 | 2 |" in md
    assert "0.557 ± 0.006" in md  # local's mean over sites and seeds
    data = json.loads(written["json"].read_text())
    assert data["config"]["name"] == "quick" and len(data["records"]) == 27
    assert data["tasks"]["liver_ct"]["targets"][0]["met"] is True
    pngs = [p for p in written.values() if p.suffix == ".png"]
    assert len(pngs) == 2
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({png.name})" in md
