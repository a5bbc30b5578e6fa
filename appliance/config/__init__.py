"""The appliance's configuration: one validated, frozen object from TOML plus environment.

Every problem is collected (not just the first) and reported with its dotted key and
what is allowed. Environment variables override the file:
``APPLIANCE__<SECTION>__<KEY>=value`` (double underscores), e.g.
``APPLIANCE__DICOM__PORT=11113``; values are read as TOML values, falling back to a
plain string.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config.cron import valid_cron
from appliance.errors import ConfigError, ConfigIssue
from appliance.routing import DEFAULT_RULES, RoutingRule

ENV_PREFIX = "APPLIANCE__"
CONFIG_ENV = "APPLIANCE_CONFIG"
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class CallerConfig:
    ae_title: str
    host: str | None = None


@dataclass(frozen=True, slots=True)
class DicomConfig:
    ae_title: str = "SEGAPPLIANCE"
    port: int = 11112
    bind: str = "0.0.0.0"
    max_associations: int = 10
    max_pdu_size: int = 131072
    allowed_callers: tuple[CallerConfig, ...] = ()
    series_quiet_seconds: float = 30.0
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``root``: spool, database, results, cases, audit trail. ``fsync``: make every
    received instance durable before it is acknowledged. ``min_free_mb``: the disk
    watermark: while the file system of ``root`` has less free space than this, new
    C-STOREs are refused with 0xA702 (out of resources) and nothing is written; ingest
    resumes by itself when space returns (0 turns the check off; default 1024)."""

    root: Path = Path("/var/lib/appliance")
    fsync: bool = True
    min_free_mb: int = 1024

    @property
    def spool_dir(self) -> Path:
        return self.root / "spool"

    @property
    def database(self) -> Path:
        return self.root / "appliance.sqlite3"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    @property
    def audit_file(self) -> Path:
        return self.root / "audit" / "audit.jsonl"


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str | None = None  # default: dicom.ae_title
    timeout_seconds: float = 30.0
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_attempts: int = 8
    backoff_initial_seconds: float = 5.0
    backoff_max_seconds: float = 600.0
    poll_seconds: float = 1.0


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``level``; ``format``: ``text`` (default) or ``json`` (one JSON object per line,
    for log collectors)."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """What is kept on disk, and for how long (``appliance storage usage|purge``).

    ``source_days``: received images are purged this many days after their results were
    delivered (every SEG/SR acknowledged by its destinations; with no destination, after
    the job finished), or after their series finished without a result (rejected,
    skipped, failed). Default 30. ``results_days``: result files (SEG, SR) are purged
    this many days after delivery; ``excluded_cases_days``: training cases taken out of
    the training set (excluded, superseded) are purged this many days after that. Both
    default to ``"forever"``. Annotated cases in a training set, and the images they
    were drawn on, are never purged; neither is anything not yet delivered.
    ``interval_hours``: how often ``serve`` applies the policies (default 6; 0: only
    ``appliance storage purge`` does).
    """

    source_days: float | None = 30.0  # None: forever
    results_days: float | None = None
    excluded_cases_days: float | None = None
    interval_hours: float = 6.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The health and metrics endpoint (``/healthz``, ``/metrics``): off unless
    ``enabled``; bound to loopback unless ``bind`` says otherwise."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8080


def shipped_bundles_dir() -> Path:
    """``models/bundles`` of the installed ``models`` package (source checkout or wheel),
    found without importing it (no torch at config time)."""
    spec = importlib.util.find_spec("models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    base = Path(locations[0]) if locations else Path(__file__).resolve().parents[2] / "models"
    return base / "bundles"


MODEL_DEVICES = ("auto", "cpu", "cuda")
SEG_TYPES = ("BINARY", "LABELMAP")


@dataclass(frozen=True, slots=True)
class ModelsConfig:
    """Where models live and where they run.

    ``root``: the site's model registry (default ``<storage.root>/models``). ``shipped``:
    registry-layout folder of bundles shipped with the software (default: the ``models``
    package's ``bundles``); on first start a task with no registered model gets them,
    the highest version active. ``device``: ``auto`` (CUDA when available), ``cpu``,
    ``cuda``. ``gate_margin``: the validation gate promotes a candidate only if no label's
    mean Dice on the held-out cases is below the active model's by more than this (0 to
    1, default 0.01); ``gate_min_cases``: fewer held-out cases than this and the gate
    decides nothing (default 3).
    """

    root: Path | None = None  # None: <storage.root>/models
    shipped: Path | None = field(default_factory=shipped_bundles_dir)
    device: str = "auto"
    gate_margin: float = 0.01
    gate_min_cases: int = 3

    def registry_root(self, storage: StorageConfig) -> Path:
        return self.root if self.root is not None else storage.root / "models"


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """What the pipeline writes and where it goes.

    ``destinations``: names of ``[[destinations]]`` that receive every SEG and SR;
    ``None`` (not configured) means the first destination, or none when there is none
    (results are then only stored under ``<storage.root>/results``). ``research_only``
    (default true): outputs say RESEARCH USE ONLY - NOT FOR DIAGNOSIS until the site
    configures otherwise. ``seg_type``: BINARY (default, empty frames omitted) or LABELMAP.
    """

    destinations: tuple[str, ...] | None = None
    research_only: bool = True
    seg_type: str = "BINARY"


@dataclass(frozen=True, slots=True)
class CasesConfig:
    """Annotated cases (``appliance.cases.from_seg``).

    ``held_out_fraction`` (0 to 0.9, default 0.2): the share of studies whose cases are
    held out, never trained on, for the validation gate. ``split_key``: the site's secret
    key of the keyed hash (HMAC-SHA256 of the Study Instance UID) that decides the split;
    at least 16 characters. When not configured, one is generated on first use and kept
    in the store (``appliance cases list`` does not show it), so the split stays fixed.
    """

    held_out_fraction: float = 0.2
    split_key: str | None = None


FEDERATION_STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedbn",
    "cwt",
    "swt",
    "gossip",
    "fedgs",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
)


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
    strategy: str = "fedavg"
    rounds: int = 2
    min_sites: int = 2
    local_steps: int = 50
    batch_size: int = 2
    lr: float = 1e-3
    prox_mu: float = 0.01
    schedule: str | None = None
    auto_validate: bool = True
    state_dir: Path | None = None

    @property
    def coordinator_host(self) -> str:
        return self.coordinator.rsplit(":", 1)[0]

    @property
    def coordinator_port(self) -> int:
        return int(self.coordinator.rsplit(":", 1)[1])

    def state_root(self, storage: StorageConfig) -> Path:
        return self.state_dir if self.state_dir is not None else storage.root / "federation"


@dataclass(frozen=True, slots=True)
class AppConfig:
    dicom: DicomConfig = field(default_factory=DicomConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    destinations: tuple[DestinationConfig, ...] = ()
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    routing: tuple[RoutingRule, ...] = DEFAULT_RULES
    models: ModelsConfig = field(default_factory=ModelsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cases: CasesConfig = field(default_factory=CasesConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    @property
    def models_root(self) -> Path:
        return self.models.registry_root(self.storage)

    @property
    def results_dir(self) -> Path:
        return self.storage.root / "results"

    @property
    def output_destinations(self) -> tuple[str, ...]:
        """Destinations of the pipeline's SEG and SR (see :class:`OutputConfig`)."""
        if self.output.destinations is not None:
            return self.output.destinations
        return (self.destinations[0].name,) if self.destinations else ()

    def destination(self, name: str) -> DestinationConfig:
        for dest in self.destinations:
            if dest.name == name:
                return dest
        known = ", ".join(d.name for d in self.destinations) or "none configured"
        from appliance.errors import NotFoundError

        raise NotFoundError(f"no destination named {name!r} (known: {known})")


# --------------------------------------------------------------------------------------
# Loading


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> AppConfig:
    """Read ``path`` (or ``$APPLIANCE_CONFIG``), apply environment overrides, validate."""
    env = os.environ if environ is None else environ
    if path is None:
        env_path = env.get(CONFIG_ENV)
        if not env_path:
            raise ConfigError(
                [ConfigIssue("config", f"no config file given and ${CONFIG_ENV} is unset")]
            )
        path = Path(env_path)
    source = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError([ConfigIssue("config", f"file not found: {path}")], source) from exc
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("config", f"cannot read {path}: {exc.strerror}")], source
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue("config", f"not valid TOML: {exc}")], source) from exc
    return parse_config(raw, environ=env, source=source, base_dir=Path(path).parent)


def parse_config(
    raw: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "config",
    base_dir: Path | None = None,
) -> AppConfig:
    data = _apply_env(dict(raw), environ or {})
    reader = _Reader(base_dir or Path.cwd())
    config = reader.app(data)
    if reader.issues:
        raise ConfigError(reader.issues, source)
    return config


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = _env_value(value)
    return data


def _env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


class _Reader:
    """Pulls typed values out of nested dicts, recording every problem with its key."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = []

    def err(self, key: str, message: str) -> None:
        self.issues.append(ConfigIssue(key, message))

    # -- sections ---------------------------------------------------------------------
    def app(self, data: dict[str, Any]) -> AppConfig:
        self.unknown(
            "",
            data,
            {
                "dicom",
                "storage",
                "destinations",
                "outbox",
                "logging",
                "routing",
                "models",
                "output",
                "cases",
                "federation",
                "retention",
                "http",
            },
        )
        dicom = self.dicom(self.table(data, "dicom"))
        storage = self.storage(self.table(data, "storage"))
        dests_raw = data.get("destinations", [])
        destinations: list[DestinationConfig] = []
        if not isinstance(dests_raw, list):
            self.err("destinations", "must be an array of tables ([[destinations]])")
        else:
            for i, item in enumerate(dests_raw):
                key = f"destinations[{i}]"
                if not isinstance(item, dict):
                    self.err(key, "must be a table")
                    continue
                dest = self.destination(key, item)
                if dest is not None:
                    destinations.append(dest)
            names = [d.name for d in destinations]
            for name in sorted({n for n in names if names.count(n) > 1}):
                self.err("destinations", f"destination name {name!r} is used more than once")
        outbox = self.outbox(self.table(data, "outbox"))
        logging_cfg = self.logging(self.table(data, "logging"))
        routing = self.routing(self.table(data, "routing"))
        models = self.models(self.table(data, "models"))
        output = self.output(self.table(data, "output"), [d.name for d in destinations])
        return AppConfig(
            dicom,
            storage,
            tuple(destinations),
            outbox,
            logging_cfg,
            routing,
            models,
            output,
            cases=self.cases(self.table(data, "cases")),
            federation=self.federation(self.table(data, "federation")),
            retention=self.retention(self.table(data, "retention")),
            http=self.http(self.table(data, "http")),
        )

    def retention(self, d: dict[str, Any]) -> RetentionConfig:
        p = "retention"
        self.unknown(p, d, {"source_days", "results_days", "excluded_cases_days", "interval_hours"})
        df = RetentionConfig()
        return RetentionConfig(
            source_days=self.days(d, "source_days", p, df.source_days),
            results_days=self.days(d, "results_days", p, df.results_days),
            excluded_cases_days=self.days(d, "excluded_cases_days", p, df.excluded_cases_days),
            interval_hours=self.number(d, "interval_hours", p, df.interval_hours, 0.0, 24 * 365),
        )

    def days(self, d: dict[str, Any], key: str, p: str, default: float | None) -> float | None:
        """A number of days (0 to 36500) or the string "forever"."""
        if key not in d:
            return default
        value = d[key]
        if isinstance(value, str) and value.strip().lower() == "forever":
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (0 <= value <= 36500)
        ):
            self.err(
                f"{p}.{key}", f'must be a number of days (0 to 36500) or "forever"; got {value!r}'
            )
            return default
        return float(value)

    def http(self, d: dict[str, Any]) -> HttpConfig:
        p = "http"
        self.unknown(p, d, {"enabled", "bind", "port"})
        df = HttpConfig()
        return HttpConfig(
            enabled=self.boolean(d, "enabled", p, df.enabled),
            bind=self.host(d, "bind", p, required=False) or df.bind,
            port=self.integer(d, "port", p, df.port, 1, 65535),
        )

    def federation(self, d: dict[str, Any]) -> FederationConfig:
        p = "federation"
        df = FederationConfig()
        keys = {
            "coordinator",
            "bind",
            "insecure",
            "tls_ca_file",
            "tls_cert_file",
            "tls_key_file",
            "auth_private_key",
            "auth_public_key",
            "authorized_keys",
            "site_name",
            "task",
            "strategy",
            "rounds",
            "min_sites",
            "local_steps",
            "batch_size",
            "lr",
            "prox_mu",
            "schedule",
            "auto_validate",
            "state_dir",
        }
        self.unknown(p, d, keys)
        coordinator = self.string(d, "coordinator", p, required=False) or df.coordinator
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            self.err(f"{p}.coordinator", f"must be host:port; got {coordinator!r}")
            coordinator = df.coordinator
        strategy = self.string(d, "strategy", p, required=False) or df.strategy
        if strategy not in FEDERATION_STRATEGIES:
            allowed = ", ".join(FEDERATION_STRATEGIES)
            self.err(f"{p}.strategy", f"must be one of {allowed}; got {strategy!r}")
            strategy = df.strategy
        site_name = self.string(d, "site_name", p, required=False)
        if site_name is not None and not _NAME_RE.match(site_name):
            self.err(f"{p}.site_name", "must be 1-64 letters, digits, '.', '_' or '-'")
        keys_raw = d.get("authorized_keys", [])
        authorized: list[Path] = []
        if not isinstance(keys_raw, list) or not all(isinstance(k, str) for k in keys_raw):
            self.err(f"{p}.authorized_keys", "must be a list of public key file paths")
        else:
            for i, item in enumerate(keys_raw):
                where = f"{p}.authorized_keys[{i}]"
                path = self.path({"file": item}, "file", where, must_exist=True)
                if path is not None:
                    authorized.append(path)
        insecure = self.boolean(d, "insecure", p, df.insecure)
        ca = self.path(d, "tls_ca_file", p, must_exist=True)
        cert = self.path(d, "tls_cert_file", p, must_exist=True)
        key = self.path(d, "tls_key_file", p, must_exist=True)
        if (cert is None) != (key is None):
            self.err(f"{p}.tls_cert_file", "tls_cert_file and tls_key_file go together")
        if d and not insecure and ca is None:
            self.err(f"{p}.tls_ca_file", "is required unless federation.insecure = true")
        private = self.path(d, "auth_private_key", p, must_exist=True)
        public = self.path(d, "auth_public_key", p, must_exist=True)
        if (private is not None or authorized) and insecure:
            self.err(f"{p}.insecure", "SuperNode authentication needs TLS, not insecure = true")
        schedule = self.string(d, "schedule", p, required=False)
        if schedule is not None and not valid_cron(schedule):
            self.err(
                f"{p}.schedule",
                "must be a 5-field cron expression (minute hour day-of-month month "
                f"day-of-week, e.g. '0 2 * * *'); got {schedule!r}",
            )
        task = self.string(d, "task", p, required=False) or df.task
        if not _NAME_RE.match(task):
            self.err(f"{p}.task", "must be a task name such as liver_ct or glioma_mr")
        return FederationConfig(
            coordinator=coordinator,
            bind=self.host(d, "bind", p, required=False) or df.bind,
            insecure=insecure,
            tls_ca_file=ca,
            tls_cert_file=cert,
            tls_key_file=key,
            auth_private_key=private,
            auth_public_key=public,
            authorized_keys=tuple(authorized),
            site_name=site_name,
            task=task,
            strategy=strategy,
            rounds=self.integer(d, "rounds", p, df.rounds, 1, 10_000),
            min_sites=self.integer(d, "min_sites", p, df.min_sites, 1, 1000),
            local_steps=self.integer(d, "local_steps", p, df.local_steps, 1, 1_000_000),
            batch_size=self.integer(d, "batch_size", p, df.batch_size, 1, 1024),
            lr=self.number(d, "lr", p, df.lr, 1e-8, 10.0),
            prox_mu=self.number(d, "prox_mu", p, df.prox_mu, 0.0, 1000.0),
            schedule=schedule,
            auto_validate=self.boolean(d, "auto_validate", p, df.auto_validate),
            state_dir=self.path(d, "state_dir", p),
        )

    def models(self, d: dict[str, Any]) -> ModelsConfig:
        p = "models"
        self.unknown(p, d, {"root", "shipped", "device", "gate_margin", "gate_min_cases"})
        defaults = ModelsConfig()
        device = self.string(d, "device", p, required=False) or defaults.device
        if device.lower() not in MODEL_DEVICES:
            self.err(f"{p}.device", f"must be one of {', '.join(MODEL_DEVICES)}; got {device!r}")
            device = defaults.device
        shipped = defaults.shipped
        if "shipped" in d and d["shipped"] == "":
            shipped = None  # explicitly: no shipped bundles
        elif "shipped" in d:
            shipped = self.path(d, "shipped", p)
        return ModelsConfig(
            root=self.path(d, "root", p),
            shipped=shipped,
            device=device.lower(),
            gate_margin=self.number(d, "gate_margin", p, defaults.gate_margin, 0.0, 1.0),
            gate_min_cases=self.integer(d, "gate_min_cases", p, defaults.gate_min_cases, 1, 10_000),
        )

    def cases(self, d: dict[str, Any]) -> CasesConfig:
        p = "cases"
        self.unknown(p, d, {"held_out_fraction", "split_key"})
        defaults = CasesConfig()
        key = d.get("split_key")
        if key is not None and (not isinstance(key, str) or len(key.strip()) < 16):
            self.err(f"{p}.split_key", "must be a secret string of at least 16 characters")
            key = None
        return CasesConfig(
            held_out_fraction=self.number(
                d, "held_out_fraction", p, defaults.held_out_fraction, 0.0, 0.9
            ),
            split_key=key.strip() if isinstance(key, str) else None,
        )

    def output(self, d: dict[str, Any], known: list[str]) -> OutputConfig:
        p = "output"
        self.unknown(p, d, {"destinations", "research_only", "seg_type"})
        defaults = OutputConfig()
        names: tuple[str, ...] | None = None
        if "destinations" in d:
            raw = d["destinations"]
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                self.err(f"{p}.destinations", "must be a list of destination names")
            else:
                for name in raw:
                    if name not in known:
                        self.err(
                            f"{p}.destinations",
                            f"{name!r} is not a configured destination "
                            f"(known: {', '.join(known) or 'none'})",
                        )
                names = tuple(dict.fromkeys(raw))
        seg_type = self.string(d, "seg_type", p, required=False) or defaults.seg_type
        if seg_type.upper() not in SEG_TYPES:
            self.err(f"{p}.seg_type", f"must be one of {', '.join(SEG_TYPES)}; got {seg_type!r}")
            seg_type = defaults.seg_type
        return OutputConfig(
            destinations=names,
            research_only=self.boolean(d, "research_only", p, defaults.research_only),
            seg_type=seg_type.upper(),
        )

    def dicom(self, d: dict[str, Any]) -> DicomConfig:
        p = "dicom"
        self.unknown(
            p,
            d,
            {
                "ae_title",
                "port",
                "bind",
                "max_associations",
                "max_pdu_size",
                "allowed_callers",
                "series_quiet_seconds",
                "tls",
            },
        )
        defaults = DicomConfig()
        callers: list[CallerConfig] = []
        raw_callers = d.get("allowed_callers", [])
        if not isinstance(raw_callers, list):
            self.err(
                f"{p}.allowed_callers", "must be a list of AE titles or {ae_title, host} tables"
            )
        else:
            for i, item in enumerate(raw_callers):
                key = f"{p}.allowed_callers[{i}]"
                if isinstance(item, str):
                    if self.check_ae(key, item):
                        callers.append(CallerConfig(item.strip()))
                elif isinstance(item, dict):
                    self.unknown(key, item, {"ae_title", "host"})
                    title = self.string(item, "ae_title", key, required=True)
                    host = self.host(item, "host", key, required=False)
                    if title is not None and self.check_ae(f"{key}.ae_title", title):
                        callers.append(CallerConfig(title.strip(), host))
                else:
                    self.err(key, "must be an AE title string or a table {ae_title, host}")
        tls_raw = d.get("tls")
        tls = self.tls(f"{p}.tls", tls_raw) if tls_raw is not None else None
        return DicomConfig(
            ae_title=self.ae(d, "ae_title", p, defaults.ae_title),
            port=self.integer(d, "port", p, defaults.port, 1, 65535),
            bind=self.host(d, "bind", p, required=False) or defaults.bind,
            max_associations=self.integer(
                d, "max_associations", p, defaults.max_associations, 1, 1000
            ),
            max_pdu_size=self.integer(d, "max_pdu_size", p, defaults.max_pdu_size, 4096, 2**24),
            allowed_callers=tuple(callers),
            series_quiet_seconds=self.number(
                d, "series_quiet_seconds", p, defaults.series_quiet_seconds, 0.1, 86400.0
            ),
            tls=tls,
        )

    def storage(self, d: dict[str, Any]) -> StorageConfig:
        p = "storage"
        self.unknown(p, d, {"root", "fsync", "min_free_mb"})
        defaults = StorageConfig()
        root = self.path(d, "root", p) or defaults.root
        return StorageConfig(
            root=root,
            fsync=self.boolean(d, "fsync", p, defaults.fsync),
            min_free_mb=self.integer(d, "min_free_mb", p, defaults.min_free_mb, 0, 10**8),
        )

    def destination(self, p: str, d: dict[str, Any]) -> DestinationConfig | None:
        self.unknown(
            p, d, {"name", "ae_title", "host", "port", "calling_ae", "timeout_seconds", "tls"}
        )
        before = len(self.issues)
        name = self.string(d, "name", p, required=True)
        if name is not None and not _NAME_RE.match(name):
            self.err(f"{p}.name", "must be 1-64 letters, digits, '.', '_' or '-'")
        ae_title = self.string(d, "ae_title", p, required=True)
        if ae_title is not None:
            self.check_ae(f"{p}.ae_title", ae_title)
        host = self.host(d, "host", p, required=True)
        port = self.integer(d, "port", p, None, 1, 65535)
        calling = d.get("calling_ae")
        if calling is not None:
            if not isinstance(calling, str):
                self.err(f"{p}.calling_ae", "must be a string")
                calling = None
            else:
                self.check_ae(f"{p}.calling_ae", calling)
        timeout = self.number(d, "timeout_seconds", p, 30.0, 0.5, 3600.0)
        tls_raw = d.get("tls")
        tls = self.tls(f"{p}.tls", tls_raw) if tls_raw is not None else None
        if len(self.issues) > before or name is None or ae_title is None or host is None:
            return None
        return DestinationConfig(name, ae_title.strip(), host, port, calling, timeout, tls)

    def outbox(self, d: dict[str, Any]) -> OutboxConfig:
        p = "outbox"
        self.unknown(
            p, d, {"max_attempts", "backoff_initial_seconds", "backoff_max_seconds", "poll_seconds"}
        )
        df = OutboxConfig()
        initial = self.number(
            d, "backoff_initial_seconds", p, df.backoff_initial_seconds, 0.01, 86400.0
        )
        maximum = self.number(
            d, "backoff_max_seconds", p, df.backoff_max_seconds, 0.01, 7 * 86400.0
        )
        if maximum < initial:
            self.err(f"{p}.backoff_max_seconds", "must be at least backoff_initial_seconds")
        return OutboxConfig(
            max_attempts=self.integer(d, "max_attempts", p, df.max_attempts, 1, 1000),
            backoff_initial_seconds=initial,
            backoff_max_seconds=maximum,
            poll_seconds=self.number(d, "poll_seconds", p, df.poll_seconds, 0.05, 60.0),
        )

    def logging(self, d: dict[str, Any]) -> LoggingConfig:
        p = "logging"
        self.unknown(p, d, {"level", "format"})
        level = self.string(d, "level", p, required=False) or "INFO"
        if level.upper() not in LOG_LEVELS:
            self.err(f"{p}.level", f"must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
            level = "INFO"
        fmt = (self.string(d, "format", p, required=False) or "text").lower()
        if fmt not in LOG_FORMATS:
            self.err(f"{p}.format", f"must be one of {', '.join(LOG_FORMATS)}; got {fmt!r}")
            fmt = "text"
        return LoggingConfig(level.upper(), fmt)

    def routing(self, d: dict[str, Any]) -> tuple[RoutingRule, ...]:
        p = "routing"
        self.unknown(p, d, {"rules"})
        if "rules" not in d:
            return DEFAULT_RULES
        raw = d["rules"]
        if not isinstance(raw, list):
            self.err(f"{p}.rules", "must be an array of tables ([[routing.rules]])")
            return DEFAULT_RULES
        rules: list[RoutingRule] = []
        for i, item in enumerate(raw):
            key = f"{p}.rules[{i}]"
            if not isinstance(item, dict):
                self.err(key, "must be a table")
                continue
            rule = self.routing_rule(key, item)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def routing_rule(self, p: str, d: dict[str, Any]) -> RoutingRule | None:
        self.unknown(
            p,
            d,
            {
                "task",
                "name",
                "modality",
                "body_parts",
                "series_description",
                "image_type_includes",
                "image_type_excludes",
                "min_slices",
            },
        )
        before = len(self.issues)
        task = self.string(d, "task", p, required=True)
        if task is not None and not _NAME_RE.match(task):
            self.err(f"{p}.task", "must be a task name such as liver_ct or glioma_mr")
        modality = self.string(d, "modality", p, required=True)
        if modality is not None and modality.upper() not in ("CT", "MR"):
            self.err(f"{p}.modality", f"must be CT or MR; got {modality!r}")
        pattern = d.get("series_description")
        if pattern is not None:
            if not isinstance(pattern, str):
                self.err(f"{p}.series_description", "must be a regular expression string")
            else:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    self.err(f"{p}.series_description", f"is not a valid regular expression: {exc}")
        lists = {
            k: self.string_list(d, k, p)
            for k in ("body_parts", "image_type_includes", "image_type_excludes")
        }
        min_slices = self.integer(d, "min_slices", p, 1, 1, 100000)
        name = d.get("name", "")
        if not isinstance(name, str):
            self.err(f"{p}.name", "must be a string")
            name = ""
        if len(self.issues) > before or task is None or modality is None:
            return None
        return RoutingRule(
            task=task,
            modality=modality.upper(),
            body_parts=lists["body_parts"] or (),
            series_description=pattern,
            image_type_includes=lists["image_type_includes"] or (),
            image_type_excludes=(
                lists["image_type_excludes"] or () if "image_type_excludes" in d else ("LOCALIZER",)
            ),
            min_slices=min_slices,
            name=name,
        )

    def string_list(self, d: dict[str, Any], key: str, p: str) -> tuple[str, ...] | None:
        value = d.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.err(f"{p}.{key}", "must be a list of non-empty strings")
            return None
        return tuple(value)

    def tls(self, p: str, d: Any) -> TlsConfig | None:
        if not isinstance(d, dict):
            self.err(p, "must be a table with cert_file, key_file and optional ca_file")
            return None
        self.unknown(p, d, {"cert_file", "key_file", "ca_file", "require_client_cert"})
        cert = self.path(d, "cert_file", p, required=True, must_exist=True)
        key = self.path(d, "key_file", p, required=True, must_exist=True)
        ca = self.path(d, "ca_file", p, must_exist=True)
        require = self.boolean(d, "require_client_cert", p, False)
        if require and ca is None:
            self.err(f"{p}.ca_file", "is required when require_client_cert is true")
        if cert is None or key is None:
            return None
        return TlsConfig(cert, key, ca, require)

    # -- values -------------------------------------------------------------------------
    def unknown(self, prefix: str, d: dict[str, Any], allowed: set[str]) -> None:
        for key in d:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                self.err(where, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    def table(self, d: dict[str, Any], key: str) -> dict[str, Any]:
        value = d.get(key, {})
        if not isinstance(value, dict):
            self.err(key, "must be a table")
            return {}
        return value

    def string(self, d: dict[str, Any], key: str, p: str, *, required: bool) -> str | None:
        if key not in d:
            if required:
                self.err(f"{p}.{key}", "is required")
            return None
        value = d[key]
        if not isinstance(value, str) or not value.strip():
            self.err(f"{p}.{key}", "must be a non-empty string")
            return None
        return value

    def check_ae(self, key: str, value: str) -> bool:
        if not _AE_RE.match(value) or not value.strip():
            self.err(key, "must be an AE title: 1-16 printable ASCII characters, no backslash")
            return False
        return True

    def ae(self, d: dict[str, Any], key: str, p: str, default: str) -> str:
        value = d.get(key, default)
        if not isinstance(value, str) or not self.check_ae(f"{p}.{key}", value):
            if not isinstance(value, str):
                self.err(f"{p}.{key}", "must be an AE title string")
            return default
        return value.strip()

    def host(self, d: dict[str, Any], key: str, p: str, *, required: bool) -> str | None:
        value = self.string(d, key, p, required=required)
        if value is None:
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", value):
                self.err(f"{p}.{key}", f"must be an IP address or host name; got {value!r}")
                return None
        return value

    def integer(
        self, d: dict[str, Any], key: str, p: str, default: int | None, lo: int, hi: int
    ) -> int:
        if key not in d:
            if default is None:
                self.err(f"{p}.{key}", f"is required (an integer from {lo} to {hi})")
                return lo
            return default
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.err(f"{p}.{key}", f"must be an integer from {lo} to {hi}; got {value!r}")
            return default if default is not None else lo
        return value

    def number(
        self, d: dict[str, Any], key: str, p: str, default: float, lo: float, hi: float
    ) -> float:
        value = d.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.err(f"{p}.{key}", f"must be a number from {lo:g} to {hi:g}; got {value!r}")
            return default
        return float(value)

    def boolean(self, d: dict[str, Any], key: str, p: str, default: bool) -> bool:
        value = d.get(key, default)
        if not isinstance(value, bool):
            self.err(f"{p}.{key}", f"must be true or false; got {value!r}")
            return default
        return value

    def path(
        self,
        d: dict[str, Any],
        key: str,
        p: str,
        *,
        required: bool = False,
        must_exist: bool = False,
    ) -> Path | None:
        value = self.string(d, key, p, required=required)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.is_file():
            self.err(f"{p}.{key}", f"file does not exist: {path}")
        return path
