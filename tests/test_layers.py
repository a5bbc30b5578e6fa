"""DESIGN.md's dependency rules as tests.

Every ``.py`` file of the product packages is parsed (not imported) and each import it
makes, at module level or inside a function, is checked against the rules. Tests are
parametrized per file so that a failure names the file and the offending import. A
fresh interpreter checks that the CLI starts without the heavy ML stack.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "dicom_bridge", "models")

#: package -> top-level modules it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "dicom_bridge": frozenset({"torch", "monai", "flwr", "typer", "appliance", "models"}),
    "models": frozenset({"pydicom", "pynetdicom", "highdicom", "appliance", "typer", "flwr"}),
}
HEAVY = ("torch", "monai", "flwr")


def _files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.add(node.args[0].value)
    return found


def _roots(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names if name}


FILES = _files()
IDS = [_rel(p) for p in FILES]


def test_the_walker_sees_imports() -> None:
    """Guard against a vacuous pass: known imports are found, relative ones resolved."""
    assert len(FILES) > 10
    assert "sqlite3" in _roots(imports_of(REPO / "appliance" / "store" / "db.py"))
    assert "typer" in _roots(imports_of(REPO / "appliance" / "cli" / "__init__.py"))
    # lazy imports inside functions count too
    assert "dicom_bridge.sender" in imports_of(REPO / "appliance" / "cli" / "echo.py")


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_package_boundaries(path: Path) -> None:
    package = _rel(path).split("/")[0]
    bad = sorted(_roots(imports_of(path)) & FORBIDDEN.get(package, frozenset()))
    assert not bad, f"{_rel(path)} imports {bad}; DESIGN.md forbids them in {package}/"


def _flwr_allowed(rel: str) -> bool:
    return rel.startswith("appliance/federation")  # federation.py or a federation/ package


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_flwr_only_in_federation(path: Path) -> None:
    rel = _rel(path)
    if _flwr_allowed(rel):
        return
    assert "flwr" not in _roots(imports_of(path)), (
        f"{rel} imports flwr; only appliance/federation* may"
    )


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_typer_only_in_cli(path: Path) -> None:
    rel = _rel(path)
    if rel.startswith("appliance/cli/"):
        return
    assert "typer" not in _roots(imports_of(path)), f"{rel} imports typer; only appliance/cli may"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_sql_only_in_store(path: Path) -> None:
    rel = _rel(path)
    if rel.startswith("appliance/store/"):
        return
    assert "sqlite3" not in _roots(imports_of(path)), (
        f"{rel} imports sqlite3; the store (appliance/store/) is the only place with SQL"
    )


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_cli_starts_without_heavy_imports() -> None:
    loaded = _modules_after("import appliance.cli")
    assert "appliance.cli" in loaded
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert not heavy, f"`import appliance.cli` loads {heavy[:10]}; keep them inside commands"


def test_dicom_bridge_imports_alone() -> None:
    names = sorted(_module_name(p) for p in (REPO / "dicom_bridge").rglob("*.py"))
    loaded = _modules_after("\n".join(f"import {name}" for name in names))
    assert "dicom_bridge.sender" in loaded and "pydicom" in loaded
    leaked = sorted(name for name in loaded if name.split(".")[0] in FORBIDDEN["dicom_bridge"])
    assert not leaked, f"importing dicom_bridge loads {leaked[:10]}"


# -- the size rules of the appliance's layout (issue 13) ------------------------------------

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
MAX_ROOT_MODULES = 8
APPLIANCE_FILES = [p for p in FILES if _rel(p).startswith("appliance/")]


def test_the_appliance_root_holds_few_modules() -> None:
    """The folders tell the story; only the service, its errors, states and routing sit
    at the root (plus ``__init__``/``__main__``)."""
    root = sorted(p.name for p in (REPO / "appliance").glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"appliance/ has {len(root)} modules: {root}"


def size_problems(path: Path) -> list[str]:
    """Why ``path`` breaks the size rules (empty when it keeps them)."""
    text = path.read_text(encoding="utf-8")
    problems = []
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    if lines > MAX_MODULE_LINES:
        problems.append(f"{path.name} has {lines} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            if size > MAX_CLASS_LINES:
                problems.append(f"class {node.name} spans {size} lines (at most {MAX_CLASS_LINES})")
    return problems


@pytest.mark.parametrize("path", APPLIANCE_FILES, ids=[_rel(p) for p in APPLIANCE_FILES])
def test_modules_and_classes_stay_small(path: Path) -> None:
    assert not size_problems(path), f"{_rel(path)}: {size_problems(path)}"


def test_the_size_rules_can_fail(tmp_path: Path) -> None:
    """Guard against a vacuous pass: an over-long class and module are reported."""
    big = tmp_path / "big.py"
    big.write_text("class Big:\n" + "    x = 1\n" * MAX_MODULE_LINES, encoding="utf-8")
    problems = size_problems(big)
    assert len(problems) == 2 and "class Big" in problems[1], problems
    small = tmp_path / "small.py"
    small.write_text("class Small:\n    x = 1\n", encoding="utf-8")
    assert size_problems(small) == []
