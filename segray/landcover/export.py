"""The land-cover export: stats of labelling jobs -> per-group totals (Parquet by date) + share charts.

Output layout under ``output``::

    totals/date=<date>/part-0.parquet   one row per (region, date) group (hive partitioning by date)
    totals/part-0.parquet               instead, when ``date`` is not among the ``by`` columns
    charts/<region>.png                 stacked area chart of class shares over the dates
    _export.json                        inputs, model id, groups, frames, files written

Stats rows of different models are never summed together: the input must hold one model id, or
``model_id`` must pick one. Frames failed come from the labelling outputs' ``errors/`` parts (they
describe each output's latest run) and are counted per group like the stats rows. Each frame counts
once (:mod:`segray.outputs.read`): a superseded stats row, or an error row of a frame that has a
stats row, is not counted.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from segray import storage
from segray.landcover.aggregate import finish, group_partials
from segray.landcover.chart import share_chart_png
from segray.landcover.inputs import find_inputs
from segray.outputs.read import current_errors, scan_keys
from segray.outputs.schema import to_parquet_bytes

log = logging.getLogger("segray.landcover")

DEFAULT_BY = ("region", "date")


@dataclass
class ExportSummary:
    inputs: list[str]
    output: str
    model_id: str
    by: list[str]
    groups: int
    frames: int
    frames_failed: int
    files: list[str] = field(default_factory=list)


def _one_model(partials: pa.Table, wanted: str | None, inputs: list[str]) -> tuple[pa.Table, str]:
    """Partials of every model -> those of one model (and of errors): models are never summed together."""
    ids = sorted(str(i) for i in set(partials.column("model_id").to_pylist()) if i is not None)
    if wanted is not None:
        if wanted not in ids:
            raise ValueError(f"--model-id {wanted!r}: not in the stats of {inputs} (model ids there: {ids})")
    elif len(ids) > 1:
        raise ValueError(
            f"the stats of {inputs} hold {len(ids)} model ids {ids}: areas of different models are never "
            "summed together; pick one with --model-id"
        )
    mid = wanted or (ids[0] if ids else "")
    # Error rows carry no model id: they belong to the labelling runs of this output.
    keep = pc.fill_null(pc.equal(partials.column("model_id"), mid), True)
    return partials.filter(keep), mid


def _safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", value) or "_"


def run_export(
    stats: list[str], output: str, by: list[str] | tuple[str, ...] = DEFAULT_BY, model_id: str | None = None
) -> ExportSummary:
    import ray.data

    by = list(by)
    if not by or len(set(by)) != len(by):
        raise ValueError(f"--by {','.join(by)}: give one or more distinct column names")
    storage.check_writable(output)
    src = find_inputs(stats)
    missing = [k for k in by if k not in src.schema.names]
    if missing:
        raise ValueError(
            f"--by {','.join(by)}: the stats have no {missing} column (columns: {src.schema.names}); carry it "
            "from the manifest or add it with --tag KEY=VALUE when labelling"
        )
    classes = src.classes
    counts = all(f"count_{c}" in src.schema.names for c in classes)  # an instance model's stats
    needed = [*by, "model_id", "pixel_area_m2", *(f"px_{c}" for c in classes), *(f"area_m2_{c}" for c in classes)]
    needed += [f"count_{c}" for c in classes] if counts else []
    absent = [c for c in needed if c not in src.schema.names]
    if absent:
        raise ValueError(f"{src.stats_files[0]}: stats rows lack {absent}; relabel with this segray version")
    # Each frame counts once: rows superseded by a later row of the same frame and model are
    # dropped where they are read, failed frames that have a stats row (or a later error) too.
    keys = scan_keys(src.filesystem, src.stats_files)
    losers = keys.losers()
    if losers.num_rows:
        log.info("%d stats rows superseded by later rows of the same frame and model: not counted", losers.num_rows)
    ds = ray.data.read_parquet(src.stats_files, filesystem=src.filesystem, include_paths=True)
    ds = ds.select_columns(list(dict.fromkeys([*needed, "relative_path", "path"])))
    errors = current_errors(src.filesystem, src.errors_files, keys)
    errors_ds = ray.data.from_arrow(errors) if errors.num_rows else None
    partials, mid = _one_model(group_partials(ds, errors_ds, by, classes, losers, counts), model_id, stats)
    table = finish(partials, by, classes, counts)
    table = table.append_column("model_id", pa.array([mid] * table.num_rows, pa.string()))

    written: list[str] = []
    totals_uri = storage.join(output, "totals")
    stale = set(storage.list_files(totals_uri, (".parquet",)))
    if "date" in by:
        for d in sorted(set(table.column("date").to_pylist())):
            part = table.filter(pc.equal(table.column("date"), d)).drop_columns(["date"])
            written.append(storage.join(totals_uri, f"date={quote(d, safe='')}", "part-0.parquet"))
            storage.write_bytes(written[-1], to_parquet_bytes(part))
    else:
        written.append(storage.join(totals_uri, "part-0.parquet"))
        storage.write_bytes(written[-1], to_parquet_bytes(table))
    fs = storage.resolve(output)[0]
    for path in stale - {storage.resolve(u)[1] for u in written}:  # partitions of an earlier export
        fs.delete_file(path)

    if "date" in by:
        others = [k for k in by if k != "date"]
        groups = sorted({tuple(r[k] for k in others) for r in table.select(others).to_pylist()}) if others else [()]
        for g in groups:
            rows = table
            for k, v in zip(others, g, strict=True):
                rows = rows.filter(pc.equal(rows.column(k), v))
            name = "-".join(_safe(v) for v in g) if g else "all"
            title = ", ".join(f"{k} {v}" for k, v in zip(others, g, strict=True)) or "all frames"
            written.append(storage.join(output, "charts", f"{name}.png"))
            storage.write_bytes(written[-1], share_chart_png(rows, classes, f"{title} ({mid})", src.label_map))
    else:
        log.info("no date among --by %s: no charts over time", by)

    summary = ExportSummary(
        inputs=list(stats),
        output=output,
        model_id=mid,
        by=by,
        groups=table.num_rows,
        frames=int(pc.sum(table.column("frames")).as_py() or 0),
        frames_failed=int(pc.sum(table.column("frames_failed")).as_py() or 0),
        files=written,
    )
    storage.write_bytes(storage.join(output, "_export.json"), json.dumps(asdict(summary), indent=2).encode())
    return summary
