"""docs/training.md's "Every key" table against the recipe's one declaration (segray/recipe.py): every
key is documented, no documented key is gone, and each default the table states is the declared one."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import yaml
from helpers.common import ROOT

from segray.recipe import TrainConfig


def declared() -> dict[str, Any]:
    """Every recipe key (``section.key``, or ``name`` / ``loss`` at the top) -> its default."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            for g in dataclasses.fields(default):
                out[f"{f.name}.{g.name}"] = getattr(default, g.name)
        else:
            out[f.name] = default
    return out


def documented() -> dict[str, str]:
    """The table's keys (a row may list several: `run.batch_size`, `val_batch_size`) -> the default cell's part."""
    text = (ROOT / "docs" / "training.md").read_text()
    table = text.split("## Every key", 1)[1].split("\n## ", 1)[0]
    out: dict[str, str] = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([a-z_.]+)`", cells[0])
        section = keys[0].split(".")[0] if "." in keys[0] else ""
        keys = [k if "." in k or not section else f"{section}.{k}" for k in keys]
        defaults = [d.strip() for d in cells[1].split(", ")] if len(keys) > 1 else [cells[1]]
        for i, key in enumerate(keys):
            out[key] = defaults[i] if len(defaults) == len(keys) else cells[1]
    return out


def test_every_key_is_documented_and_every_documented_key_exists() -> None:
    assert sorted(set(declared()) - set(documented())) == []
    assert sorted(set(documented()) - set(declared())) == []


def test_each_stated_default_is_the_declared_one() -> None:
    d = declared()
    checked = 0
    for key, cell in documented().items():
        text = re.sub(r"\s*\(.*\)$", "", cell).replace("`", "")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            continue
        if isinstance(value, str) and re.fullmatch(r"[0-9.]+e-?[0-9]+", value):
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        if isinstance(value, str) and " " in value:  # words, e.g. "the model input"
            continue
        if key == "loss":
            value = [{"type": "ce", "weight": 1.0, "class_weights": None} | t for t in value]
            assert value == [dataclasses.asdict(t) for t in d[key]], key
        else:
            assert value == d[key], f"{key}: docs/training.md says {cell!r}, segray/recipe.py declares {d[key]!r}"
        checked += 1
    assert checked >= 40
