"""Settings of a federated run (Flower ``run_config``) and of a site (``node_config``).

Both arrive as flat ``key -> str | int | float | bool`` maps (Flower's user config); here
they become validated frozen dataclasses. Errors name the key. No Flower import: the
coordinator CLI builds the same maps it passes to ``flwr run --run-config``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import ConfigReader, StrategyName
from appliance.errors import ConfigIssue, FederationError
from appliance.federation.sim_sites import parse_sim_sites

if TYPE_CHECKING:
    from models.cascade_spec import RefinerSettings


class CaseSource(StrEnum):
    PHANTOM = "phantom"
    STORE = "store"


ConfigMap = Mapping[str, Any]
SITE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _error(issue: ConfigIssue) -> FederationError:
    return FederationError(str(issue))  # "<key>: <what is wrong>"


class SettingsReader(ConfigReader):
    """The config reader over a flat Flower user-config map: the first problem raises
    :class:`FederationError`; an integral float is an int (Flower's numbers)."""

    def __init__(self, config: ConfigMap) -> None:
        super().__init__(config, fail=_error)

    def get(self, key: str, kind: type, default: Any) -> Any:
        return self.typed(key, kind, default, integral_floats=True)

    def ints(self, key: str, count: int | None) -> tuple[int, ...] | None:
        text = self.get(key, str, "")
        if not text:
            return None
        try:
            values = tuple(int(v) for v in text.replace(" ", "").split(","))
        except ValueError as exc:
            raise self.fail(key, f"must be comma-separated integers, got {text!r}") from exc
        if (count is not None and len(values) != count) or min(values) < 1:
            raise self.fail(key, f"need {count or 'some'} positive integers, got {text!r}")
        return values

    def floats(self, key: str, count: int) -> tuple[float, ...] | None:
        text = self.get(key, str, "")
        if not text:
            return None
        try:
            values = tuple(float(v) for v in text.replace(" ", "").split(","))
        except ValueError as exc:
            raise self.fail(key, f"must be comma-separated numbers, got {text!r}") from exc
        if len(values) != count or not all(math.isfinite(v) and v > 0 for v in values):
            raise self.fail(key, f"need {count} positive numbers, got {text!r}")
        return values


def _res_units(value: int) -> int | None:
    return None if value < 0 else value


def _margin(value: float) -> float | None:
    return None if value < 0 else value


def federated_networks() -> tuple[str, ...]:
    """The network classes a run can train (``net-class``): :class:`models.networks.Architecture`
    values whose layout run settings describe completely (filters, residual units, norm)."""
    from models.networks import Architecture

    return (Architecture.UNET.value, Architecture.DYNUNET.value)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What every party of one run agrees on (the Flower ``run_config``)."""

    strategy: StrategyName = StrategyName.FEDAVG
    rounds: int = 2
    min_sites: int = 2
    task: str = "liver_ct"
    local_steps: int = 20
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    evaluate: bool = True
    #: network: class (``net-class``: "unet", the default, or "dynunet"), comma-separated
    #: filters, residual units (UNet), norm ("instance"/"batch")
    net_class: str = ""
    net_filters: tuple[int, ...] | None = None
    net_res_units: int | None = None
    net_norm: str = ""
    #: task overrides (tests use tiny patches/coarse spacing): "16,16,16" / "5,5,5"
    patch_size: tuple[int, ...] | None = None
    target_spacing: tuple[float, ...] | None = None
    #: set (mm, >= 0; ``refiner-margin``, -1 on the wire = unset): the run federates the
    #: refiner of a two-stage model (:mod:`models.cascade`): the network is the refiner,
    #: ``patch-size``/``target-spacing`` are its grid (both required), and each site
    #: trains and scores it on its cases cut to their truth boxes grown by this margin
    refiner_margin: float | None = None
    #: cwt/swt: site names in visiting order; "" = sorted site names
    site_order: tuple[str, ...] = ()
    #: sampling per round for large consortia (:meth:`round_sample`): ``round-sites``
    #: sites (> 0) or the fraction ``round-fraction`` of the connected ones train in a
    #: round; 0 and 1.0 (the defaults): every site, every round
    round_sites: int = 0
    round_fraction: float = 1.0
    #: faults: each round waits at most ``round-deadline-s`` (0: ``timeout-s``) for its
    #: replies; a site that misses it is left out of the round (recorded as dropped). By
    #: default a site's error fails the round; with ``round-min-sites`` (> 0) or
    #: ``round-min-fraction`` (< 1) a failed site is left out too, and the round goes on
    #: when at least that many of the sites asked replied
    round_deadline_s: float = 0.0
    round_min_sites: int = 0
    round_min_fraction: float = 1.0
    prox_mu: float = 0.01
    fedgs_threshold: float = 0.001
    fedgs_base: float = 1000.0
    server_lr: float = 1.0
    server_momentum: float = 0.0
    trim_beta: float = 0.2
    krum_byzantine: int = 0
    dp_clipping_norm: float = 0.0  # > 0 wraps the strategy in client-side fixed clipping
    dp_noise_multiplier: float = 0.0
    #: where the ServerApp writes progress and results (coordinator's state dir)
    output_dir: str = ""
    initial_weights: str = ""
    timeout_s: float = 3600.0
    #: what the coordinator accepts from a site (``strategies.screening``): the most bytes
    #: of arrays in one reply, the most training cases a site may report at discovery
    max_update_bytes: int = 512 * 1024 * 1024
    max_site_cases: int = 1_000_000
    #: simulation runtime only (``appliance federate simulate``): the simulated sites,
    #: ``preset:train cases:held-out cases`` comma-separated, virtual SuperNode ``i``
    #: (Flower's ``partition-id``) being entry ``i``; their state dirs under
    #: ``sim-state-root``; torch threads per simulated site
    sim_sites: str = ""
    sim_state_root: str = ""
    sim_threads: int = 1
    #: a directory where simulated sites keep their generated phantoms (each run's
    #: workers start empty; generating is slower than reading)
    sim_phantom_cache: str = ""
    #: > 0 (mm): simulated sites make their phantoms on this coarse isotropic grid
    #: (``phantom-grid-mm``), the same field of view; 0: each protocol's own grid
    sim_phantom_mm: float = 0.0

    @classmethod
    def from_config(cls, config: ConfigMap) -> RunSettings:
        d = cls()
        r = SettingsReader(config)
        order = r.get("site-order", str, "")
        settings = cls(
            strategy=r.enum("strategy", StrategyName, d.strategy),
            rounds=r.get("num-rounds", int, d.rounds),
            min_sites=r.get("min-sites", int, d.min_sites),
            task=r.get("task", str, d.task),
            local_steps=r.get("local-steps", int, d.local_steps),
            batch_size=r.get("batch-size", int, d.batch_size),
            lr=r.get("lr", float, d.lr),
            seed=r.get("seed", int, d.seed),
            evaluate=r.get("evaluate", bool, d.evaluate),
            net_class=r.get("net-class", str, ""),
            net_filters=r.ints("net-filters", None),
            net_res_units=_res_units(r.get("net-res-units", int, -1)),
            net_norm=r.get("net-norm", str, ""),
            patch_size=r.ints("patch-size", 3),
            target_spacing=r.floats("target-spacing", 3),
            refiner_margin=_margin(r.get("refiner-margin", float, -1.0)),
            site_order=tuple(s for s in order.replace(" ", "").split(",") if s),
            round_sites=r.get("round-sites", int, d.round_sites),
            round_fraction=r.get("round-fraction", float, d.round_fraction),
            round_deadline_s=r.get("round-deadline-s", float, d.round_deadline_s),
            round_min_sites=r.get("round-min-sites", int, d.round_min_sites),
            round_min_fraction=r.get("round-min-fraction", float, d.round_min_fraction),
            prox_mu=r.get("prox-mu", float, d.prox_mu),
            fedgs_threshold=r.get("fedgs-threshold", float, d.fedgs_threshold),
            fedgs_base=r.get("fedgs-base", float, d.fedgs_base),
            server_lr=r.get("server-lr", float, d.server_lr),
            server_momentum=r.get("server-momentum", float, d.server_momentum),
            trim_beta=r.get("trim-beta", float, d.trim_beta),
            krum_byzantine=r.get("krum-byzantine", int, d.krum_byzantine),
            dp_clipping_norm=r.get("dp-clipping-norm", float, d.dp_clipping_norm),
            dp_noise_multiplier=r.get("dp-noise-multiplier", float, d.dp_noise_multiplier),
            output_dir=r.get("output-dir", str, ""),
            initial_weights=r.get("initial-weights", str, ""),
            timeout_s=r.get("timeout-s", float, d.timeout_s),
            max_update_bytes=r.get("max-update-bytes", int, d.max_update_bytes),
            max_site_cases=r.get("max-site-cases", int, d.max_site_cases),
            sim_sites=r.get("sim-sites", str, ""),
            sim_state_root=r.get("sim-state-root", str, ""),
            sim_threads=r.get("sim-threads", int, d.sim_threads),
            sim_phantom_cache=r.get("sim-phantom-cache", str, ""),
            sim_phantom_mm=r.get("sim-phantom-mm", float, 0.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        checks = [
            (self.rounds >= 1, "num-rounds: must be >= 1"),
            (self.min_sites >= 1, "min-sites: must be >= 1"),
            (self.local_steps >= 1, "local-steps: must be >= 1"),
            (self.batch_size >= 1, "batch-size: must be >= 1"),
            (self.lr > 0 and math.isfinite(self.lr), "lr: must be a number > 0"),
            (self.prox_mu >= 0, "prox-mu: must be >= 0"),
            (0 < self.fedgs_threshold < 1, "fedgs-threshold: must be in (0, 1)"),
            (self.fedgs_base > 1, "fedgs-base: must be > 1"),
            (self.server_lr > 0, "server-lr: must be > 0"),
            (0 <= self.server_momentum < 1, "server-momentum: must be in [0, 1)"),
            (0 <= self.trim_beta < 0.5, "trim-beta: must be in [0, 0.5)"),
            (self.krum_byzantine >= 0, "krum-byzantine: must be >= 0"),
            (self.dp_clipping_norm >= 0, "dp-clipping-norm: must be >= 0"),
            (self.dp_noise_multiplier >= 0, "dp-noise-multiplier: must be >= 0"),
            (self.net_norm in ("", "instance", "batch"), "net-norm: instance or batch"),
            (self.timeout_s > 0, "timeout-s: must be > 0"),
            (self.max_update_bytes >= 1, "max-update-bytes: must be >= 1"),
            (self.max_site_cases >= 1, "max-site-cases: must be >= 1"),
            (self.sim_threads >= 1, "sim-threads: must be >= 1"),
            (0 <= self.sim_phantom_mm <= 50, "sim-phantom-mm: must be 0 to 50 mm"),
            (self.round_sites >= 0, "round-sites: must be >= 0 (0: by round-fraction)"),
            (0 < self.round_fraction <= 1, "round-fraction: must be in (0, 1]"),
            (self.round_deadline_s >= 0, "round-deadline-s: must be >= 0 (0: timeout-s)"),
            (self.round_min_sites >= 0, "round-min-sites: must be >= 0 (0: by fraction)"),
            (0 < self.round_min_fraction <= 1, "round-min-fraction: must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise FederationError(message)
        if self.net_class and self.net_class not in federated_networks():
            raise FederationError(
                f"net-class: must be one of {', '.join(federated_networks())} "
                f"(empty: unet), got {self.net_class!r}"
            )
        if self.refiner_margin is not None:
            self._check_refiner()
        if self.sim_sites:
            parse_sim_sites(self.sim_sites)
        if self.strategy == StrategyName.GOSSIP and self.min_sites < 2:
            raise FederationError("min-sites: gossip needs at least 2 sites")
        if self.strategy == StrategyName.GOSSIP and self.samples_rounds:
            raise FederationError(
                "round-sites/round-fraction: gossip pairs every site in every round"
            )
        if self.dp_clipping_norm > 0 and self.strategy in (
            StrategyName.FEDBN,
            StrategyName.CWT,
            StrategyName.SWT,
            StrategyName.GOSSIP,
            StrategyName.FEDGS,
        ):
            raise FederationError(
                f"dp-clipping-norm: client-side DP clipping works with fedavg, fedprox, "
                f"fedmedian, fedtrimmedavg and krum, not with {self.strategy}"
            )

    @property
    def samples_rounds(self) -> bool:
        """Whether rounds train a sample of the sites rather than all of them."""
        return self.round_sites > 0 or self.round_fraction < 1

    def round_sample(self, connected: int) -> int:
        """How many of ``connected`` sites train in one round: ``round-sites`` (at most
        all), else ``round-fraction`` of them rounded up, at least one."""
        if self.round_sites > 0:
            return min(self.round_sites, connected)
        return min(connected, max(1, math.ceil(self.round_fraction * connected - 1e-9)))

    @property
    def round_timeout(self) -> float:
        """Seconds a round waits for its replies."""
        return self.round_deadline_s or self.timeout_s

    @property
    def tolerates_dropouts(self) -> bool:
        """Whether a round may go on without some of the sites it asked."""
        return self.round_min_sites > 0 or self.round_min_fraction < 1

    def round_minimum(self, asked: int) -> int:
        """Replies a round that tolerates dropouts needs of the ``asked`` sites:
        ``round-min-sites`` (at most all) or ``round-min-fraction`` of them rounded up."""
        if self.round_min_sites > 0:
            return min(self.round_min_sites, asked)
        return min(asked, max(1, math.ceil(self.round_min_fraction * asked - 1e-9)))

    def _check_refiner(self) -> None:
        from models.errors import ModelsError

        if self.patch_size is None or self.target_spacing is None:
            raise FederationError(
                "refiner-margin: a refiner run needs patch-size and target-spacing "
                "(the refiner's grid)"
            )
        try:
            self.task_spec()
        except ModelsError as exc:
            raise FederationError(f"refiner-margin: not a valid refiner run: {exc}") from exc

    @property
    def stage(self) -> str:
        """What the run federates: ``""`` (a whole model) or
        :data:`models.cascade_spec.REFINER` (a two-stage model's refiner)."""
        if self.refiner_margin is None:
            return ""
        from models.cascade_spec import REFINER

        return REFINER

    def refiner_settings(self) -> RefinerSettings | None:
        """The refiner's :class:`models.cascade_spec.RefinerSettings` (grid and margin) of
        a refiner run; ``None`` for a run of a whole model."""
        if self.refiner_margin is None or self.patch_size is None or self.target_spacing is None:
            return None
        from models.cascade_spec import RefinerSettings

        t, p = self.target_spacing, self.patch_size
        return RefinerSettings(
            target_spacing_mm=(t[0], t[1], t[2]),
            patch_size=(p[0], p[1], p[2]),
            margin_mm=self.refiner_margin,
        )

    def norm_scope(self) -> str:
        """The name a FedBN site keeps its normalisation entries under: the task, or
        ``<task>.refiner`` for a refiner run (another network than the task's UNet)."""
        return f"{self.task}.{self.stage}" if self.stage else self.task

    def task_overrides(self) -> dict[str, Any]:
        """What a run's record keeps of the grid it trained on (``patch_size``,
        ``target_spacing_mm``; a refiner run also its ``margin_mm``)."""
        out: dict[str, Any] = {}
        if self.patch_size is not None:
            out["patch_size"] = list(self.patch_size)
        if self.target_spacing is not None:
            out["target_spacing_mm"] = list(self.target_spacing)
        if self.refiner_margin is not None:
            out["margin_mm"] = self.refiner_margin
        return out

    def task_spec(self) -> Any:
        """The task as the run's network sees it (for a refiner run the task on the
        refiner's grid, :func:`models.cascade_spec.refiner_spec`)."""
        from models.tasks import get_task

        spec = get_task(self.task)
        refiner = self.refiner_settings()
        if refiner is not None:
            from models.cascade_spec import refiner_spec

            return refiner_spec(spec, refiner)
        if self.patch_size is not None:
            p = self.patch_size
            spec = replace(spec, patch_size=(p[0], p[1], p[2]))
        if self.target_spacing is not None:
            t = self.target_spacing
            spec = replace(spec, target_spacing_mm=(t[0], t[1], t[2]))
        return spec

    def network_config(self) -> Any:
        from models.networks import DEFAULT_NETWORK, Architecture, NetworkConfig, Norm

        net: NetworkConfig = DEFAULT_NETWORK
        if self.net_class:
            net = replace(net, name=Architecture(self.net_class))
        if self.net_filters is not None:
            net = replace(net, filters=self.net_filters)
        if self.net_res_units is not None:
            net = replace(net, num_res_units=self.net_res_units)
        if self.net_norm:
            net = replace(net, norm=Norm(self.net_norm))
        return NetworkConfig(
            name=net.name,
            filters=net.filters,
            norm=net.norm,
            num_res_units=net.num_res_units,
            dropout=net.dropout,
        )


def run_config_map(settings: RunSettings) -> dict[str, Any]:
    """The inverse of :meth:`RunSettings.from_config` (what ``flwr run`` is given)."""
    out: dict[str, Any] = {
        "strategy": settings.strategy.value,
        "num-rounds": settings.rounds,
        "min-sites": settings.min_sites,
        "task": settings.task,
        "local-steps": settings.local_steps,
        "batch-size": settings.batch_size,
        "lr": settings.lr,
        "seed": settings.seed,
        "evaluate": settings.evaluate,
        "net-class": settings.net_class,
        "net-norm": settings.net_norm,
        "site-order": ",".join(settings.site_order),
        "round-sites": settings.round_sites,
        "round-fraction": settings.round_fraction,
        "round-deadline-s": settings.round_deadline_s,
        "round-min-sites": settings.round_min_sites,
        "round-min-fraction": settings.round_min_fraction,
        "prox-mu": settings.prox_mu,
        "fedgs-threshold": settings.fedgs_threshold,
        "fedgs-base": settings.fedgs_base,
        "server-lr": settings.server_lr,
        "server-momentum": settings.server_momentum,
        "trim-beta": settings.trim_beta,
        "krum-byzantine": settings.krum_byzantine,
        "dp-clipping-norm": settings.dp_clipping_norm,
        "dp-noise-multiplier": settings.dp_noise_multiplier,
        "output-dir": settings.output_dir,
        "initial-weights": settings.initial_weights,
        "timeout-s": settings.timeout_s,
        "max-update-bytes": settings.max_update_bytes,
        "max-site-cases": settings.max_site_cases,
        "net-filters": ",".join(str(v) for v in settings.net_filters or ()),
        "net-res-units": -1 if settings.net_res_units is None else settings.net_res_units,
        "patch-size": ",".join(str(v) for v in settings.patch_size or ()),
        "target-spacing": ",".join(f"{v:g}" for v in settings.target_spacing or ()),
        "refiner-margin": -1.0 if settings.refiner_margin is None else settings.refiner_margin,
        "sim-sites": settings.sim_sites,
        "sim-state-root": settings.sim_state_root,
        "sim-threads": settings.sim_threads,
        "sim-phantom-cache": settings.sim_phantom_cache,
        "sim-phantom-mm": settings.sim_phantom_mm,
    }
    return out


def round_seed(run_seed: int, server_round: int, site: str) -> int:
    """The seed of one site's local training in one round (patch sampling, dropout)."""
    return (run_seed * 1_000_003 + server_round * 7919 + zlib.crc32(site.encode())) % (2**31)


def simulated_node_config(run: RunSettings, partition_id: int) -> dict[str, Any]:
    """The ``node_config`` of virtual SuperNode ``partition_id`` on the simulation
    runtime, from the run's ``sim-*`` settings: site ``partition_id`` of ``sim-sites``
    (named after its preset), phantom data drawn with the run's seed, its state dir under
    ``sim-state-root``. Empty when the run has no ``sim-sites``."""
    if not run.sim_sites:
        return {}
    sites = parse_sim_sites(run.sim_sites)
    if not 0 <= partition_id < len(sites):
        raise FederationError(
            f"sim-sites: virtual SuperNode {partition_id} has no site ({len(sites)} listed)"
        )
    site = sites[partition_id]
    config: dict[str, Any] = {
        "site-name": site.preset,
        "case-source": CaseSource.PHANTOM.value,
        "phantom-preset": site.preset,
        "phantom-cases": site.train + site.held_out,
        "phantom-held-out": site.held_out,
        "phantom-seed": run.seed,
        "threads": run.sim_threads,
    }
    if run.sim_state_root:
        config["state-dir"] = str(Path(run.sim_state_root) / site.preset)
    if run.sim_phantom_cache:
        config["phantom-cache"] = run.sim_phantom_cache
    if run.sim_phantom_mm:
        config["phantom-grid-mm"] = run.sim_phantom_mm
    return config
