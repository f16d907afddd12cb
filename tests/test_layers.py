"""The package's shape: every package and top-level module of segray sits in one layer of the
import-linter contract (pyproject.toml), which holds, and shared pieces (normalisation, the ignore
fallback, the mask reader, the synthetic data) are defined once, below every user."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers.common import ROOT
from importlinter.api import read_configuration
from importlinter.cli import lint_imports

PKG = ROOT / "segray"
PYPROJECT = ROOT / "pyproject.toml"


def layers_contract() -> dict:
    """The contract as import-linter reads it from pyproject.toml."""
    (contract,) = read_configuration(str(PYPROJECT))["contracts_options"]
    return contract


def layered(layers: list[str]) -> set[str]:
    """The names a contract's layers hold (``a | b`` and ``a : b`` are siblings in one layer)."""
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}


def children() -> set[str]:
    """segray's packages and top-level modules."""
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    return packages | {p.stem for p in PKG.glob("*.py") if p.name != "__init__.py"}


def test_every_package_and_module_is_in_a_layer() -> None:
    contract = layers_contract()
    assert contract["type"] == "layers" and contract["containers"] == ["segray"]
    assert contract["exhaustive"] == "True"  # import-linter itself also refuses an unnamed child
    named = layered(contract["layers"])
    assert {"cli", "training", "labelling", "models", "storage"} <= children()  # the package was really read
    assert children() - named == set(), "add it to a layer in pyproject.toml [tool.importlinter]"
    assert named - children() == set(), "a layer names a module segray no longer has"
    assert len(named) == sum(len(re.split(r"[|:]", layer)) for layer in contract["layers"])  # each once


def test_the_layers_contract_is_kept(tmp_path: Path) -> None:
    assert lint_imports(str(PYPROJECT), no_cache=True, no_logo=True) == 0
    # The check can fail: the same layers in reverse order are broken by almost every import.
    reverse = ", ".join(json.dumps(layer) for layer in reversed(layers_contract()["layers"]))
    config = tmp_path / "pyproject.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "segray"\n\n[[tool.importlinter.contracts]]\nname = "reversed"\n'
        f'type = "layers"\ncontainers = ["segray"]\nlayers = [{reverse}]\n'
    )
    assert lint_imports(str(config), no_cache=True, no_logo=True) == 1


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
    # Synthetic data (the demo's street frames, the instance set): one module, used by the demo, tests and bench.
    generators = grep(r"def (street_frame|write_street_\w+|make_frame|write_synthetic_instances)\(")
    assert len(generators) == 5 and {g.split(":")[0] for g in generators} == {"segray/datasets/synthetic.py"}
