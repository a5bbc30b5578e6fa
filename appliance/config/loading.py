"""Reading the configuration: TOML file plus environment -> :class:`AppConfig`.

The file's tables become the sections' constructor arguments: here unknown keys are
found, relative paths resolved against the file's folder and lists of tables taken
apart; the sections check the values themselves. Every problem of every section is
collected and reported at once, each with its dotted key. Environment variables
override the file: ``APPLIANCE__<SECTION>__<KEY>=value`` (double underscores), e.g.
``APPLIANCE__DICOM__PORT=11113``; values are read as TOML values, falling back to a
plain string.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.config.app import AppConfig
from appliance.config.federation import FederationConfig
from appliance.config.reader import ConfigReader, apply_env, init_fields
from appliance.config.sections import (
    CallerConfig,
    CasesConfig,
    DestinationConfig,
    DicomConfig,
    HttpConfig,
    InferenceConfig,
    LimitsConfig,
    LoggingConfig,
    ModelsConfig,
    OutboxConfig,
    OutputConfig,
    RetentionConfig,
    StorageConfig,
    TlsConfig,
)
from appliance.errors import ConfigError, ConfigIssue
from appliance.routing import DEFAULT_RULES, DEFAULT_STUDY_WAIT_MINUTES, RoutingRule
from models.errors import SpecError
from models.tasks import get_task

ENV_PREFIX = "APPLIANCE__"
CONFIG_ENV = "APPLIANCE_CONFIG"


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
    """The configuration from parsed TOML (``raw``) and ``environ``'s overrides;
    relative paths are relative to ``base_dir`` (default: the working directory)."""
    data = apply_env(dict(raw), environ or {}, ENV_PREFIX)
    reader = ConfigReader(data, base_dir=base_dir or Path.cwd())
    config = _app(reader)
    reader.raise_issues(source)
    assert config is not None  # no issues: every section was built
    return config


def _app(r: ConfigReader) -> AppConfig | None:
    r.unknown([f for f in init_fields(AppConfig) if f != "study_wait_minutes"])
    destinations = [d for t in r.tables("destinations") if (d := _destination(t)) is not None]
    # a section with issues (recorded) stands in as its default, so that what involves
    # several sections is still checked and every problem is reported at once
    return r.build(
        AppConfig,
        {
            "dicom": _dicom(r.table("dicom")) or DicomConfig(),
            "storage": r.table("storage").section(StorageConfig, paths=["root"]) or StorageConfig(),
            "destinations": tuple(destinations),
            "outbox": r.table("outbox").section(OutboxConfig) or OutboxConfig(),
            "logging": r.table("logging").section(LoggingConfig) or LoggingConfig(),
            "routing": _routing(r.table("routing")),
            "study_wait_minutes": _study_wait_minutes(r.table("routing")),
            "models": _models(r.table("models")) or ModelsConfig(),
            "inference": r.table("inference").section(InferenceConfig) or InferenceConfig(),
            "output": _output(r.table("output")),
            "cases": r.table("cases").section(CasesConfig) or CasesConfig(),
            "federation": _federation(r.table("federation")) or FederationConfig(),
            "retention": r.table("retention").section(RetentionConfig) or RetentionConfig(),
            "http": r.table("http").section(HttpConfig) or HttpConfig(),
            "limits": r.table("limits").section(LimitsConfig) or LimitsConfig(),
        },
    )


def _tls(r: ConfigReader, name: str) -> TlsConfig | None:
    value = r.data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        r.err(name, "must be a table with cert_file, key_file and optional ca_file")
        return None
    return r.table(name).section(
        TlsConfig, relative=True, paths=["cert_file", "key_file", "ca_file"]
    )


def _dicom(r: ConfigReader) -> DicomConfig | None:
    callers: list[CallerConfig] = []
    raw = r.data.get("allowed_callers", [])
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            key = r.key(f"allowed_callers[{i}]")
            caller: CallerConfig | None = None
            if isinstance(item, str):
                caller = r.build(CallerConfig, {"ae_title": item}, at=key)
            elif isinstance(item, dict):
                caller = r.child(item, key).section(CallerConfig, relative=True)
            else:
                r.err(
                    f"allowed_callers[{i}]",
                    "must be an AE title string or a table {ae_title, host}",
                )
            if caller is not None:
                callers.append(caller)
        raw = tuple(callers)
    return r.section(DicomConfig, allowed_callers=raw, tls=_tls(r, "tls"))


def _destination(r: ConfigReader) -> DestinationConfig | None:
    return r.section(DestinationConfig, relative=True, tls=_tls(r, "tls"))


def _output(r: ConfigReader) -> OutputConfig:
    output = r.section(OutputConfig)
    if output is None:  # stand in with the destinations, so that their names are checked
        try:
            output = OutputConfig(destinations=r.data.get("destinations"))
        except ConfigError:
            output = OutputConfig()
    return output


def _models(r: ConfigReader) -> ModelsConfig | None:
    if r.data.get("shipped") == "":
        return r.section(ModelsConfig, paths=["root"], shipped=None)  # explicitly: none
    return r.section(ModelsConfig, paths=["root", "shipped"])


def _federation(r: ConfigReader) -> FederationConfig | None:
    # a [federation] table in a file must say how the SuperLink is trusted; the default
    # object (no table: the appliance does not federate) need not
    if r.data and r.data.get("insecure") is not True and "tls_ca_file" not in r.data:
        r.err("tls_ca_file", "is required unless federation.insecure = true")
    keys = r.data.get("authorized_keys")
    values: dict[str, Any] = {}
    if isinstance(keys, list):
        values["authorized_keys"] = [r.resolve(k) for k in keys]
    paths = [
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "auth_private_key",
        "auth_public_key",
        "state_dir",
    ]
    return r.section(FederationConfig, paths=paths, **values)


def _routing(r: ConfigReader) -> tuple[RoutingRule, ...]:
    """``[[routing.rules]]`` (:class:`RoutingRule` does not check itself: here it is)."""
    r.unknown(["rules", "study_wait_minutes"])
    if "rules" not in r.data:
        return DEFAULT_RULES
    if not isinstance(r.data["rules"], list):
        r.err("rules", f"must be an array of tables ([[{r.key('rules')}]])")
        return DEFAULT_RULES
    rules = [rule for t in r.tables("rules") if (rule := _routing_rule(t)) is not None]
    return tuple(rules)


def _routing_rule(r: ConfigReader) -> RoutingRule | None:
    r.unknown(init_fields(RoutingRule))
    before = len(r.issues)
    task = r.name("task", "must be a task name such as liver_ct or glioma_mr", required=True)
    modality = r.string("modality", required=True)
    if modality is not None and modality.upper() not in ("CT", "MR"):
        r.err("modality", f"must be CT or MR; got {modality!r}")
    pattern = r.data.get("series_description")
    if pattern is not None:
        if not isinstance(pattern, str):
            r.err("series_description", "must be a regular expression string")
        else:
            try:
                re.compile(pattern)
            except re.error as exc:
                r.err("series_description", f"is not a valid regular expression: {exc}")
    lists = {
        k: r.string_list(k)
        for k in (
            "body_parts",
            "image_type_includes",
            "image_type_excludes",
            "scanning_sequence_includes",
        )
    }
    contrast = r.data.get("contrast")
    if contrast is not None and not isinstance(contrast, bool):
        r.err("contrast", f"must be true or false; got {contrast!r}")
    ranges = {
        k: _ms_range(r, k) for k in ("echo_time_ms", "repetition_time_ms", "inversion_time_ms")
    }
    min_slices = r.integer("min_slices", 1, 100000, 1)
    name = r.data.get("name", "")
    if not isinstance(name, str):
        r.err("name", "must be a string")
        name = ""
    role = _role(r, task)
    if len(r.issues) > before or task is None or modality is None:
        return None
    excludes = lists["image_type_excludes"]
    return RoutingRule(
        task=task,
        modality=modality.upper(),
        body_parts=lists["body_parts"] or (),
        series_description=pattern,
        image_type_includes=lists["image_type_includes"] or (),
        image_type_excludes=(excludes or ()) if "image_type_excludes" in r.data else ("LOCALIZER",),
        min_slices=min_slices,
        name=name,
        role=role,
        contrast=contrast,
        scanning_sequence_includes=tuple(
            v.strip().upper() for v in lists["scanning_sequence_includes"] or ()
        ),
        echo_time_ms=ranges["echo_time_ms"],
        repetition_time_ms=ranges["repetition_time_ms"],
        inversion_time_ms=ranges["inversion_time_ms"],
    )


def _ms_range(r: ConfigReader, key: str) -> tuple[float, float] | None:
    """An inclusive range of milliseconds, ``[low, high]`` with 0 <= low <= high."""
    value = r.data.get(key)
    if value is None:
        return None
    numbers = (
        [float(v) for v in value if not isinstance(v, bool) and isinstance(v, int | float)]
        if isinstance(value, list | tuple)
        else []
    )
    if len(numbers) != 2 or len(value) != 2 or not 0 <= numbers[0] <= numbers[1] < math.inf:
        r.err(key, f"must be [low, high] with 0 <= low <= high (milliseconds); got {value!r}")
        return None
    return numbers[0], numbers[1]


def _role(r: ConfigReader, task: str | None) -> str | None:
    """``role``: required for a task of several channels (one of their names); for a
    single-channel task absent or its one channel (then kept as None)."""
    role = r.data.get("role")
    if role is not None and not isinstance(role, str):
        r.err("role", "must be a string naming one of the task's channels")
        return None
    try:
        channels = [c.name for c in get_task(task or "").channels]
    except SpecError:  # an unknown task: the role cannot be checked here
        return role
    allowed = ", ".join(channels)
    if len(channels) > 1:
        if role is None:
            r.err("role", f"is required for task {task} (one of: {allowed})")
        elif role not in channels:
            r.err("role", f"{role!r} is not a role of task {task} (one of: {allowed})")
        return role
    if role is not None and role not in channels:
        r.err("role", f"{role!r} is not a role of task {task} (it has one: {allowed})")
    return None


def _study_wait_minutes(r: ConfigReader) -> float:
    """``[routing] study_wait_minutes``: how long a study waits for its missing roles."""
    value = r.data.get("study_wait_minutes", DEFAULT_STUDY_WAIT_MINUTES)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        r.err("study_wait_minutes", f"must be a number of minutes > 0; got {value!r}")
        return DEFAULT_STUDY_WAIT_MINUTES
    return float(value)
