"""Federation on Flower's deployment engine with real processes: one SuperLink and two
SuperNodes on loopback, TLS with certificates made here and SuperNode authentication,
a tiny network on tiny phantom cases, two rounds each of fedbn, cwt, gossip and fedgs
(several runs on one SuperLink, one after the other). fedavg over four SuperNodes and swt,
with sites that fail on the way: test_federation_faults; the coordinator and site CLIs:
test_federation_cli and test_federation_store_site.

Two sites, not three: every message starts a ClientApp process that imports torch and
MONAI (~8 CPU-seconds), so each site costs about a third of a run on CI's two cores."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.flower_sites import phantom_node_config, tiny_run, write_pki
from tests.peers import free_port, require_program

# no deadlines or timed stops: runs in make test's parallel pass
pytestmark = [pytest.mark.interop, pytest.mark.slow, pytest.mark.unhurried]

SITES = ("site_a", "site_b")
ORDER = ("site_b", "site_a")  # deliberately not alphabetical


@dataclass
class Federation:
    root: Path
    flwr_home: Path
    app_dir: Path
    output: Path
    processes: list[Any]

    def site_dir(self, site: str) -> Path:
        return self.root / site

    def run(self, strategy: str, **overrides: Any) -> dict[str, Any]:
        from appliance.federation import runner

        settings = tiny_run(strategy, self.output, **({"min_sites": len(SITES)} | overrides))
        run_id = runner.submit_run(self.flwr_home, self.app_dir, settings)
        progress = runner.wait_run(
            self.output, run_id, timeout=900, flwr_home=self.flwr_home, watch=self.processes
        )
        assert progress["status"] == "finished", json.dumps(progress)[:3000]
        return progress


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    require_program("flower-superlink")
    require_program("flower-supernode")
    require_program("flwr")
    from appliance.federation import runner

    root = tmp_path_factory.mktemp("federation")
    pki = write_pki(root / "pki", SITES)
    server_tls = runner.Tls(ca=pki["ca"], cert=pki["cert"], key=pki["key"])
    client_tls = runner.Tls(ca=pki["ca"])
    port = free_port()
    coordinator = root / "coordinator"
    link = runner.start_superlink(
        coordinator, host="127.0.0.1", port=port, tls=server_tls, supernode_auth=True
    )
    nodes: list[runner.Process] = []
    try:
        runner.wait_listening("127.0.0.1", port, link)
        flwr_home = coordinator / "flwr"
        runner.write_cli_config(flwr_home, f"127.0.0.1:{port}", client_tls)
        for site in SITES:
            runner.register_supernode(flwr_home, pki[f"{site}.pub"])
        for site in SITES:
            node_config = phantom_node_config(site, root / site)
            nodes.append(
                runner.start_supernode(
                    root / site,
                    superlink=f"127.0.0.1:{port}",
                    runtime_port=free_port(),
                    node_config=node_config,
                    tls=client_tls,
                    auth_private_key=pki[f"{site}.key"],
                )
            )
        app_dir = runner.write_app(coordinator / "app")
        yield Federation(root, flwr_home, app_dir, coordinator / "out", [link, *nodes])
    finally:
        for node in nodes:
            node.stop()
        link.stop()


def _weights(directory: Path) -> dict[str, np.ndarray]:
    from appliance.federation.outputs import read_result

    return read_result(directory).load_weights()


def _initial() -> dict[str, np.ndarray]:
    import torch

    from appliance.federation.params import model_state
    from appliance.federation.settings import RunSettings
    from models.networks import build_network

    run = RunSettings(
        task="glioma_mr",
        seed=5,
        net_filters=(4, 8),
        net_res_units=0,
        patch_size=(16, 16, 16),
        target_spacing=(5.0, 5.0, 5.0),
    )
    torch.manual_seed(run.seed)
    return model_state(build_network(run.task_spec(), run.network_config()))


def _norm_keys() -> set[str]:
    from appliance.federation.params import load_into
    from appliance.federation.settings import RunSettings
    from models.networks import build_network, norm_parameter_names

    run = RunSettings(
        task="glioma_mr", net_filters=(4, 8), net_res_units=0, patch_size=(16, 16, 16)
    )
    model = build_network(run.task_spec(), run.network_config())
    load_into(model, _initial())
    return norm_parameter_names(model)


def _train_entries(progress: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in progress["history"] if e["phase"] == "train"]


def _changed(a: dict[str, np.ndarray], b: dict[str, np.ndarray], keys: set[str]) -> bool:
    return any(not np.allclose(a[k], b[k]) for k in keys)


def test_fedbn_keeps_normalisation_local(federation: Federation) -> None:
    from appliance.federation.outputs import site_weights
    from appliance.federation.site_state import load_site_norm

    progress = federation.run("fedbn")
    norm = _norm_keys()
    assert norm
    initial, final = _initial(), _weights(Path(progress["result"]["directory"]))
    for entry in _train_entries(progress):
        assert entry["norm_entries_received"] == 0
        assert all(n == len(initial) - len(norm) for n in entry["entries_received"])
    # aggregation changed the shared entries and left the normalisation ones untouched
    assert _changed(initial, final, set(initial) - norm)
    assert all(np.array_equal(initial[k], final[k]) for k in norm)
    local = {site: load_site_norm(federation.site_dir(site), "glioma_mr") for site in SITES}
    assert all(v is not None and set(v) == norm for v in local.values())
    for a, b in itertools.combinations(SITES, 2):
        assert _changed(local[a], local[b], norm)  # type: ignore[arg-type]
    for site in SITES:
        assert _changed(local[site], initial, norm)  # type: ignore[arg-type]
        # the site's weights: global shared entries + its own normalisation entries
        mine = site_weights(federation.site_dir(site), progress["run_id"])
        assert all(np.allclose(mine[k], local[site][k]) for k in norm)  # type: ignore[index]
        assert all(np.allclose(mine[k], final[k]) for k in set(final) - norm)


def test_cwt_visits_sites_in_the_configured_order(federation: Federation) -> None:
    # (swt's order, with sites that fail on the way: tests/interop/test_federation_faults.py)
    progress = federation.run("cwt", site_order=ORDER)
    visits = [site for e in _train_entries(progress) for site in e["visits"]]
    assert visits == list(ORDER) * 2  # two cycles: each site met twice
    assert progress["result"]["visits"] == visits
    initial, final = _initial(), _weights(Path(progress["result"]["directory"]))
    assert _changed(initial, final, set(initial))


def test_gossip_has_no_global_model(federation: Federation) -> None:
    from appliance.federation.outputs import read_result, site_weights

    progress = federation.run("gossip")
    result = read_result(Path(progress["result"]["directory"]))
    assert not result.global_model and result.weights_path is None
    assert not (Path(progress["result"]["directory"]) / "weights.pt").exists()
    assert all(e["aggregate"] is None for e in _train_entries(progress))
    pairings = progress["result"]["pairings"]
    assert len(pairings) == 2 and all(set(p) == set(SITES) for p in pairings)
    assert all(peer != site for p in pairings for site, peer in p.items())
    distance = progress["result"]["consensus_distance"]
    assert isinstance(distance, float) and distance >= 0
    initial = _initial()
    models = {site: site_weights(federation.site_dir(site), progress["run_id"]) for site in SITES}
    assert all(_changed(initial, m, set(initial)) for m in models.values())


def test_fedgs_scales_steps_on_small_lesion_batches(federation: Federation) -> None:
    # "small" = lesion under 30 % of the patch: the tiny glioma phantoms qualify
    progress = federation.run("fedgs", fedgs_threshold=0.3, server_momentum=0.5)
    entries = _train_entries(progress)
    maxima = [m["step-scale-max"] for e in entries for m in e["sites"].values()]
    assert max(maxima) > 1.0
    assert sum(m["scaled-steps"] for e in entries for m in e["sites"].values()) > 0
    initial, final = _initial(), _weights(Path(progress["result"]["directory"]))
    assert _changed(initial, final, set(initial))
