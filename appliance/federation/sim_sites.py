"""The ``sim-sites`` of a simulated federated run: which phantom preset each virtual
SuperNode plays and its case counts (``settings.simulated_node_config`` turns one into
a SuperNode's ``node_config``)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.errors import FederationError


@dataclass(frozen=True, slots=True)
class SimSite:
    """One simulated site of ``sim-sites``: a phantom preset and its case counts."""

    preset: str
    train: int
    held_out: int

    def entry(self) -> str:
        return f"{self.preset}:{self.train}:{self.held_out}"


def parse_sim_sites(text: str) -> tuple[SimSite, ...]:
    """``"site_a:10:2,site_d:2:2"`` -> :class:`SimSite` s (errors name ``sim-sites``)."""
    from models.site_distribution import site_hospital

    out: list[SimSite] = []
    for entry in (e for e in text.replace(" ", "").split(",") if e):
        parts = entry.split(":")
        try:
            preset, train, held_out = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError) as exc:
            raise FederationError(
                f"sim-sites: entries are preset:train:held_out, got {entry!r}"
            ) from exc
        if len(parts) != 3 or train < 1 or held_out < 1:
            raise FederationError(
                f"sim-sites: {entry!r} needs >= 1 training and >= 1 held-out case"
            )
        try:
            site_hospital(preset)
        except KeyError as exc:
            raise FederationError(f"sim-sites: {exc.args[0]}") from exc
        out.append(SimSite(preset, train, held_out))
    if not out:
        raise FederationError("sim-sites: no site given")
    presets = [s.preset for s in out]
    if len(set(presets)) != len(presets):
        raise FederationError("sim-sites: a preset is listed twice")
    return tuple(out)
