"""appliance.config.reader: the one typed reader: dotted keys, collected or fail-fast
problems, nested tables, sections that check themselves, environment overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.config import ConfigReader, StrategyName
from appliance.config.reader import apply_env, init_fields
from appliance.errors import ConfigError, ConfigIssue, FederationError


def test_problems_are_collected_with_dotted_keys() -> None:
    r = ConfigReader({"dicom": {"port": 0, "x": 1}, "destinations": [{"port": "a"}, 5]})
    dicom = r.table("dicom")
    assert dicom.integer("port", 1, 65535, 11112) == 11112  # the default after a problem
    dicom.unknown(["port"])
    items = list(r.tables("destinations"))
    assert [t.prefix for t in items] == ["destinations[0]"]
    items[0].integer("port", 1, 65535)
    assert [(i.key, i.message) for i in r.issues] == [
        ("dicom.port", "must be an integer from 1 to 65535; got 0"),
        ("dicom.x", "unknown key; allowed here: port"),
        ("destinations[1]", "must be a table"),
        ("destinations[0].port", "must be an integer from 1 to 65535; got 'a'"),
    ]
    with pytest.raises(ConfigError) as info:
        r.raise_issues("site.toml")
    assert str(info.value).startswith("site.toml is invalid:\n  dicom.port: ")


def test_fail_fast_raises_the_callers_exception_at_the_first_problem() -> None:
    r = ConfigReader(
        {"lr": "fast", "rounds": 2.0}, fail=lambda issue: FederationError(f"x.toml: {issue}")
    )
    with pytest.raises(FederationError, match=r"^x\.toml: lr: must be float, got 'fast'$"):
        r.typed("lr", float, 0.1)
    assert r.issues == []
    with pytest.raises(FederationError, match=r"rounds: must be int, got 2\.0"):
        r.typed("rounds", int)
    assert r.typed("rounds", int, integral_floats=True) == 2
    with pytest.raises(FederationError, match=r"^x\.toml: name: is required$"):
        r.typed("name", str)
    with pytest.raises(FederationError, match=r"net\.norm: must be str"):
        r.child({"norm": 5}, "net").typed("norm", str, "batch")
    assert isinstance(r.fail("k", "m"), FederationError)
    assert isinstance(ConfigReader({}).fail("k", "m"), ConfigError)


def test_typed_values() -> None:
    r = ConfigReader({"n": 3, "b": True, "s": "x", "f": 1})
    assert r.typed("f", float) == 1.0 and isinstance(r.typed("f", float), float)
    assert r.typed("missing", int, 7) == 7
    assert r.typed("b", int, 0) == 0  # a bool is not an int
    assert r.typed("b", bool) is True
    assert [i.key for i in r.issues] == ["b"]


def test_enum_accepts_the_member_or_its_value() -> None:
    r = ConfigReader({"a": "krum", "b": StrategyName.CWT, "c": "fedfoo"})
    assert r.enum("a", StrategyName, StrategyName.FEDAVG) is StrategyName.KRUM
    assert r.enum("b", StrategyName, StrategyName.FEDAVG) is StrategyName.CWT
    assert r.enum("c", StrategyName, StrategyName.FEDAVG) is StrategyName.FEDAVG
    message = r.issues[0].message
    assert message.startswith("must be one of fedavg, fedprox,") and "got 'fedfoo'" in message


def test_paths_are_resolved_against_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "here.pem").write_text("x")
    r = ConfigReader({"a": "here.pem", "b": "gone.pem", "c": "", "d": 3}, base_dir=tmp_path)
    assert r.path("a", must_exist=True) == tmp_path / "here.pem"
    assert r.path("b", must_exist=True) == tmp_path / "gone.pem"
    assert r.path("c") is None and r.path("d") is None
    assert r.path("e", required=True) is None
    assert {i.key: i.message for i in r.issues} == {
        "b": f"file does not exist: {tmp_path / 'gone.pem'}",
        "c": "must be a non-empty string",
        "d": "must be a non-empty string",
        "e": "is required",
    }


@dataclass(frozen=True, slots=True)
class _Item:
    """A section that checks itself, naming its keys relative to itself."""

    port: int
    name: str = "x"

    def __post_init__(self) -> None:
        r = ConfigReader.of(self)
        r.integer("port", 1, 10)
        r.name("name", required=True)
        r.raise_issues()


def test_sections_are_built_and_their_issues_put_in_place() -> None:
    r = ConfigReader({"items": [{"port": 3}, {"port": 30, "name": "a b", "colour": 1}, {}]})
    built = [t.section(_Item, relative=True) for t in r.tables("items")]
    assert built == [_Item(3), None, None]
    assert [(i.key, i.message.split(";")[0]) for i in r.issues] == [
        ("items[1].colour", "unknown key"),
        ("items[1].port", "must be an integer from 1 to 10"),
        ("items[1].name", "must be 1-64 letters, digits, '.', '_' or '-'"),
        ("items[2].port", "is required (an integer from 1 to 10)"),
    ]
    assert init_fields(_Item) == ("port", "name")


def test_merge_at_one_key() -> None:
    r = ConfigReader({})
    assert r.build(_Item, {"port": 0}, at="callers[3]") is None
    assert r.issues == [ConfigIssue("callers[3]", "must be an integer from 1 to 10; got 0")]


def test_reading_an_objects_fields_writes_back_normalised_values() -> None:
    @dataclass(frozen=True)
    class Section:
        level: str = "info"
        seconds: float = 1

    obj = Section()
    r = ConfigReader.of(obj, "logging")
    r.choice("level", ("DEBUG", "INFO"), "INFO", case=str.upper)
    r.number("seconds", 0, 10)
    assert obj.level == "INFO" and isinstance(obj.seconds, float)
    assert r.issues == []


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"APP__DICOM__PORT": "11113"}, {"dicom": {"port": 11113, "ae_title": "A"}}),
        ({"APP__A__B__C": "true"}, {"dicom": {"ae_title": "A"}, "a": {"b": {"c": True}}}),
        ({"APP__DICOM__AE_TITLE": "not toml"}, {"dicom": {"ae_title": "not toml"}}),
        ({"OTHER": "1", "APP__": "x"}, {"dicom": {"ae_title": "A"}}),
    ],
)
def test_environment_overrides(environ: dict[str, str], expected: dict[str, Any]) -> None:
    assert apply_env({"dicom": {"ae_title": "A"}}, environ, "APP__") == expected
