"""The tests' own shape: folders named for segray's packages, file names unique across them (pytest
imports each test file by its name), and shared pieces in helpers/, never imported from a test file."""

from __future__ import annotations

import ast
from collections import Counter

from helpers.common import ROOT

TESTS = ROOT / "tests"


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module a file imports, lazy imports inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_file_imports_another_or_the_conftest() -> None:
    offenders = {}
    for path in TESTS.rglob("*.py"):
        wrong = sorted(m for m in imported_modules(path.read_text()) if m.startswith("test_") or m == "conftest")
        if wrong:
            offenders[str(path.relative_to(TESTS))] = wrong
    assert offenders == {}


def test_folders_are_segray_packages_and_file_names_are_unique() -> None:
    packages = {p.name for p in (ROOT / "segray").iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders <= packages, folders - packages
    counts = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, n in counts.items() if n > 1] == []
