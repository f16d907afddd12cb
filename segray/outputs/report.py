"""Per-class area totals (and instance counts) read back from ``stats/``."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.parquet as pq

from segray import storage
from segray.outputs.read import read_stats, stats_parts, stats_uri


@dataclass(frozen=True)
class AreaRow:
    name: str
    pixels: int
    share: float  # of all labelled pixels
    count: int | None = None  # instances of the class (instance models), else None


def area_table(output: str, model_id: str | None = None) -> list[AreaRow]:
    """One row per class over the stats rows (of ``model_id``), each frame counted once
    (:func:`segray.outputs.read.read_stats`); instance models' rows also sum ``count_<class>``."""
    parts = stats_parts(output)
    if not parts:
        return []
    fs = storage.resolve(stats_uri(output))[0]
    with fs.open_input_file(parts[0]) as f:
        names = pq.read_schema(f).names
    classes = [n.removeprefix("px_") for n in names if n.startswith("px_")]
    counted = all(f"count_{c}" in names for c in classes)
    cols = [f"px_{c}" for c in classes] + ([f"count_{c}" for c in classes] if counted else [])
    table = read_stats(output, model_id, columns=cols)  # the class columns only

    def total(col: str) -> int:
        return int(pc.sum(table.column(col)).as_py() or 0)

    pixels = {c: total(f"px_{c}") for c in classes}
    grand = sum(pixels.values()) or 1
    return [AreaRow(c, pixels[c], pixels[c] / grand, total(f"count_{c}") if counted else None) for c in classes]


def format_area_table(rows: list[AreaRow]) -> str:
    width = max([len("class")] + [len(r.name) for r in rows])
    counted = any(r.count is not None for r in rows)
    head = f"{'class':<{width}}  {'pixels':>12}  {'share':>7}" + (f"  {'instances':>10}" if counted else "")
    lines = [head, "-" * len(head)]
    for r in rows:
        count = f"  {r.count:>10,}" if counted and r.count is not None else ""
        lines.append(f"{r.name:<{width}}  {r.pixels:>12,}  {r.share:>6.1%}" + count)
    return "\n".join(lines)
