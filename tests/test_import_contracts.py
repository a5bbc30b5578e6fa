"""The import-linter contracts of pyproject.toml hold, and they do catch a wrong import.

``make test`` runs ``lint-imports`` on the tree; these tests keep that check honest: the
contracts hold on the checkout, and a copy of the packages with one deliberately wrong
import (the clinical flow reaching into the demo tools) breaks exactly the contracts that
forbid it, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "dicom_bridge", "models")


def _lint_imports() -> Path:
    found = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(found).exists():
        pytest.fail("lint-imports (import-linter) is not installed; `make install` adds it")
    return Path(found)


def _run(cwd: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(_lint_imports()), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_packages(dest: Path) -> None:
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            dest / package,
            ignore=shutil.ignore_patterns("__pycache__", "bundles", "*.pt", "*.json"),
        )


def test_the_contracts_hold() -> None:
    proc = _run(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = proc.stdout.split("Contracts:")[-1].split("\n")[0]
    assert " kept, 0 broken" in summary, summary


def test_a_wrong_import_breaks_the_contracts(tmp_path: Path) -> None:
    _copy_packages(tmp_path)
    worker = tmp_path / "appliance" / "flow" / "worker.py"
    worker.write_text(
        worker.read_text(encoding="utf-8") + "\nfrom appliance.tools import demo  # noqa: F401\n",
        encoding="utf-8",
    )
    proc = _run(tmp_path, pythonpath=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "appliance.flow is not allowed to import appliance.tools" in out
    assert "appliance.flow.worker -> appliance.tools.demo" in out
    assert "The clinical flow never reaches into tools, the CLI or federation BROKEN" in out
