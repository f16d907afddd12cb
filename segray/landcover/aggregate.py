"""Per-group totals on Ray Data: pixels and areas per class, frames counted, frames failed.

Each block of stats (and errors) rows is reduced to one row per group where it is read (a map-side
combine with pyarrow's ``group_by``), so only (blocks x groups) small rows reach the driver, which
adds them up: no shuffle, one pass over the data, and the work spreads over the cluster with the
stats. Groups are the ``by`` columns (default region, date), compared as strings; a row without a
value is counted under ``unknown``.

Areas follow the labelling job's rule: a group's ``area_m2_<class>`` is null when any of its frames
had no pixel size (a partial sum would understate the area); ``frames_without_pixel_size`` says how
many. ``share_<class>`` is the class's share of the group's area when that is known, else of its
pixels; ``share_basis`` says which.

Stats of an instance model carry ``count_<class>`` (instances per frame): they are summed like the
pixels (``count_<class>`` and ``count_total`` per group); a failed frame counts none.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

#: Group value for rows whose key column is null or absent (e.g. error rows from a run without it).
UNKNOWN = "unknown"
COUNTS = ("frames", "frames_failed", "frames_without_pixel_size")


def _keys_as_strings(table: pa.Table, by: list[str]) -> pa.Table:
    for key in by:
        if key in table.column_names:
            col = pc.fill_null(pc.cast(table.column(key), pa.string()), UNKNOWN)
            table = table.set_column(table.column_names.index(key), key, col)
        else:
            table = table.append_column(key, pa.array([UNKNOWN] * table.num_rows, pa.string()))
    return table


def combine(table: pa.Table, keys: list[str], classes: list[str], counts: bool = False) -> pa.Table:
    """Sum partial rows per group; an area sum is null if any part is null (pyarrow skip_nulls=False)."""
    exact = pc.ScalarAggregateOptions(skip_nulls=False, min_count=0)
    aggs: list[tuple[Any, ...]] = [(c, "sum") for c in (*COUNTS, *(f"px_{c}" for c in classes))]
    if counts:
        aggs += [(f"count_{c}", "sum") for c in classes]
    aggs += [(f"area_m2_{c}", "sum", exact) for c in classes]
    out = table.group_by(keys, use_threads=False).aggregate(aggs)
    return out.rename_columns([n.removesuffix("_sum") for n in out.column_names])


def drop_superseded(batch: pa.Table, losers: pa.Table | None) -> pa.Table:
    """Stats rows read with their part's ``path`` -> without the (path, relative_path, model_id) rows
    that :meth:`segray.outputs.read.Keys.losers` named (a later row of the same frame counts)."""
    if losers is None or losers.num_rows == 0 or batch.num_rows == 0:
        return batch
    sep = "\0"
    key = pc.binary_join_element_wise(
        pc.cast(batch.column("path"), pa.string()), batch.column("relative_path"), batch.column("model_id"), sep
    )
    lost = pc.binary_join_element_wise(
        losers.column("path"), losers.column("relative_path"), losers.column("model_id"), sep
    )
    return batch.filter(pc.invert(pc.is_in(key, value_set=lost)))


def partial_totals(
    batch: pa.Table,
    by: list[str],
    classes: list[str],
    errors: bool,
    losers: pa.Table | None = None,
    counts: bool = False,
) -> pa.Table:
    """One block of stats rows (or of errors rows) -> one row per (model_id, *by) group."""
    if not errors:
        batch = drop_superseded(batch, losers)
    t = _keys_as_strings(batch, by)
    n = t.num_rows
    zeros, ones = pa.array([0] * n, pa.int64()), pa.array([1] * n, pa.int64())
    cols: dict[str, Any] = {k: t.column(k) for k in by}
    if errors:  # error rows carry no model id: they count for the run's model
        cols["model_id"] = pa.nulls(n, pa.string())
        cols |= {"frames": zeros, "frames_failed": ones, "frames_without_pixel_size": zeros}
        cols |= {f"px_{c}": zeros for c in classes}
        cols |= {f"area_m2_{c}": pa.array([0.0] * n, pa.float64()) for c in classes}
        if counts:
            cols |= {f"count_{c}": zeros for c in classes}
    else:
        cols["model_id"] = pc.cast(t.column("model_id"), pa.string())
        missing = pc.cast(pc.is_null(t.column("pixel_area_m2")), pa.int64())
        cols |= {"frames": ones, "frames_failed": zeros, "frames_without_pixel_size": missing}
        cols |= {f"px_{c}": pc.cast(t.column(f"px_{c}"), pa.int64()) for c in classes}
        cols |= {f"area_m2_{c}": pc.cast(t.column(f"area_m2_{c}"), pa.float64()) for c in classes}
        if counts:
            cols |= {f"count_{c}": pc.cast(t.column(f"count_{c}"), pa.int64()) for c in classes}
    return combine(pa.table(cols), ["model_id", *by], classes, counts)


def group_partials(
    stats_ds: Any,
    errors_ds: Any | None,
    by: list[str],
    classes: list[str],
    losers: pa.Table | None = None,
    counts: bool = False,
) -> pa.Table:
    """Ray datasets of stats (and errors) rows -> partial totals per block, collected on the driver.

    ``losers``: stats rows to leave out (the stats dataset then carries ``path`` and ``relative_path``).
    ``counts``: the stats carry ``count_<class>`` columns (an instance model's)."""
    import ray

    kw = {"by": by, "classes": classes, "counts": counts}
    ds = stats_ds.map_batches(
        partial_totals, batch_size=None, batch_format="pyarrow", fn_kwargs={**kw, "errors": False, "losers": losers}
    )
    if errors_ds is not None:
        failed = errors_ds.map_batches(
            partial_totals, batch_size=None, batch_format="pyarrow", fn_kwargs={**kw, "errors": True}
        )
        ds = ds.union(failed)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else partial_totals(pa.table({}), by, classes, errors=True, counts=counts)


def finish(partials: pa.Table, by: list[str], classes: list[str], counts: bool = False) -> pa.Table:
    """Partials of one model (and of errors) -> one row per group with totals and shares, sorted."""
    t = combine(partials, by, classes, counts)
    out: dict[str, Any] = {k: t.column(k) for k in by}
    out |= {name: t.column(name) for name in COUNTS}
    px = [t.column(f"px_{c}") for c in classes]
    px_total = px[0]
    for col in px[1:]:
        px_total = pc.add(px_total, col)
    no_frames = pc.equal(t.column("frames"), 0)  # a group where every frame failed has no area
    area = [pc.if_else(no_frames, pa.scalar(None, pa.float64()), t.column(f"area_m2_{c}")) for c in classes]
    area_total = area[0]
    for col in area[1:]:
        area_total = pc.add(area_total, col)  # null if any is null
    by_area = pc.fill_null(pc.greater(area_total, 0), False)
    out |= {f"px_{c}": p for c, p in zip(classes, px, strict=True)}
    out["px_total"] = px_total
    if counts:
        numbers = [t.column(f"count_{c}") for c in classes]
        out |= {f"count_{c}": v for c, v in zip(classes, numbers, strict=True)}
        count_total = numbers[0]
        for col in numbers[1:]:
            count_total = pc.add(count_total, col)
        out["count_total"] = count_total
    out |= {f"area_m2_{c}": a for c, a in zip(classes, area, strict=True)}
    out["area_m2_total"] = area_total
    px_f = pc.cast(px_total, pa.float64())
    for c, p, a in zip(classes, px, area, strict=True):
        share_px = pc.if_else(pc.greater(px_f, 0), pc.divide(pc.cast(p, pa.float64()), px_f), None)
        out[f"share_{c}"] = pc.if_else(by_area, pc.divide(a, area_total), share_px)
    basis = pc.if_else(pc.greater(px_total, 0), pa.scalar("pixels"), pa.scalar(None, pa.string()))
    out["share_basis"] = pc.if_else(by_area, pa.scalar("area"), basis)
    return pa.table(out).sort_by([(k, "ascending") for k in by])
