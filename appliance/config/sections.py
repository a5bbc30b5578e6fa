"""The sections of the configuration: frozen dataclasses that check themselves.

Each section checks its own values in ``__post_init__`` (with the one
:class:`~appliance.config.reader.ConfigReader`) and raises :class:`ConfigError` naming
every bad key, so a section built in code is as valid as one read from TOML. Top-level
sections name their keys in full (``dicom.port``); the items of lists and nested tables
(:class:`TlsConfig`, :class:`CallerConfig`, :class:`DestinationConfig`) name them
relative to the item (``port``), and whoever reads the item puts it in place
(``destinations[0].port``). Accepted values are normalised: numbers become floats, AE
titles are stripped, choices take their canonical case, strings become paths.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config.reader import ConfigReader
from dicom_bridge.limits import MIB, SizeLimits
from models.tasks import MAX_WORKING_VOXELS
from models.threads import MAX_THREADS, usable_cores

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
MODEL_DEVICES = ("auto", "cpu", "cuda")
SEG_TYPES = ("BINARY", "LABELMAP")
WEB_AUTHS = ("none", "basic", "bearer")


class OutputKind(StrEnum):
    """What a destination receives of a job's results (``destinations[i].outputs``)."""

    SEG = "seg"  # the DICOM Segmentation
    SR = "sr"  # the TID 1500 measurement report
    RTSTRUCT = "rtstruct"  # an RT Structure Set: the segments as planar contours
    SC_OVERLAY = "sc_overlay"  # a Secondary Capture series: outlines burned into the slices
    NOTICE = "notice"  # a "not processed" notice when a routed series is rejected or fails


#: What a destination receives when its ``outputs`` are not configured.
DEFAULT_OUTPUTS = (OutputKind.SEG, OutputKind.SR)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS of a DICOM association (``dicom.tls``, ``destinations[i].tls``): the files
    must exist; ``require_client_cert`` needs ``ca_file``."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        r = ConfigReader.of(self)
        r.path("cert_file", required=True, must_exist=True)
        r.path("key_file", required=True, must_exist=True)
        ca = r.path("ca_file", must_exist=True)
        require = r.boolean("require_client_cert")
        r.check(
            not require or ca is not None, "ca_file", "is required when require_client_cert is true"
        )
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class CallerConfig:
    """A caller allowed to store (``dicom.allowed_callers[i]``): its AE title, and the
    host it must come from (any when ``None``)."""

    ae_title: str
    host: str | None = None

    def __post_init__(self) -> None:
        r = ConfigReader.of(self)
        r.ae_title("ae_title")
        r.host("host")
        r.raise_issues()


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
    #: seconds from accept to a complete A-ASSOCIATE-RQ (TLS handshake included)
    first_pdu_timeout_seconds: float = 30.0
    #: concurrent connections from one peer address; more are closed at once
    max_connections_per_peer: int = 8
    #: seconds an established association may stay silent before it is closed
    network_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "dicom")
        r.ae_title("ae_title")
        r.integer("port", 1, 65535)
        r.host("bind", required=True)
        r.integer("max_associations", 1, 1000)
        r.integer("max_pdu_size", 4096, 2**24)
        r.instances(
            "allowed_callers",
            CallerConfig,
            "must be a list of AE titles or {ae_title, host} tables",
        )
        r.number("series_quiet_seconds", 0.1, 86400.0)
        r.instance("tls", TlsConfig, optional=True)
        r.number("first_pdu_timeout_seconds", 1.0, 600.0)
        r.integer("max_connections_per_peer", 1, 10000)
        r.number("network_timeout_seconds", 1.0, 3600.0)
        r.raise_issues()


_LIMIT_DEFAULTS = SizeLimits()


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Sizes bounded before anything is allocated for them (``[limits]``); each refusal
    names its key. ``max_instance_mb`` (default 512): one C-STORE's dataset as it
    arrives (over it, the association is aborted) and a deflated one once inflated
    (counted in small chunks first; ``0xA701``). ``max_frame_pixels`` (default 4096 x
    4096): Rows x Columns of a frame, in the header (``0xA701``) and in each compressed
    frame's codestream before it is decoded (the series is rejected ``too_large``).
    ``max_series_voxels`` (default 512 x 512 x 2048): the voxels of one instance
    (``0xA701``) and of a whole series before it is decoded. ``max_working_voxels``
    (default 2^27): the grid one job resamples a series to, per channel, estimated from
    the series' extent and the model's spacing before it is allocated (the job fails with
    ``input_too_large``).
    """

    max_instance_mb: int = _LIMIT_DEFAULTS.max_instance_bytes // MIB
    max_frame_pixels: int = _LIMIT_DEFAULTS.max_frame_pixels
    max_series_voxels: int = _LIMIT_DEFAULTS.max_series_voxels
    max_working_voxels: int = MAX_WORKING_VOXELS

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "limits")
        r.integer("max_instance_mb", 1, 64 * 1024)
        r.integer("max_frame_pixels", 64 * 64, 2**31)
        r.integer("max_series_voxels", 64 * 64 * 2, 2**40)
        r.integer("max_working_voxels", 64**3, 2**40)
        r.raise_issues()

    @property
    def sizes(self) -> SizeLimits:
        """The limits ``dicom_bridge`` enforces (listener and volume loading)."""
        return SizeLimits(
            max_instance_bytes=self.max_instance_mb * MIB,
            max_frame_pixels=self.max_frame_pixels,
            max_series_voxels=self.max_series_voxels,
        )


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

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "storage")
        r.path("root", required=True)
        r.boolean("fsync")
        r.integer("min_free_mb", 0, 10**8)
        r.raise_issues()

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


class DestinationKind(StrEnum):
    """How a destination is reached (``destinations[i].kind``)."""

    DIMSE = "dimse"  # C-STORE to an AE title at host:port
    DICOMWEB = "dicomweb"  # STOW-RS to a DICOMweb service's URL


#: Keys of a DICOMweb destination only, and of a DIMSE destination only.
_WEB_KEYS = ("url", "auth", "username", "password_file", "token_file", "ca_file")
_DIMSE_KEYS = ("ae_title", "host", "port", "calling_ae", "tls")


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """Where results can be sent (``[[destinations]]``). ``outputs``: what it receives of
    each job, any of ``seg``, ``sr``, ``rtstruct``, ``sc_overlay`` and ``notice``
    (:class:`OutputKind`; default ``["seg", "sr"]``). ``seg_all_frames``: its SEG keeps
    the empty frames (some viewers misplace a SEG whose empty frames were omitted); it
    then gets a SEG of its own, and an SR that references that SEG.

    ``kind``: ``dimse`` (default: C-STORE to ``ae_title`` at ``host``:``port``, optionally
    over ``tls``) or ``dicomweb`` (STOW-RS to ``url``; ``auth`` ``none``, ``basic`` with
    ``username`` and ``password_file``, or ``bearer`` with ``token_file``; ``ca_file``
    verifies an HTTPS server, default the system's CAs). Both go through the same outbox."""

    name: str
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    calling_ae: str | None = None  # default: dicom.ae_title
    timeout_seconds: float = 30.0
    tls: TlsConfig | None = None
    outputs: tuple[OutputKind, ...] = DEFAULT_OUTPUTS
    seg_all_frames: bool = False
    kind: DestinationKind = DestinationKind.DIMSE
    url: str | None = None
    auth: str = "none"
    username: str | None = None
    password_file: Path | None = None
    token_file: Path | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        r = ConfigReader.of(self)
        r.name("name", required=True)
        kind = r.enum("kind", DestinationKind, DestinationKind.DIMSE)
        r.number("timeout_seconds", 0.5, 3600.0)
        r.enum_list("outputs", OutputKind, DEFAULT_OUTPUTS)
        r.boolean("seg_all_frames")
        if kind is DestinationKind.DIMSE:
            for key in _WEB_KEYS:
                r.check(r.data.get(key) in (None, "none"), key, 'is for kind = "dicomweb"')
            r.ae_title("ae_title")
            r.host("host", required=True)
            r.integer("port", 1, 65535)
            r.ae_title("calling_ae", required=False)
            r.instance("tls", TlsConfig, optional=True)
        else:
            for key in _DIMSE_KEYS:
                r.check(r.data.get(key) is None, key, 'is for kind = "dimse"')
            url = r.string("url", required=True)
            if url is not None:
                parts = urlsplit(url)
                r.check(
                    parts.scheme in ("http", "https") and bool(parts.hostname),
                    "url",
                    f"must be http(s)://host[:port][/path]; got {url!r}",
                )
                r.check(
                    not (parts.username or parts.password),
                    "url",
                    "must not hold credentials (use auth, username, password_file)",
                )
            auth = r.choice("auth", WEB_AUTHS, "none", case=str.lower)
            username = r.string("username")
            password = r.path("password_file", must_exist=True)
            token = r.path("token_file", must_exist=True)
            r.path("ca_file", must_exist=True)
            if auth == "basic":
                r.check(username is not None, "username", 'is required for auth = "basic"')
                r.check(password is not None, "password_file", 'is required for auth = "basic"')
            if auth == "bearer":
                r.check(token is not None, "token_file", 'is required for auth = "bearer"')
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_attempts: int = 8
    backoff_initial_seconds: float = 5.0
    backoff_max_seconds: float = 600.0
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "outbox")
        r.integer("max_attempts", 1, 1000)
        before = len(r.issues)
        initial = r.number("backoff_initial_seconds", 0.01, 86400.0)
        maximum = r.number("backoff_max_seconds", 0.01, 7 * 86400.0)
        if len(r.issues) == before:
            r.check(
                maximum >= initial,
                "backoff_max_seconds",
                "must be at least backoff_initial_seconds",
            )
        r.number("poll_seconds", 0.05, 60.0)
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """``level``; ``format``: ``text`` (default) or ``json`` (one JSON object per line,
    for log collectors)."""

    level: str = "INFO"
    format: str = "text"

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "logging")
        r.choice("level", LOG_LEVELS, "INFO", case=str.upper)
        r.choice("format", LOG_FORMATS, "text", case=str.lower)
        r.raise_issues()


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
    ``appliance storage purge`` does). Days are numbers or ``"forever"`` (``None``).
    """

    source_days: float | None = 30.0  # None: forever
    results_days: float | None = None
    excluded_cases_days: float | None = None
    interval_hours: float = 6.0

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "retention")
        r.days("source_days")
        r.days("results_days")
        r.days("excluded_cases_days")
        r.number("interval_hours", 0.0, 24 * 365)
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The health and metrics endpoint (``/healthz``, ``/metrics``): off unless
    ``enabled``; bound to loopback unless ``bind`` says otherwise."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8080

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "http")
        r.boolean("enabled")
        r.host("bind", required=True)
        r.integer("port", 1, 65535)
        r.raise_issues()


def shipped_bundles_dir() -> Path:
    """``models/bundles`` of the installed ``models`` package (source checkout or wheel),
    found without importing it (no torch at config time)."""
    spec = importlib.util.find_spec("models")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    base = Path(locations[0]) if locations else Path(__file__).resolve().parents[2] / "models"
    return base / "bundles"


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

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "models")
        r.path("root")
        r.path("shipped")
        r.choice("device", MODEL_DEVICES, "auto", case=str.lower)
        r.number("gate_margin", 0.0, 1.0)
        r.integer("gate_min_cases", 1, 10_000)
        r.raise_issues()

    def registry_root(self, storage: StorageConfig) -> Path:
        return self.root if self.root is not None else storage.root / "models"


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """How inference uses the CPU, decided once per process. ``threads``: torch's
    intra-op threads (1 to 1024), set when ``serve`` or a command that segments starts;
    default: the cores this process may use (its CPU affinity). OpenMP waits passively
    (``OMP_WAIT_POLICY=PASSIVE``, set by the ``appliance`` entry point unless the
    environment sets it), so threads that wait for a busy core do not spin."""

    threads: int = field(default_factory=usable_cores)

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "inference")
        r.integer("threads", 1, MAX_THREADS)
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """What the pipeline writes and where it goes.

    ``destinations``: names of ``[[destinations]]`` that receive every SEG and SR;
    ``None`` (not configured) means the first destination, or none when there is none
    (results are then only stored under ``<storage.root>/results``). ``research_only``
    (default true): outputs say RESEARCH USE ONLY - NOT FOR DIAGNOSIS until the site
    configures otherwise. ``seg_type``: BINARY (default, empty frames omitted) or LABELMAP.
    That the destinations exist is checked by :class:`~appliance.config.AppConfig`.
    """

    destinations: tuple[str, ...] | None = None
    research_only: bool = True
    seg_type: str = "BINARY"

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "output")
        names = self.destinations
        if names is not None:
            if isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
                object.__setattr__(self, "destinations", tuple(dict.fromkeys(names)))
            else:
                r.err("destinations", "must be a list of destination names")
        r.boolean("research_only")
        r.choice("seg_type", SEG_TYPES, "BINARY", case=str.upper)
        r.raise_issues()


@dataclass(frozen=True, slots=True)
class CasesConfig:
    """Annotated cases (``appliance.cases``; the split key: ``appliance.cases.split``).

    ``held_out_fraction`` (0 to 0.9, default 0.2): the share of studies whose cases are
    held out, never trained on, for the validation gate. ``split_key``: the site's secret
    key of the keyed hash (HMAC-SHA256 of the Study Instance UID) that decides the split;
    at least 16 characters. When not configured, one is generated on first use and kept
    in the store (``appliance cases list`` does not show it), so the split stays fixed.

    Trust (``appliance.cases.trust``): ``annotation_callers`` (default empty: none) are
    the calling AE titles whose SEGs received over DICOM may become cases; a SEG from any
    other caller is stored but refused as a case (``caller_not_trusted``). A case from a
    caller not also in ``trusted_callers`` waits for review (``pending``). Plausibility
    bounds that send a case to review whoever sent it: ``max_label_fraction`` (default
    0.5) of the volume labelled; ``max_outside_body_fraction`` (default 0.5) of the
    labelled voxels of a CT below ``outside_body_hu`` (default -500 HU: air);
    ``prediction_ratio`` (default [0.2, 5.0]): the labelled volume against the active
    model's prediction for the series, where there is one. ``appliance cases import``
    is an admin's and needs no trust (its cases are still checked for plausibility).
    """

    held_out_fraction: float = 0.2
    split_key: str | None = None
    annotation_callers: tuple[str, ...] = ()
    trusted_callers: tuple[str, ...] = ()
    max_label_fraction: float = 0.5
    max_outside_body_fraction: float = 0.5
    outside_body_hu: float = -500.0
    prediction_ratio: tuple[float, float] = (0.2, 5.0)

    def __post_init__(self) -> None:
        r = ConfigReader.of(self, "cases")
        r.number("held_out_fraction", 0.0, 0.9)
        key = self.split_key
        if key is not None:
            if isinstance(key, str) and len(key.strip()) >= 16:
                object.__setattr__(self, "split_key", key.strip())
            else:
                r.err("split_key", "must be a secret string of at least 16 characters")
        for name in ("annotation_callers", "trusted_callers"):
            titles = r.string_list(name) or ()
            stripped = tuple(dict.fromkeys(t.strip() for t in titles))
            if any(not t or len(t) > 16 for t in stripped):
                r.err(name, "must be a list of AE titles (1 to 16 characters)")
            else:
                object.__setattr__(self, name, stripped)
        untrusted = [t for t in self.trusted_callers if t not in self.annotation_callers]
        if untrusted:
            r.err(
                "trusted_callers",
                f"{', '.join(untrusted)} must also be in cases.annotation_callers",
            )
        r.number("max_label_fraction", 0.01, 1.0, 0.5)
        r.number("max_outside_body_fraction", 0.01, 1.0, 0.5)
        r.number("outside_body_hu", -1024.0, 0.0, -500.0)
        ratio = self.prediction_ratio
        if (
            isinstance(ratio, list | tuple)
            and len(ratio) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in ratio)
            and 0 < ratio[0] <= 1 <= ratio[1]
        ):
            object.__setattr__(self, "prediction_ratio", (float(ratio[0]), float(ratio[1])))
        else:
            r.err("prediction_ratio", "must be [low, high] with 0 < low <= 1 <= high")
        r.raise_issues()
