"""The ``[federation]`` section, and the one vocabulary of federated strategies.

:class:`StrategyName` is what ``federation.strategy``, ``federate start --strategy``,
a run's ``strategy`` setting (``appliance.federation.settings``) and the federated
benchmark's methods (``appliance.federation.simulation.config``) all name. No Flower
here: the strategies themselves are built in ``appliance.federation.strategies``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config.cron import valid_cron
from appliance.config.reader import ConfigReader

if TYPE_CHECKING:
    from appliance.config.sections import StorageConfig


class StrategyName(StrEnum):
    """A federated strategy, by the name configs and run settings give it."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDBN = "fedbn"
    CWT = "cwt"
    SWT = "swt"
    GOSSIP = "gossip"
    FEDGS = "fedgs"
    FEDMEDIAN = "fedmedian"
    FEDTRIMMEDAVG = "fedtrimmedavg"
    KRUM = "krum"


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """Federated fine-tuning over Flower's deployment engine (``appliance federate``).

    ``coordinator``: ``host:port`` of the coordinator's SuperLink (sites connect to it;
    the coordinator binds ``bind`` and the port). ``tls_ca_file`` (every party: verifies
    the SuperLink), ``tls_cert_file``/``tls_key_file`` (coordinator only); without them
    ``insecure = true`` is required (plain HTTP, tests and closed networks only).
    ``auth_private_key``/``auth_public_key`` (site: its SuperNode key pair, NIST EC
    curve, public key in OpenSSH format) and ``authorized_keys`` (coordinator: the
    sites' public key files) switch on SuperNode authentication (needs TLS).
    ``site_name``: how this site calls itself (default: the DICOM AE title).
    ``strategy``/``rounds``/``min_sites``/``local_steps``/``batch_size``/``lr``/
    ``prox_mu``: defaults of ``federate start``. ``task``: the task federated.
    ``schedule``: a 5-field cron expression (croniter syntax, the appliance's local
    time) at which ``serve`` joins by itself when the inference queue is empty.
    ``auto_validate``: after a run, put the site's candidate through the validation gate
    (default true). ``state_dir``: default ``<storage.root>/federation``.

    What this site accepts from a coordinator's run (a run over any of them is refused
    before anything is loaded or trained): ``max_local_steps`` (default 10000),
    ``max_batch_size`` (64), ``max_patch_voxels`` (voxels of one patch, the product of
    the patch size; 256**3), learning rate from ``min_lr`` to ``max_lr`` (1e-7 to 1.0),
    ``max_rounds`` (1000).

    The files named must exist. That a ``[federation]`` table in a config file names a
    ``tls_ca_file`` or says ``insecure = true`` is checked where the file is read.
    """

    coordinator: str = "127.0.0.1:9092"
    bind: str = "0.0.0.0"
    insecure: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    auth_private_key: Path | None = None
    auth_public_key: Path | None = None
    authorized_keys: tuple[Path, ...] = ()
    site_name: str | None = None
    task: str = "liver_ct"
    strategy: StrategyName = StrategyName.FEDAVG
    rounds: int = 2
    min_sites: int = 2
    local_steps: int = 50
    batch_size: int = 2
    lr: float = 1e-3
    prox_mu: float = 0.01
    schedule: str | None = None
    auto_validate: bool = True
    state_dir: Path | None = None
    max_local_steps: int = 10_000
    max_batch_size: int = 64
    max_patch_voxels: int = 256**3
    min_lr: float = 1e-7
    max_lr: float = 1.0
    max_rounds: int = 1000

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "federation")
        coordinator = self.coordinator
        host, _, port = (
            coordinator.rpartition(":") if isinstance(coordinator, str) else ("", "", "")
        )
        r.check(
            bool(host) and port.isdigit() and 1 <= int(port) <= 65535,
            "coordinator",
            f"must be host:port; got {coordinator!r}",
        )
        r.host("bind", required=True)
        insecure = r.boolean("insecure")
        r.path("tls_ca_file", must_exist=True)
        cert = r.path("tls_cert_file", must_exist=True)
        key = r.path("tls_key_file", must_exist=True)
        r.check(
            (cert is None) == (key is None),
            "tls_cert_file",
            "tls_cert_file and tls_key_file go together",
        )
        private = r.path("auth_private_key", must_exist=True)
        r.path("auth_public_key", must_exist=True)
        authorized = self._authorized_keys(r)
        r.check(
            not ((private is not None or authorized) and insecure),
            "insecure",
            "SuperNode authentication needs TLS, not insecure = true",
        )
        r.name("site_name")
        r.name("task", "must be a task name such as liver_ct or glioma_mr", required=True)
        r.enum("strategy", StrategyName, StrategyName.FEDAVG)
        r.integer("rounds", 1, 10_000)
        r.integer("min_sites", 1, 1000)
        r.integer("local_steps", 1, 1_000_000)
        r.integer("batch_size", 1, 1024)
        r.number("lr", 1e-8, 10.0)
        r.number("prox_mu", 0.0, 1000.0)
        schedule = r.string("schedule")
        r.check(
            schedule is None or valid_cron(schedule),
            "schedule",
            "must be a 5-field cron expression (minute hour day-of-month month "
            f"day-of-week, e.g. '0 2 * * *'); got {schedule!r}",
        )
        r.boolean("auto_validate")
        r.path("state_dir")
        r.integer("max_local_steps", 1, 1_000_000)
        r.integer("max_batch_size", 1, 1024)
        r.integer("max_patch_voxels", 1, 1024**3)
        min_lr = r.number("min_lr", 1e-12, 10.0, 1e-7)
        max_lr = r.number("max_lr", 1e-12, 10.0, 1.0)
        r.check(
            min_lr <= max_lr,
            "max_lr",
            f"must be at least min_lr ({min_lr:g}); got {max_lr:g}",
        )
        r.integer("max_rounds", 1, 100_000)
        r.raise_issues()

    def _authorized_keys(self, r: ConfigReader) -> tuple[Path, ...]:
        """``authorized_keys`` as a tuple of paths, each an existing file."""
        keys = self.authorized_keys
        if not isinstance(keys, list | tuple) or not all(isinstance(k, str | Path) for k in keys):
            r.err("authorized_keys", "must be a list of public key file paths")
            return ()
        paths = []
        for i, item in enumerate(keys):
            where = f"authorized_keys[{i}]"
            path = r.child({where: item}, r.prefix).path(where, must_exist=True)
            if path is not None:
                paths.append(path)
        object.__setattr__(self, "authorized_keys", tuple(paths))
        return tuple(paths)

    @property
    def coordinator_host(self) -> str:
        return self.coordinator.rsplit(":", 1)[0]

    @property
    def coordinator_port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])

    def state_root(self, storage: StorageConfig) -> Path:
        return self.state_dir if self.state_dir is not None else storage.root / "federation"
