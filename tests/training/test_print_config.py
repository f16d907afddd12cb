"""The resolved recipe of every training recipe in configs/ (``segray train --print-config``), against
a stored copy: a change to a default, a coercion or a recipe file shows up here as a diff to review.

After an intended change, rewrite the stored copy with ``python tests/training/test_print_config.py`` and
review its diff.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers when run as a script

from helpers.common import ROOT  # noqa: E402
from helpers.train_data import write_shapes_dataset  # noqa: E402

from segray.cli import main  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "print_config.json"
#: Recipes that need a dataset to resolve (``class_weights: auto`` reads the training masks) get this one.
NEEDS_DATA = {"template"}


def recipe_files() -> list[Path]:
    """configs/*.yaml except Ray Serve configs (those have ``applications``)."""
    out = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if not (isinstance(doc, dict) and "applications" in doc):
            out.append(path)
    return out


def resolved(path: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``segray train --config <path> --print-config`` run in ``workdir``, parsed, with ``workdir`` as ``<tmp>``."""
    workdir = workdir.resolve()
    overrides = []
    if path.stem in NEEDS_DATA:
        overrides.append(f"data.root={write_shapes_dataset(str(workdir / 'data'), {'train': 6, 'val': 2})}")
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(workdir)  # run.storage resolves against the working directory
    try:
        assert main(["train", "--config", str(path), "--print-config", *overrides]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    return yaml.safe_load(out.replace(str(workdir), "<tmp>"))


def test_every_recipe_has_a_stored_resolution() -> None:
    assert sorted(json.loads(GOLDEN.read_text())) == [p.stem for p in recipe_files()]


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_print_config_matches_the_stored_resolution(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = json.loads(GOLDEN.read_text())[path.stem]
    got = resolved(path, tmp_path, capsys)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # the same key order too (recipe.yaml reads in that order)


if __name__ == "__main__":
    import tempfile

    class _Capture:
        """Enough of pytest's capsys for :func:`resolved`."""

        def readouterr(self) -> Any:
            import io

            text = sys.stdout.getvalue() if isinstance(sys.stdout, io.StringIO) else ""
            sys.stdout = io.StringIO()
            return type("Captured", (), {"out": text})

    real_stdout, capture, golden = sys.stdout, _Capture(), {}
    try:
        for recipe in recipe_files():
            with tempfile.TemporaryDirectory() as tmp:
                golden[recipe.stem] = resolved(recipe, Path(tmp), capture)  # type: ignore[arg-type]
    finally:
        sys.stdout = real_stdout
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN} ({len(golden)} recipes)")
