"""Per-class area totals read back from ``stats/`` (streamed by column, never all rows at once)."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.dataset as pads

from segray import storage


def area_table(output: str, model_id: str | None = None) -> list[tuple[str, int, float]]:
    """[(class, pixels, share of all labelled pixels)] over every stats row (of ``model_id``)."""
    fs, path = storage.resolve(storage.join(output, "stats"))
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    cols = [n for n in ds.schema.names if n.startswith("px_")]
    totals = dict.fromkeys(cols, 0)
    flt = None if model_id is None else pads.field("model_id") == model_id
    for b in ds.to_batches(columns=cols, filter=flt):
        for c in cols:
            totals[c] += int(pc.sum(b.column(c)).as_py() or 0)
    grand = sum(totals.values()) or 1
    return [(c.removeprefix("px_"), v, v / grand) for c, v in totals.items()]


def format_area_table(rows: list[tuple[str, int, float]]) -> str:
    width = max([len("class")] + [len(r[0]) for r in rows])
    lines = [f"{'class':<{width}}  {'pixels':>12}  {'share':>7}", "-" * (width + 23)]
    lines += [f"{n:<{width}}  {px:>12,}  {share:>6.1%}" for n, px, share in rows]
    return "\n".join(lines)
