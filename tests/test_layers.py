"""The package's shape: no subpackage imports another that imports it back, and shared pieces are
defined once (normalisation, the ignore fallback, the mask reader), below every user."""

from __future__ import annotations

import ast
import re

from conftest import ROOT

PKG = ROOT / "segray"


def subpackage_imports() -> dict[str, set[str]]:
    """Subpackage -> the other subpackages its modules import (at any depth, lazy imports included)."""
    subpackages = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    edges: dict[str, set[str]] = {name: set() for name in subpackages}
    for name in subpackages:
        for path in (PKG / name).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                for t in targets:
                    parts = t.split(".")
                    if parts[0] == "segray" and len(parts) > 1 and parts[1] in subpackages and parts[1] != name:
                        edges[name].add(parts[1])
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt == path[0]:
                found.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest member
                walk(nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_no_subpackage_imports_one_that_imports_it_back() -> None:
    edges = subpackage_imports()
    assert edges["training"] and "evaluation" not in edges["training"]  # the graph was really read
    assert cycles(edges) == []
    # A cycle is found when there is one: the check itself can fail.
    assert cycles({**edges, "models": {*edges["models"], "training"}})


def grep(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return sorted(
        f"{p.relative_to(ROOT)}:{i}"
        for p in PKG.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if rx.search(line) and not line.lstrip().startswith("#")
    )


def test_shared_pieces_are_defined_once() -> None:
    # Normalisation of frames for a model: one function, used by training, calibration and labelling.
    subs = grep(r"\.sub_\(")
    assert len(subs) == 1 and subs[0].startswith("segray/models/preprocessing.py:"), subs
    assert len(grep(r"def normalise\(")) == 1
    # The ignore fallback of a label map without an ignore class.
    assert grep(r"ignore_id if .* else") == []
    assert len(grep(r"IGNORE_FALLBACK = ")) == 1
    # Masks: one reader (PIL keeps palette indices); nothing else decodes a mask file.
    readers = grep(r"def read_(index_)?mask\(")
    assert [r.split(":")[0] for r in readers] == ["segray/datasets/formats/base.py", "segray/datasets/masks.py"]
    assert "read_mask(uri)" in (PKG / "datasets/formats/base.py").read_text()  # the converters' wraps the one
    assert {r.split(":")[0] for r in grep(r"imdecode\(")} == {"segray/frames/decode.py"}  # frames only
