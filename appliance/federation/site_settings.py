"""Settings of a site (Flower ``node_config``): who it is, where its cases come from, and
the run settings it accepts from the coordinator (:class:`RunLimits`). The run's own
settings (``run_config``) are :mod:`appliance.federation.settings`; errors name the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import FederationError
from appliance.federation.settings import (
    SITE_NAME,
    CaseSource,
    ConfigMap,
    RunSettings,
    SettingsReader,
)


def _default_preset(config: ConfigMap) -> str:
    """``site_a``, or on the simulation runtime the presets in turn by partition id."""
    if "partition-id" not in config:
        return "site_a"
    from models.phantoms import SITE_PRESETS

    names = sorted(SITE_PRESETS)
    return names[int(config["partition-id"]) % len(names)]


@dataclass(frozen=True, slots=True)
class RunLimits:
    """The run settings a site accepts from the coordinator (its own ``[federation]``
    ``max_local_steps``, ..., passed to its SuperNode as ``node_config`` ``max-local-steps``,
    ...). The defaults take the shipped benchmark configs with room to spare."""

    max_local_steps: int = 10_000
    max_batch_size: int = 64
    #: voxels of one training/inference patch (the product of ``patch-size``)
    max_patch_voxels: int = 256**3
    min_lr: float = 1e-7
    max_lr: float = 1.0
    max_rounds: int = 1000

    def __post_init__(self) -> None:
        for key, value in (
            ("max-local-steps", self.max_local_steps),
            ("max-batch-size", self.max_batch_size),
            ("max-patch-voxels", self.max_patch_voxels),
            ("max-rounds", self.max_rounds),
        ):
            if value < 1:
                raise FederationError(f"{key}: must be >= 1")
        if not (0 < self.min_lr <= self.max_lr and math.isfinite(self.max_lr)):
            raise FederationError("min-lr, max-lr: need 0 < min-lr <= max-lr (finite)")

    @classmethod
    def from_config(cls, config: ConfigMap) -> RunLimits:
        d, r = cls(), SettingsReader(config)
        return cls(
            max_local_steps=r.get("max-local-steps", int, d.max_local_steps),
            max_batch_size=r.get("max-batch-size", int, d.max_batch_size),
            max_patch_voxels=r.get("max-patch-voxels", int, d.max_patch_voxels),
            min_lr=r.get("min-lr", float, d.min_lr),
            max_lr=r.get("max-lr", float, d.max_lr),
            max_rounds=r.get("max-rounds", int, d.max_rounds),
        )

    def to_config(self) -> dict[str, int | float]:
        """The ``node_config`` entries (the inverse of :meth:`from_config`)."""
        return {
            "max-local-steps": self.max_local_steps,
            "max-batch-size": self.max_batch_size,
            "max-patch-voxels": self.max_patch_voxels,
            "min-lr": self.min_lr,
            "max-lr": self.max_lr,
            "max-rounds": self.max_rounds,
        }

    def refuse(self, run: RunSettings, patch_size: tuple[int, ...]) -> None:
        """Raise :class:`FederationError` naming the first run setting over its limit
        (``patch_size``: the patch the run's task trains and infers with)."""
        voxels = math.prod(patch_size)
        problems = [
            (
                run.local_steps <= self.max_local_steps,
                "local-steps",
                run.local_steps,
                f"at most max-local-steps={self.max_local_steps}",
            ),
            (
                run.batch_size <= self.max_batch_size,
                "batch-size",
                run.batch_size,
                f"at most max-batch-size={self.max_batch_size}",
            ),
            (
                voxels <= self.max_patch_voxels,
                "patch-size",
                "x".join(str(v) for v in patch_size),
                f"{voxels} voxels, at most max-patch-voxels={self.max_patch_voxels}",
            ),
            (
                self.min_lr <= run.lr <= self.max_lr,
                "lr",
                run.lr,
                f"from min-lr={self.min_lr:g} to max-lr={self.max_lr:g}",
            ),
            (
                run.rounds <= self.max_rounds,
                "num-rounds",
                run.rounds,
                f"at most max-rounds={self.max_rounds}",
            ),
        ]
        for ok, key, value, allowed in problems:
            if not ok:
                raise FederationError(
                    f"this site refuses the run: {key}={value} is outside its limits ({allowed})"
                )


@dataclass(frozen=True, slots=True)
class SiteSettings:
    """One SuperNode's own settings (Flower ``node_config``)."""

    site: str
    state_dir: Path
    source: CaseSource = CaseSource.PHANTOM
    phantom_preset: str = "site_a"
    phantom_cases: int = 3
    phantom_matrix: tuple[int, ...] | None = None
    phantom_spacing: tuple[float, ...] | None = None
    #: > 0 (mm): the phantoms on an isotropic grid this coarse covering the protocol's
    #: field of view (cheap simulated sites); ``phantom-matrix``/``-spacing`` win
    phantom_grid_mm: float = 0.0
    #: phantom source: how many of the site's cases (the last ones) are held out, and
    #: the seed that varies the site's patients (0: the preset's own)
    phantom_held_out: int = 1
    phantom_seed: int = 0
    #: a directory to keep generated phantoms in (and read them back from)
    phantom_cache: Path | None = None
    threads: int = 1
    #: ``store`` source: the appliance's SQLite store
    database: Path | None = None
    #: the run settings this site accepts
    limits: RunLimits = RunLimits()

    @classmethod
    def from_config(cls, config: ConfigMap, *, fallback_site: str = "site") -> SiteSettings:
        r = SettingsReader(config)
        site = r.get("site-name", str, "")
        if not site and "partition-id" in config:  # simulation runtime
            site = f"site_{int(config['partition-id'])}"
        site = site or fallback_site
        if not SITE_NAME.match(site) or site in (".", ".."):
            raise FederationError(f"site-name: 1-64 letters, digits, '.', '_' or '-', got {site!r}")
        state = r.get("state-dir", str, "")
        if not state:
            import tempfile

            state = str(Path(tempfile.gettempdir()) / "appliance-federation" / site)
        cache = r.get("phantom-cache", str, "")
        database = r.get("database", str, "")
        settings = cls(
            site=site,
            state_dir=Path(state),
            source=r.enum("case-source", CaseSource, CaseSource.PHANTOM),
            phantom_preset=r.get("phantom-preset", str, _default_preset(config)),
            phantom_cases=r.get("phantom-cases", int, 3),
            phantom_matrix=r.ints("phantom-matrix", 3),
            phantom_spacing=r.floats("phantom-spacing", 3),
            phantom_grid_mm=r.get("phantom-grid-mm", float, 0.0),
            phantom_held_out=r.get("phantom-held-out", int, 1),
            phantom_seed=r.get("phantom-seed", int, 0),
            phantom_cache=Path(cache) if cache else None,
            threads=r.get("threads", int, 1),
            database=Path(database) if database else None,
            limits=RunLimits.from_config(config),
        )
        if settings.phantom_cases < 1:
            raise FederationError("phantom-cases: must be >= 1")
        if not 0 <= settings.phantom_held_out < max(settings.phantom_cases, 2):
            raise FederationError(
                "phantom-held-out: must be >= 0 and leave at least one training case"
            )
        if not 0 <= settings.phantom_grid_mm <= 50:
            raise FederationError("phantom-grid-mm: must be 0 (the protocol's grid) to 50 mm")
        if settings.phantom_seed < 0:
            raise FederationError("phantom-seed: must be >= 0")
        if settings.threads < 1:
            raise FederationError("threads: must be >= 1")
        return settings
