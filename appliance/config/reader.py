"""The one typed reader of configuration values, and environment overrides.

A :class:`ConfigReader` reads one table: a TOML table, a Flower user-config map
(``appliance.federation.settings``), a benchmark config, or a config section object's
own fields (the sections check themselves in ``__post_init__`` with it). Every getter
converts and checks one value; a problem becomes a :class:`ConfigIssue` keyed by the
value's dotted path (``dicom.port``, ``destinations[0].tls.cert_file``) that says what
is allowed. By default problems are collected, so that every one is reported at once;
with ``fail`` the first one raises the exception ``fail`` makes of it instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from appliance.errors import ConfigError, ConfigIssue

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)

AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
NAME_MESSAGE = "must be 1-64 letters, digits, '.', '_' or '-'"
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
REQUIRED: Any = object()  # ``typed``'s default when a value has none


def join_key(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def init_fields(cls: type) -> tuple[str, ...]:
    """The names a dataclass takes in its constructor (the keys its table may hold)."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _required_fields(cls: type) -> tuple[str, ...]:
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


class ConfigReader:
    """Typed values out of one table, every problem recorded with its dotted key.

    ``data``: the table; ``prefix``: its dotted key (``""`` at the top); ``base_dir``:
    what relative paths are relative to; ``fail``: raise ``fail(issue)`` at the first
    problem instead of collecting. Getters treat a missing value and ``None`` alike
    (absent), return the converted value, or on a problem record it and return the
    default. A reader made by :meth:`of` reads an object's own fields and writes the
    converted (normalised) values back into it.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        prefix: str = "",
        *,
        base_dir: Path | None = None,
        fail: Callable[[ConfigIssue], Exception] | None = None,
        issues: list[ConfigIssue] | None = None,
    ) -> None:
        self.data = data
        self.prefix = prefix
        self.base_dir = base_dir
        self.issues: list[ConfigIssue] = [] if issues is None else issues
        self._fail = fail
        self._target: object | None = None

    @classmethod
    def of(cls, obj: object, prefix: str = "") -> ConfigReader:
        """A reader of a dataclass object's own fields (for its ``__post_init__``)."""
        data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
        reader = cls(data, prefix)
        reader._target = obj
        return reader

    # -- structure ----------------------------------------------------------------------
    def key(self, name: str) -> str:
        return join_key(self.prefix, name)

    def child(self, data: Mapping[str, Any], prefix: str) -> ConfigReader:
        """A reader of ``data`` at the absolute key ``prefix``, reporting into this one."""
        return ConfigReader(
            data, prefix, base_dir=self.base_dir, fail=self._fail, issues=self.issues
        )

    def table(self, name: str) -> ConfigReader:
        """The sub-table ``name`` (empty when absent)."""
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            self.err(name, "must be a table")
            value = {}
        return self.child(value, self.key(name))

    def tables(self, name: str) -> Iterator[ConfigReader]:
        """The tables of the array of tables ``name`` (``[[name]]``), keyed ``name[i]``."""
        value = self.data.get(name, [])
        if not isinstance(value, list):
            self.err(name, f"must be an array of tables ([[{self.key(name)}]])")
            return
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.err(f"{name}[{i}]", "must be a table")
                continue
            yield self.child(item, self.key(f"{name}[{i}]"))

    def unknown(self, allowed: Sequence[str]) -> None:
        """Record every key of the table that is not in ``allowed``."""
        for key in self.data:
            if key not in allowed:
                self.err(key, f"unknown key; allowed here: {', '.join(sorted(allowed))}")

    # -- problems -----------------------------------------------------------------------
    def fail(self, name: str, message: str) -> Exception:
        """The exception for a problem with ``name`` (for ``raise``)."""
        issue = ConfigIssue(self.key(name), message)
        return self._fail(issue) if self._fail is not None else ConfigError([issue])

    def err(self, name: str, message: str) -> None:
        """Record a problem with ``name`` (or raise it, with ``fail``)."""
        if self._fail is not None:
            raise self.fail(name, message)
        self.issues.append(ConfigIssue(self.key(name), message))

    def merge(self, error: ConfigError, prefix: str = "", *, at: str | None = None) -> None:
        """Record ``error``'s issues, their keys under ``prefix`` (or all at key ``at``)."""
        for issue in error.issues:
            key = at if at is not None else join_key(prefix, issue.key)
            if self._fail is not None:
                raise self._fail(ConfigIssue(key, issue.message))
            self.issues.append(ConfigIssue(key, issue.message))

    def raise_issues(self, source: str = "config") -> None:
        if self.issues:
            raise ConfigError(self.issues, source)

    # -- building sections --------------------------------------------------------------
    def build(
        self,
        factory: Callable[..., T],
        values: Mapping[str, Any],
        *,
        prefix: str = "",
        at: str | None = None,
    ) -> T | None:
        """``factory(**values)``; a :class:`ConfigError` it raises is recorded (its keys
        under ``prefix``, or all at key ``at``) and gives ``None``."""
        try:
            return factory(**values)
        except ConfigError as exc:
            self.merge(exc, prefix, at=at)
            return None

    def section(
        self, cls: type[T], *, relative: bool = False, paths: Sequence[str] = (), **values: Any
    ) -> T | None:
        """``cls`` (a dataclass that checks itself) from this table: unknown keys are
        recorded, present keys passed on (those in ``paths`` resolved against
        ``base_dir``), ``values`` override them, and required fields that are absent are
        passed as ``None`` (``cls`` says "is required"). ``relative``: ``cls`` names its
        keys relative to itself (a list item, a nested table), so they are put under this
        table's key. ``None`` when ``cls`` refused the values (the issues are recorded).
        """
        allowed = init_fields(cls)
        self.unknown(allowed)
        given = {k: v for k, v in self.data.items() if k in allowed}
        for name in paths:
            if name in given:
                given[name] = self.resolve(given[name])
        given.update(values)
        for name in _required_fields(cls):
            given.setdefault(name, None)
        return self.build(cls, given, prefix=self.prefix if relative else "")

    def resolve(self, value: Any) -> Any:
        """A non-empty string as a path (``~`` expanded, relative to ``base_dir``);
        anything else unchanged (for the section to refuse)."""
        if not isinstance(value, str) or not value.strip():
            return value
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        return path

    # -- values -------------------------------------------------------------------------
    def raw(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name)
        return default if value is None else value

    def _accept(self, name: str, value: T) -> T:
        if self._target is not None and self.data.get(name) is not value:
            object.__setattr__(self._target, name, value)
        return value

    def typed(
        self, name: str, kind: type, default: Any = REQUIRED, *, integral_floats: bool = False
    ) -> Any:
        """A value of Python type ``kind`` (an int is a float too; with
        ``integral_floats`` an integral float is an int)."""
        value = self.data.get(name)
        if value is None:
            if default is REQUIRED:
                self.err(name, "is required")
                return None
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if integral_floats and kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.err(name, f"must be {kind.__name__}, got {value!r}")
            return None if default is REQUIRED else default
        return self._accept(name, value)

    def string(self, name: str, *, required: bool = False) -> str | None:
        """A non-empty string."""
        value = self.data.get(name)
        if value is None:
            if required:
                self.err(name, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.err(name, "must be a non-empty string")
            return None
        return value

    def string_list(self, name: str) -> tuple[str, ...] | None:
        """A list of non-empty strings, as a tuple."""
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            self.err(name, "must be a list of non-empty strings")
            return None
        return self._accept(name, tuple(value))

    def integer(self, name: str, lo: int, hi: int, default: int | None = None) -> int:
        """An integer from ``lo`` to ``hi`` (not a bool, not a float); required when
        ``default`` is ``None``."""
        value = self.data.get(name)
        if value is None:
            if default is None:
                self.err(name, f"is required (an integer from {lo} to {hi})")
                return lo
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.err(name, f"must be an integer from {lo} to {hi}; got {value!r}")
            return default if default is not None else lo
        return value

    def number(self, name: str, lo: float, hi: float, default: float = 0.0) -> float:
        """A number (integer or float, not a bool) from ``lo`` to ``hi``, as a float."""
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            self.err(name, f"must be a number from {lo:g} to {hi:g}; got {value!r}")
            return default
        return self._accept(name, float(value))

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            self.err(name, f"must be true or false; got {value!r}")
            return default
        return value

    def choice(
        self, name: str, allowed: Sequence[str], default: str, *, case: Callable[[str], str]
    ) -> str:
        """One of ``allowed``, compared (and kept) after ``case`` (``str.upper``...)."""
        value = self.data.get(name, default)
        if not isinstance(value, str) or case(value) not in allowed:
            self.err(name, f"must be one of {', '.join(allowed)}; got {value!r}")
            return default
        return self._accept(name, case(value))

    def enum(self, name: str, kind: type[E], default: E) -> E:
        """A member of the string enum ``kind`` (given as the member or its value)."""
        value = self.data.get(name, default)
        try:
            member = kind(value)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            self.err(name, f"must be one of {allowed}; got {value!r}")
            return default
        return self._accept(name, member)

    def enum_list(self, name: str, kind: type[E], default: tuple[E, ...]) -> tuple[E, ...]:
        """A non-empty list of members of the string enum ``kind`` (repeats dropped, order
        kept)."""
        value = self.data.get(name)
        if value is None:
            return default
        allowed = ", ".join(m.value for m in kind)
        if not isinstance(value, list | tuple) or not value:
            self.err(name, f"must be a non-empty list of: {allowed}; got {value!r}")
            return default
        members: list[E] = []
        for item in value:
            try:
                members.append(kind(item))
            except ValueError:
                self.err(name, f"{item!r} is not one of: {allowed}")
                return default
        return self._accept(name, tuple(dict.fromkeys(members)))

    def ae_title(self, name: str, *, required: bool = True) -> str | None:
        """A DICOM AE title (kept stripped)."""
        value = self.data.get(name)
        if value is None:
            if required:
                self.err(name, "is required")
            return None
        if not isinstance(value, str):
            self.err(name, "must be an AE title string")
            return None
        if not AE_RE.match(value) or not value.strip():
            self.err(name, "must be an AE title: 1-16 printable ASCII characters, no backslash")
            return None
        return self._accept(name, value.strip())

    def host(self, name: str, *, required: bool = False) -> str | None:
        """An IP address or a host name."""
        value = self.string(name, required=required)
        if value is None:
            return None
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOST_RE.match(value):
                self.err(name, f"must be an IP address or host name; got {value!r}")
                return None
        return value

    def name(self, name: str, message: str = NAME_MESSAGE, *, required: bool = False) -> str | None:
        """1-64 letters, digits, ``.``, ``_`` or ``-`` (``message`` says so)."""
        value = self.string(name, required=required)
        if value is not None and not NAME_RE.match(value):
            self.err(name, message)
            return None
        return value

    def path(self, name: str, *, required: bool = False, must_exist: bool = False) -> Path | None:
        """A path (a string is resolved as :meth:`resolve` does); ``must_exist``: a file."""
        value = self.data.get(name)
        if value is None:
            if required:
                self.err(name, "is required")
            return None
        value = self.resolve(value)
        if not isinstance(value, Path):
            self.err(name, "must be a non-empty string")
            return None
        if must_exist and not value.is_file():
            self.err(name, f"file does not exist: {value}")
        return self._accept(name, value)

    def days(self, name: str) -> float | None:
        """A number of days (0 to 36500), or ``"forever"`` (``None``)."""
        value = self.data.get(name)
        if value is None or (isinstance(value, str) and value.strip().lower() == "forever"):
            return self._accept(name, None)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 36500:
            self.err(name, f'must be a number of days (0 to 36500) or "forever"; got {value!r}')
            return None
        return self._accept(name, float(value))

    def instance(self, name: str, kind: type[T], *, optional: bool = False) -> T | None:
        """An object of class ``kind`` (a section that has checked itself)."""
        value = self.data.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, kind):
            self.err(name, f"must be a {kind.__name__}; got {value!r}")
            return None
        return value

    def instances(self, name: str, kind: type[T], message: str) -> tuple[T, ...]:
        """A list or tuple of ``kind`` objects, kept as a tuple."""
        value = self.data.get(name)
        if not isinstance(value, list | tuple) or not all(isinstance(v, kind) for v in value):
            self.err(name, message)
            return ()
        return self._accept(name, tuple(value))

    def check(self, ok: bool, name: str, message: str) -> None:
        """Record ``message`` for ``name`` unless ``ok`` (a rule across values)."""
        if not ok:
            self.err(name, message)


# -- environment overrides ----------------------------------------------------------------


def apply_env(data: dict[str, Any], environ: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """``<prefix><SECTION>__<KEY>=value`` (double underscores, any depth) set
    ``data[section][key]``; values are read as TOML values, else kept as strings."""
    for name, value in environ.items():
        if not name.startswith(prefix):
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__") if p]
        if not parts:
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = env_value(value)
    return data


def env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
