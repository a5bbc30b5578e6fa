"""appliance.config.loading: TOML and environment -> AppConfig: defaults, every problem
named by its dotted key and collected at once, environment overrides, loading files."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance.config import (
    CONFIG_ENV,
    AppConfig,
    CallerConfig,
    DestinationKind,
    DicomConfig,
    OutboxConfig,
    OutputKind,
    StorageConfig,
    load_config,
    parse_config,
)
from appliance.errors import ConfigError, NotFoundError

MINIMAL_TOML = """\
[dicom]
ae_title = "SEGAPPLIANCE"
port = 11112
bind = "0.0.0.0"
allowed_callers = ["PACS", { ae_title = "VIEWER", host = "10.0.0.7" }]
series_quiet_seconds = 30

[storage]
root = "/var/lib/appliance"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.5"
port = 104
"""


def issues_of(raw: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    """Parse ``raw``, expect a ConfigError, return {dotted key: message}."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw, **kwargs)
    return {issue.key: issue.message for issue in info.value.issues}


def one_issue(raw: dict[str, Any], key: str, **kwargs: Any) -> str:
    found = issues_of(raw, **kwargs)
    assert key in found, f"expected an issue for {key}; got {found}"
    return found[key]


def write(tmp_path: Path, text: str, name: str = "appliance.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- the minimal file and defaults ---------------------------------------------------------


def test_minimal_toml_parses(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL_TOML), environ={})
    assert cfg.dicom.ae_title == "SEGAPPLIANCE"
    assert cfg.dicom.port == 11112
    assert cfg.dicom.bind == "0.0.0.0"
    assert cfg.dicom.series_quiet_seconds == 30.0
    assert isinstance(cfg.dicom.series_quiet_seconds, float)
    assert cfg.dicom.allowed_callers == (
        CallerConfig("PACS"),
        CallerConfig("VIEWER", "10.0.0.7"),
    )
    assert cfg.storage.root == Path("/var/lib/appliance")
    assert cfg.storage.database == Path("/var/lib/appliance/appliance.sqlite3")
    assert cfg.storage.spool_dir == Path("/var/lib/appliance/spool")
    assert len(cfg.destinations) == 1
    dest = cfg.destinations[0]
    assert (dest.name, dest.ae_title, dest.host, dest.port) == ("pacs", "PACS", "10.0.0.5", 104)
    assert dest.calling_ae is None
    assert cfg.destination("pacs") is dest


def test_empty_config_gives_defaults() -> None:
    cfg = parse_config({})
    assert cfg == AppConfig()
    assert cfg.dicom == DicomConfig()
    assert cfg.dicom.ae_title == "SEGAPPLIANCE"
    assert cfg.dicom.port == 11112
    assert cfg.dicom.allowed_callers == ()
    assert cfg.dicom.tls is None
    assert cfg.storage == StorageConfig()
    assert cfg.destinations == ()
    assert cfg.outbox == OutboxConfig()
    assert cfg.logging.level == "INFO"


def test_config_is_frozen() -> None:
    cfg = parse_config({})
    with pytest.raises(AttributeError):
        cfg.dicom.port = 1  # type: ignore[misc]


def test_unknown_destination_lookup() -> None:
    cfg = parse_config(tomllib.loads(MINIMAL_TOML))
    with pytest.raises(NotFoundError, match="no destination named 'nope'"):
        cfg.destination("nope")


def test_allowed_callers_strings_and_tables() -> None:
    cfg = parse_config(
        {
            "dicom": {
                "allowed_callers": [
                    "A",
                    {"ae_title": "B"},
                    {"ae_title": "C", "host": "pacs.example.org"},
                ]
            }
        }
    )
    assert cfg.dicom.allowed_callers == (
        CallerConfig("A", None),
        CallerConfig("B", None),
        CallerConfig("C", "pacs.example.org"),
    )


def test_relative_storage_root_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[storage]\nroot = "data"\n')
    assert load_config(path, environ={}).storage.root == tmp_path / "data"


def test_logging_level_is_case_insensitive() -> None:
    assert parse_config({"logging": {"level": "debug"}}).logging.level == "DEBUG"


# -- validation: each bad value names its key and what is allowed -----------------------------


@pytest.mark.parametrize("port", [0, 70000, "x", -1, True, 1.5])
def test_bad_dicom_port(port: Any) -> None:
    message = one_issue({"dicom": {"port": port}}, "dicom.port")
    assert "1 to 65535" in message


@pytest.mark.parametrize("port", [1, 104, 65535])
def test_good_dicom_port(port: int) -> None:
    assert parse_config({"dicom": {"port": port}}).dicom.port == port


@pytest.mark.parametrize("title", ["A" * 17, "BAD\\AE", "", "   ", "caf\u00e9", "TAB\tAE"])
def test_bad_ae_title(title: str) -> None:
    message = one_issue({"dicom": {"ae_title": title}}, "dicom.ae_title")
    assert "16" in message and "backslash" in message


def test_ae_title_of_sixteen_characters_is_fine() -> None:
    assert parse_config({"dicom": {"ae_title": "A" * 16}}).dicom.ae_title == "A" * 16


def test_ae_title_not_a_string() -> None:
    assert "dicom.ae_title" in issues_of({"dicom": {"ae_title": 5}})


def test_bad_allowed_callers() -> None:
    found = issues_of(
        {
            "dicom": {
                "allowed_callers": [
                    "WAY_TOO_LONG_AE_TITLE",
                    {"host": "1.2.3.4"},
                    {"ae_title": "OK", "host": "bad host!"},
                    {"ae_title": "OK", "hots": "x"},
                    42,
                ]
            }
        }
    )
    assert "dicom.allowed_callers[0]" in found
    assert found["dicom.allowed_callers[1].ae_title"] == "is required"
    assert "dicom.allowed_callers[2].host" in found
    assert "unknown key" in found["dicom.allowed_callers[3].hots"]
    assert "dicom.allowed_callers[4]" in found
    assert "must be a list" in one_issue(
        {"dicom": {"allowed_callers": "PACS"}}, "dicom.allowed_callers"
    )


@pytest.mark.parametrize("section", ["dicom", "storage", "outbox", "logging", "retention", "http"])
def test_unknown_key_in_each_section(section: str) -> None:
    message = one_issue({section: {"colour": "blue"}}, f"{section}.colour")
    assert "unknown key" in message and "allowed here" in message


def test_unknown_key_in_destination_and_tls(tmp_path: Path) -> None:
    cert = write(tmp_path, "x", "cert.pem")
    found = issues_of(
        {
            "destinations": [{"name": "p", "ae_title": "P", "host": "h", "port": 104, "prot": 1}],
            "dicom": {"tls": {"cert_file": str(cert), "key_file": str(cert), "cipher": "x"}},
        }
    )
    assert "unknown key" in found["destinations[0].prot"]
    assert "unknown key" in found["dicom.tls.cipher"]


def test_top_level_typo_is_reported() -> None:
    message = one_issue({"destination": [{"name": "pacs"}]}, "destination")
    assert "unknown key" in message
    assert "destinations" in message  # says what is allowed


def test_section_that_is_not_a_table() -> None:
    assert issues_of({"dicom": 5})["dicom"] == "must be a table"
    assert "array of tables" in one_issue({"destinations": {"name": "x"}}, "destinations")


def dest(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "pacs", "ae_title": "PACS", "host": "10.0.0.5", "port": 104}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_duplicate_destination_names() -> None:
    message = one_issue({"destinations": [dest(), dest(host="10.0.0.6")]}, "destinations")
    assert "'pacs'" in message and "more than once" in message


def test_destination_missing_host_and_port() -> None:
    found = issues_of({"destinations": [dest(host=None, port=None)]})
    assert found["destinations[0].host"] == "is required"
    assert "destinations[0].port" in found and "1 to 65535" in found["destinations[0].port"]


@pytest.mark.parametrize("host", ["bad host", "-leading-dash", "under_score", "", "a/b"])
def test_destination_bad_host(host: str) -> None:
    assert "destinations[0].host" in issues_of({"destinations": [dest(host=host)]})


@pytest.mark.parametrize("host", ["pacs", "pacs.example.org", "10.0.0.5", "::1", "fe80::1"])
def test_destination_good_host(host: str) -> None:
    assert parse_config({"destinations": [dest(host=host)]}).destinations[0].host == host


def test_destination_bad_fields() -> None:
    found = issues_of(
        {
            "destinations": [
                dest(
                    name="has space",
                    ae_title="X\\Y",
                    port=0,
                    calling_ae="C" * 17,
                    timeout_seconds=0,
                )
            ]
        }
    )
    for key in ("name", "ae_title", "port", "calling_ae", "timeout_seconds"):
        assert f"destinations[0].{key}" in found, key


def test_destination_outputs() -> None:
    config = parse_config({"destinations": [dest(), dest(name="rt", outputs=["rtstruct", "seg"])]})
    assert config.destinations[0].outputs == (OutputKind.SEG, OutputKind.SR)  # the default
    assert config.destinations[1].outputs == (OutputKind.RTSTRUCT, OutputKind.SEG)
    assert parse_config({"destinations": [dest(outputs=["sr", "sr"])]}).destinations[0].outputs == (
        OutputKind.SR,
    )
    for bad, says in (
        (["seg", "pdf"], "'pdf' is not one of: seg, sr, rtstruct"),
        ([], "must be a non-empty list of: seg, sr, rtstruct"),
        ("seg", "must be a non-empty list of: seg, sr, rtstruct"),
    ):
        assert says in issues_of({"destinations": [dest(outputs=bad)]})["destinations[0].outputs"]


def test_dicomweb_destination(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("pw")
    web = {
        "name": "web",
        "kind": "dicomweb",
        "url": "https://pacs.example.org/dicom-web",
        "auth": "basic",
        "username": "appliance",
        "password_file": str(secret),
    }
    (parsed,) = parse_config({"destinations": [web]}).destinations
    assert parsed.kind is DestinationKind.DICOMWEB and parsed.password_file == secret
    assert parsed.ae_title is None and parsed.port is None
    # a DIMSE destination is as before
    assert parse_config({"destinations": [dest()]}).destinations[0].kind is DestinationKind.DIMSE
    for change, key, says in (
        ({"url": None}, "url", "is required"),
        ({"url": "ftp://x/y"}, "url", "must be http(s)://host"),
        ({"url": "https://u:p@pacs/dicom-web"}, "url", "must not hold credentials"),
        ({"username": None}, "username", 'is required for auth = "basic"'),
        ({"password_file": str(tmp_path / "missing")}, "password_file", ""),
        ({"auth": "bearer"}, "token_file", 'is required for auth = "bearer"'),
        ({"auth": "digest"}, "auth", "must be one of none, basic, bearer"),
        ({"port": 104}, "port", 'is for kind = "dimse"'),
        ({"kind": "dicomwebs"}, "kind", "must be one of dimse, dicomweb"),
    ):
        found = issues_of({"destinations": [{**web, **change}]})
        assert says in found[f"destinations[0].{key}"], (change, found)
    found = issues_of({"destinations": [dest(url="https://pacs/dicom-web")]})
    assert found["destinations[0].url"] == 'is for kind = "dicomweb"'


def test_destination_not_a_table() -> None:
    assert issues_of({"destinations": ["pacs"]})["destinations[0]"] == "must be a table"


def test_tls_files_must_exist(tmp_path: Path) -> None:
    found = issues_of(
        {
            "dicom": {
                "tls": {
                    "cert_file": str(tmp_path / "no-cert.pem"),
                    "key_file": str(tmp_path / "no-key.pem"),
                    "ca_file": str(tmp_path / "no-ca.pem"),
                }
            }
        }
    )
    for key in ("cert_file", "key_file", "ca_file"):
        assert "does not exist" in found[f"dicom.tls.{key}"]


def test_tls_require_client_cert_needs_ca_file(tmp_path: Path) -> None:
    cert = write(tmp_path, "x", "cert.pem")
    key = write(tmp_path, "x", "key.pem")
    message = one_issue(
        {
            "dicom": {
                "tls": {
                    "cert_file": str(cert),
                    "key_file": str(key),
                    "require_client_cert": True,
                }
            }
        },
        "dicom.tls.ca_file",
    )
    assert "require_client_cert" in message


def test_tls_good_relative_to_config_file(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        write(tmp_path, "x", name)
    path = write(
        tmp_path,
        '[dicom.tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'
        'ca_file = "ca.pem"\nrequire_client_cert = true\n',
    )
    tls = load_config(path, environ={}).dicom.tls
    assert tls is not None
    assert tls.cert_file == tmp_path / "cert.pem"
    assert tls.ca_file == tmp_path / "ca.pem"
    assert tls.require_client_cert is True


def test_tls_on_destination_files_must_exist(tmp_path: Path) -> None:
    found = issues_of(
        {
            "destinations": [
                dest(tls={"cert_file": str(tmp_path / "c"), "key_file": str(tmp_path / "k")})
            ]
        }
    )
    assert "destinations[0].tls.cert_file" in found
    assert "destinations[0].tls.key_file" in found


def test_bad_logging_level() -> None:
    message = one_issue({"logging": {"level": "LOUD"}}, "logging.level")
    assert "DEBUG" in message and "ERROR" in message


def test_operations_sections_defaults_and_values() -> None:
    cfg = parse_config({})
    assert cfg.storage.min_free_mb == 1024 and cfg.logging.format == "text"
    assert not cfg.http.enabled and cfg.http.bind == "127.0.0.1"
    assert cfg.retention.source_days == 30 and cfg.retention.results_days is None
    cfg = parse_config(
        {
            "storage": {"min_free_mb": 0},
            "logging": {"format": "JSON"},
            "http": {"enabled": True, "bind": "0.0.0.0", "port": 9100},
            "retention": {"source_days": 7.5, "results_days": "forever", "interval_hours": 0},
        }
    )
    assert cfg.storage.min_free_mb == 0 and cfg.logging.format == "json"
    assert cfg.http.port == 9100 and cfg.http.bind == "0.0.0.0"
    assert cfg.retention.source_days == 7.5 and cfg.retention.interval_hours == 0


def test_operations_sections_bad_values_name_the_key() -> None:
    found = issues_of(
        {
            "storage": {"min_free_mb": -1},
            "logging": {"format": "xml"},
            "http": {"port": 70000, "enabled": "yes"},
            "retention": {"source_days": "soon", "excluded_cases_days": True},
        }
    )
    assert "text, json" in found["logging.format"]
    assert "forever" in found["retention.source_days"]
    for key in (
        "storage.min_free_mb",
        "http.port",
        "http.enabled",
        "retention.excluded_cases_days",
    ):
        assert key in found, found


def test_backoff_max_below_initial() -> None:
    message = one_issue(
        {"outbox": {"backoff_initial_seconds": 60, "backoff_max_seconds": 5}},
        "outbox.backoff_max_seconds",
    )
    assert "backoff_initial_seconds" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", "3"),
        ("poll_seconds", 0),
        ("poll_seconds", "fast"),
    ],
)
def test_bad_outbox_values(key: str, value: Any) -> None:
    assert f"outbox.{key}" in issues_of({"outbox": {key: value}})


def test_bad_storage_values() -> None:
    found = issues_of({"storage": {"root": "", "fsync": "yes"}})
    assert "storage.root" in found
    assert "true or false" in found["storage.fsync"]


def test_bad_dicom_numbers_and_bind() -> None:
    found = issues_of(
        {
            "dicom": {
                "series_quiet_seconds": 0,
                "max_associations": 0,
                "max_pdu_size": 10,
                "bind": "not a host",
            }
        }
    )
    for key in ("series_quiet_seconds", "max_associations", "max_pdu_size", "bind"):
        assert f"dicom.{key}" in found, key


def test_all_problems_are_collected_in_one_error(tmp_path: Path) -> None:
    raw = {
        "dicom": {"port": 70000, "ae_title": "BAD\\AE", "colour": 1},
        "storage": {"rooot": "/x"},
        "destinations": [dest(), dest(), dest(name="other", host=None)],
        "logging": {"level": "LOUD"},
        "outbox": {"backoff_initial_seconds": 10, "backoff_max_seconds": 1},
        "dicomm": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="site.toml")
    err = info.value
    keys = {issue.key for issue in err.issues}
    assert keys >= {
        "dicom.port",
        "dicom.ae_title",
        "dicom.colour",
        "storage.rooot",
        "destinations",
        "destinations[2].host",
        "logging.level",
        "outbox.backoff_max_seconds",
        "dicomm",
    }
    text = str(err)
    assert text.startswith("site.toml is invalid")
    for issue in err.issues:
        assert f"{issue.key}: {issue.message}" in text
    assert err.source == "site.toml"


# -- environment overrides and loading ---------------------------------------------------------


def test_env_overrides_port_and_root(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL_TOML)
    env = {
        "APPLIANCE__DICOM__PORT": "11113",
        "APPLIANCE__STORAGE__ROOT": str(tmp_path / "d"),
        "UNRELATED": "1",
    }
    cfg = load_config(path, environ=env)
    assert cfg.dicom.port == 11113
    assert cfg.storage.root == tmp_path / "d"
    assert cfg.dicom.ae_title == "SEGAPPLIANCE"  # the rest of the file still applies


def test_env_override_creates_missing_section() -> None:
    cfg = parse_config(
        {}, environ={"APPLIANCE__OUTBOX__MAX_ATTEMPTS": "3", "APPLIANCE__STORAGE__FSYNC": "false"}
    )
    assert cfg.outbox.max_attempts == 3
    assert cfg.storage.fsync is False


def test_env_override_is_validated() -> None:
    message = one_issue({}, "dicom.port", environ={"APPLIANCE__DICOM__PORT": "70000"})
    assert "1 to 65535" in message
    assert "dicom.port" in issues_of({}, environ={"APPLIANCE__DICOM__PORT": "abc"})


def test_load_config_uses_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL_TOML)
    monkeypatch.setenv("APPLIANCE__DICOM__PORT", "11113")
    assert load_config(path).dicom.port == 11113


def test_load_config_without_path_uses_appliance_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL_TOML)
    assert load_config(environ={CONFIG_ENV: str(path)}).destinations[0].name == "pacs"
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load_config().dicom.port == 11112


def test_load_config_without_path_or_env() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={})
    assert info.value.issues[0].key == "config"
    assert CONFIG_ENV in info.value.issues[0].message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml", environ={})
    assert "file not found" in str(info.value)
    assert info.value.issues[0].key == "config"


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[dicom\nport = "), environ={})
    assert "not valid TOML" in str(info.value)


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, environ={})  # a directory
