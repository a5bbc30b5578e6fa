"""Reading a MONAI bundle's configs without running them.

A bundle's ``configs/*.json`` or ``*.yaml`` are programs for MONAI's ``ConfigParser``:
``"@id"`` references, ``"$..."`` Python expressions, ``"%file#id"`` macros and
``_target_`` components. The appliance never hands them to the parser. It reads them as
data and takes out, through :func:`resolve`, the plain values it needs:

- :func:`read_config` reads ``configs/<stem>.json`` (or ``.yaml`` / ``.yml``; YAML with
  the safe loader), at most :data:`MAX_CONFIG_BYTES`, refusing duplicate keys;
- :func:`resolve` replaces ``"@id"`` references (``#`` or ``::`` separated) by the values
  they name, evaluates ``"$..."`` expressions with :func:`evaluate` and refuses ``%``
  macros; components (``_target_``) are refused unless the caller allows them;
- :func:`evaluate` is a small evaluator of plain expressions: literals, ``@`` references,
  arithmetic on numbers, comparisons, ``and``/``or``/``not``, ``x if c else y`` and
  indexing. No names, attributes, calls, lambdas or comprehensions: ``"$[1.5, 1.5, 1.5]
  if @displayable_configs#highres else [3.0, 3.0, 3.0]"`` is evaluated,
  ``"$torch.device('cuda')"`` is refused with the reason.

Every error is a :class:`~models.errors.BundleImportError` naming the file and the key.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from .errors import BundleImportError

#: The largest config file read.
MAX_CONFIG_BYTES: Final = 8 * 1024 * 1024
#: Config file suffixes, in the order they are looked for.
CONFIG_SUFFIXES: Final = (".json", ".yaml", ".yml")

_MAX_DEPTH: Final = 32
_MAX_EXPRESSION: Final = 2000
_MAX_SEQUENCE: Final = 100_000
_REF_IN_EXPRESSION: Final = re.compile(r"@([A-Za-z_][\w#:]*)")


# -- reading -------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key that appears twice in one mapping."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _unique_mapping,
)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def config_path(src: Path, stem: str) -> Path | None:
    """``src/configs/<stem>`` with the first suffix of :data:`CONFIG_SUFFIXES` that exists."""
    for suffix in CONFIG_SUFFIXES:
        path = src / "configs" / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def read_config(src: Path, stem: str) -> tuple[dict[str, Any], str, str]:
    """``(data, relative file name, sha256 of its bytes)`` of ``configs/<stem>.*``."""
    path = config_path(src, stem)
    if path is None:
        raise BundleImportError(
            f"MONAI bundle {src.name}: configs/{stem}.json (or .yaml, .yml) is missing"
        )
    relative = f"configs/{path.name}"
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise BundleImportError(
            f"MONAI bundle {src.name}: {relative} is {size} bytes, more than the "
            f"{MAX_CONFIG_BYTES} allowed"
        )
    raw = path.read_bytes()
    try:
        if path.suffix == ".json":
            data = json.loads(raw, object_pairs_hook=_no_duplicates)
        else:
            data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
    except (ValueError, yaml.YAMLError) as exc:  # JSON and Unicode errors are ValueErrors
        kind = "JSON" if path.suffix == ".json" else "YAML"
        detail = " ".join(str(exc).split())[:300]
        raise BundleImportError(
            f"MONAI bundle {src.name}: {relative} is not valid {kind}: {detail}"
        ) from exc
    if not isinstance(data, dict):
        raise BundleImportError(f"MONAI bundle {src.name}: {relative} must hold a mapping")
    return data, relative, hashlib.sha256(raw).hexdigest()


# -- references ----------------------------------------------------------------------------


def lookup(config: Mapping[str, Any], ref: str) -> Any:
    """The value ``ref`` (``a#b#0`` or ``a::b::0``) names in ``config``; KeyError if none."""
    node: Any = config
    for part in ref.replace("#", "::").split("::"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(ref)
    return node


def resolve(
    value: Any,
    config: Mapping[str, Any],
    where: str,
    *,
    file: str = "config",
    allow_components: bool = False,
    chain: tuple[str, ...] = (),
) -> Any:
    """``value`` as plain data: references replaced, expressions evaluated, anything
    executable refused. With ``allow_components``, mappings holding ``_target_`` are
    resolved like any other mapping (the caller decides what a component may be)."""
    if len(chain) > _MAX_DEPTH:
        raise BundleImportError(f"{file}: {where}: references nest too deeply")
    if isinstance(value, str):
        if value.startswith("@"):
            ref = value[1:]
            target = _referenced(ref, config, where, file, chain)
            return resolve(
                target,
                config,
                f"{where} -> {value}",
                file=file,
                allow_components=allow_components,
                chain=(*chain, ref),
            )
        if value.startswith("$"):
            return evaluate(value[1:], config, where, file=file, chain=chain)
        if value.startswith("%"):
            raise BundleImportError(f"{file}: {where}: macro {value!r} is not allowed")
        return value
    if isinstance(value, Mapping):
        if "_target_" in value and not allow_components:
            raise BundleImportError(
                f"{file}: {where}: nested components (_target_) are not allowed here"
            )
        return {
            str(key): resolve(
                item,
                config,
                f"{where}.{key}",
                file=file,
                allow_components=allow_components,
                chain=chain,
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            resolve(
                item,
                config,
                f"{where}[{i}]",
                file=file,
                allow_components=allow_components,
                chain=chain,
            )
            for i, item in enumerate(value)
        ]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise BundleImportError(f"{file}: {where}: a {type(value).__name__} value is not allowed")


def _referenced(
    ref: str, config: Mapping[str, Any], where: str, file: str, chain: tuple[str, ...]
) -> Any:
    if not ref or ref.startswith(("#", ":")):
        raise BundleImportError(f"{file}: {where}: relative reference @{ref} is not supported")
    if ref in chain:
        raise BundleImportError(f"{file}: {where}: circular reference @{ref}")
    try:
        return lookup(config, ref)
    except KeyError:
        raise BundleImportError(f"{file}: {where} refers to @{ref}, which is not defined") from None


# -- expressions ---------------------------------------------------------------------------

_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: Final[dict[type[ast.cmpop], Callable[[Any, Any], Any]]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def evaluate(
    expression: str,
    config: Mapping[str, Any],
    where: str,
    *,
    file: str = "config",
    chain: tuple[str, ...] = (),
) -> Any:
    """The value of a plain ``$`` expression (see the module doc); refuses anything else
    with a message that quotes it."""
    text = expression.strip()
    quoted = f"'${text[:120]}{'...' if len(text) > 120 else ''}'"
    if len(text) > _MAX_EXPRESSION:
        raise BundleImportError(f"{file}: {where}: expression is too long")
    refs: dict[str, Any] = {}

    def substitute(match: re.Match[str]) -> str:
        name = f"__ref{len(refs)}"
        ref = match.group(1)
        target = _referenced(ref, config, where, file, chain)
        refs[name] = resolve(target, config, f"{where} -> @{ref}", file=file, chain=(*chain, ref))
        return name

    try:
        tree = ast.parse(_REF_IN_EXPRESSION.sub(substitute, text), mode="eval")
    except SyntaxError:
        raise BundleImportError(f"{file}: {where}: expression {quoted} is not valid") from None
    try:
        return _Evaluator(refs).visit(tree.body)
    except _Refused as exc:
        raise BundleImportError(
            f"{file}: {where}: expression {quoted} is not allowed ({exc}); only plain values, "
            "references and arithmetic are evaluated, nothing is run"
        ) from None
    except (ArithmeticError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise BundleImportError(
            f"{file}: {where}: expression {quoted} fails: {type(exc).__name__}: {exc}"
        ) from None


class _Refused(Exception):
    """An expression uses something :class:`_Evaluator` does not evaluate (the reason)."""


class _Evaluator:
    def __init__(self, refs: Mapping[str, Any]) -> None:
        self.refs = refs

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise _Refused(f"{type(node).__name__} is not a plain expression")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if node.value is None or isinstance(node.value, bool | int | float | str):
            return node.value
        raise _Refused(f"a {type(node.value).__name__} constant")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.refs:
            return self.refs[node.id]
        raise _Refused(f"the name {node.id!r}")

    def visit_List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return [self.visit(e) for e in node.elts]

    def visit_Dict(self, node: ast.Dict) -> Any:
        if any(k is None for k in node.keys):
            raise _Refused("dictionary unpacking")
        return {self.visit(k): self.visit(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not operand
        _number(operand)
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return +operand
        raise _Refused(type(node.op).__name__)

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        function = _BINARY.get(type(node.op))
        if function is None:
            raise _Refused(type(node.op).__name__)
        left, right = self.visit(node.left), self.visit(node.right)
        if (
            isinstance(node.op, ast.Add)
            and type(left) is type(right)
            and isinstance(left, list | str)
        ):
            if len(left) + len(right) > _MAX_SEQUENCE:
                raise _Refused("a sequence that long")
            return left + right
        _number(left)
        _number(right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 2**32):
            raise _Refused("a power that large")
        return function(left, right)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        if isinstance(node.op, ast.And):
            value: Any = True
            for item in node.values:
                value = self.visit(item)
                if not value:
                    return value
            return value
        value = False
        for item in node.values:
            value = self.visit(item)
            if value:
                return value
        return value

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            function = _COMPARE.get(type(op))
            if function is None:
                raise _Refused(type(op).__name__)
            right = self.visit(comparator)
            if not function(left, right):
                return False
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        container = self.visit(node.value)
        if isinstance(node.slice, ast.Slice):
            raise _Refused("slicing")
        index = self.visit(node.slice)
        if not isinstance(container, list | dict | str):
            raise _Refused(f"indexing a {type(container).__name__}")
        return container[index]


def _number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(f"arithmetic on a {type(value).__name__}")
