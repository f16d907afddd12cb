"""Per-class area totals read back from ``stats/``."""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq

from segray import storage
from segray.labelling.reader import read_stats, stats_parts, stats_uri


def area_table(output: str, model_id: str | None = None) -> list[tuple[str, int, float]]:
    """[(class, pixels, share of all labelled pixels)] over the stats rows (of ``model_id``), each
    frame counted once (:func:`segray.labelling.reader.read_stats`)."""
    parts = stats_parts(output)
    if not parts:
        return []
    fs = storage.resolve(stats_uri(output))[0]
    with fs.open_input_file(parts[0]) as f:
        names = pq.read_schema(f).names
    cols = [n for n in names if n.startswith("px_")]
    table = read_stats(output, model_id, columns=cols)  # the class columns only
    totals = {c: int(pc.sum(table.column(c)).as_py() or 0) for c in cols}
    grand = sum(totals.values()) or 1
    return [(c.removeprefix("px_"), v, v / grand) for c, v in totals.items()]


def format_area_table(rows: list[tuple[str, int, float]]) -> str:
    width = max([len("class")] + [len(r[0]) for r in rows])
    lines = [f"{'class':<{width}}  {'pixels':>12}  {'share':>7}", "-" * (width + 23)]
    lines += [f"{n:<{width}}  {px:>12,}  {share:>6.1%}" for n, px, share in rows]
    return "\n".join(lines)
