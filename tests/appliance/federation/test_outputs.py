"""The hand-off files of a finished run and a site's own normalisation entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.errors import FederationError
from appliance.federation.outputs import read_result, site_weights, write_result
from appliance.federation.site_state import merge_site_norm, run_dir, save_state


def test_result_hand_off_and_site_norm_merge(tmp_path: Path) -> None:
    state = {"w": np.asarray([1.0], np.float32), "norm.weight": np.asarray([0.0], np.float32)}
    result = write_result(
        tmp_path,
        run_id="42",
        strategy="fedbn",
        rounds=2,
        task="glioma_mr",
        network={"name": "unet"},
        task_overrides={},
        sites=["a", "b"],
        state=state,
        global_model=True,
        norm_local=True,
    )
    again = read_result(result.directory)
    assert (again.strategy, again.run_id, again.rounds) == ("fedbn", "42", 2)
    assert np.allclose(again.load_weights()["w"], 1.0)
    merged = merge_site_norm(state, {"norm.weight": np.asarray([5.0])})
    assert np.allclose(merged["norm.weight"], 5.0) and np.allclose(merged["w"], 1.0)
    with pytest.raises(FederationError):
        merge_site_norm(state, {"other": np.asarray([1.0])})
    site_dir = tmp_path / "site"
    write_result(
        site_dir,
        run_id="42",
        strategy="fedbn",
        rounds=2,
        task="glioma_mr",
        network={},
        task_overrides={},
        sites=[],
        state=merged,
        global_model=True,
        norm_local=True,
    )
    assert np.allclose(site_weights(site_dir, "42")["norm.weight"], 5.0)
    save_state(run_dir(site_dir, "42") / "weights.pt", state)  # tampered
    with pytest.raises(FederationError, match="sha256"):
        site_weights(site_dir, "42")
