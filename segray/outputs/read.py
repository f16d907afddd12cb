"""Reading ``stats/`` so that every frame counts once, whatever the folder holds.

``stats/`` may hold more than one row for a frame and model: a run that was taken over while still
writing, parts left beside their compacted copy by an interrupted ``segray compact``, or files a user
copied in. Every reader in segray (``landcover``, ``runs``, ``--print-table``, :func:`read_stats`)
keeps one row per ``(relative_path, model_id)``: the latest by ``processed_at``, then ``run_id``.
An instance model's ``instances/`` rows count for the run their frame's current stats row names
(:func:`read_instances`).
Rows of different models stay side by side, told apart by ``model_id``.

The same rule in DuckDB (``DUCKDB_LATEST``)::

    SELECT * FROM read_parquet('out/stats/**/*.parquet', union_by_name = true)
    QUALIFY row_number() OVER (PARTITION BY relative_path, model_id
                               ORDER BY processed_at DESC, run_id DESC) = 1

Only the key columns of every part are read to find duplicates, so finding none costs one pass over
four columns.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segray import storage

KEY = ["relative_path", "model_id"]
ORDER = ["processed_at", "run_id"]
#: The columns that tie an instance row to the stats row whose run it belongs to.
INSTANCE_KEY = ["relative_path", "model_id", "run_id"]
#: Frames are keyed within one output: outputs read together (one per night) keep their own rows.
GROUP = ["output", *KEY]
READ_THREADS = 16
#: A reader that finds a part gone between listing and reading (compaction replaced it) starts over
#: (:func:`segray.storage.read_listed`), this many times at most.
READ_ATTEMPTS = 3

DUCKDB_LATEST = (
    "SELECT * FROM read_parquet('{stats}/**/*.parquet', union_by_name = true) "
    "QUALIFY row_number() OVER (PARTITION BY relative_path, model_id ORDER BY processed_at DESC, run_id DESC) = 1"
)


def stats_uri(output: str) -> str:
    """``output`` may be a labelling output or its ``stats/`` folder."""
    return output if output.rstrip("/").rsplit("/", 1)[-1] == "stats" else storage.join(output, "stats")


def stats_parts(output: str) -> list[str]:
    """Filesystem paths of every stats part (sub-folders included; hidden and ``_`` names skipped)."""
    return storage.list_files(stats_uri(output), (".parquet",))


def _read(fs: object, path: str, columns: list[str] | None) -> pa.Table:
    """``columns`` the part lacks are left out (a column added to the schema after the part was
    written): :func:`concat` fills them with nulls beside parts that have them."""
    with fs.open_input_file(path) as f:  # type: ignore[attr-defined]
        part = pq.ParquetFile(io.BytesIO(f.read()))
        names = set(part.schema_arrow.names)
        return part.read(columns=None if columns is None else [c for c in columns if c in names])


def output_of(path: str, folder: str = "stats") -> str:
    """The output a part belongs to: its path up to the last ``/<folder>/``."""
    idx = path.rfind(f"/{folder}/")
    return path[:idx] if idx >= 0 else ""


def read_parts(fs: object, paths: list[str], columns: list[str] | None = None) -> list[pa.Table]:
    """Tables of ``paths``, in order, read concurrently (object stores are latency-bound)."""
    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(paths)))) as pool:
        return list(pool.map(lambda p: _read(fs, p, columns), paths))


@dataclass(frozen=True)
class Keys:
    """The key columns of every stats row: which part (index into ``parts``) and row each came from."""

    parts: list[str]
    table: pa.Table  # output, relative_path, model_id, processed_at, run_id, part (int32), row (int64)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def winners(self) -> pa.Table:
        """The key table with one row per (output, relative_path, model_id): the latest."""
        t = self.table
        if t.num_rows == 0:
            return t
        distinct = t.group_by(GROUP, use_threads=False).aggregate([]).num_rows
        if distinct == t.num_rows:
            return t
        order = [(c, "descending") for c in (*ORDER, "part", "row")]
        t = t.sort_by(order)
        t = t.append_column("_i", pa.array(np.arange(t.num_rows)))
        first = t.group_by(GROUP, use_threads=False).aggregate([("_i", "min")]).column("_i_min")
        return t.take(first).drop_columns(["_i"])

    def losers(self) -> pa.Table:
        """The rows that a reader must drop: (part path, relative_path, model_id)."""
        win = self.winners()
        t = self.table
        if win.num_rows < t.num_rows:
            ids = pc.add(pc.multiply(pc.cast(t.column("part"), pa.int64()), 1 << 40), t.column("row"))
            won = pc.add(pc.multiply(pc.cast(win.column("part"), pa.int64()), 1 << 40), win.column("row"))
            t = t.filter(pc.invert(pc.is_in(ids, value_set=won)))
        else:
            t = t.slice(0, 0)
        paths = pa.array([self.parts[i] for i in t.column("part").to_pylist()], pa.string())
        return pa.table({"path": paths, **{k: pc.cast(t.column(k), pa.string()) for k in KEY}})


def scan_keys(fs: object, parts: list[str]) -> Keys:
    """Read the key columns of every part (concurrently), tagging rows with their output, part and row."""
    tables = []
    for i, t in enumerate(read_parts(fs, parts, [*KEY, *ORDER])):
        n = t.num_rows
        cols = {
            "output": pa.array([output_of(parts[i])] * n, pa.string()),
            **{k: pc.cast(t.column(k), pa.string()) for k in KEY},
            "processed_at": pc.cast(t.column("processed_at"), pa.timestamp("us", "UTC")),
            "run_id": pc.cast(t.column("run_id"), pa.string()),
            "part": pa.array(np.full(n, i, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
        }
        tables.append(pa.table(cols))
    if not tables:
        return Keys(parts, KEYS_SCHEMA.empty_table())
    return Keys(parts, pa.concat_tables(tables))


KEYS_SCHEMA = pa.schema(
    [
        ("output", pa.string()),
        ("relative_path", pa.string()),
        ("model_id", pa.string()),
        ("processed_at", pa.timestamp("us", "UTC")),
        ("run_id", pa.string()),
        ("part", pa.int32()),
        ("row", pa.int64()),
    ]
)


def latest_rows(tables: list[pa.Table], keys: Keys) -> pa.Table:
    """Whole parts (as read, in ``keys.parts`` order) -> one row per (output, relative_path, model_id)."""
    win = keys.winners()
    by_part: dict[int, list[int]] = {}
    for p, r in zip(win.column("part").to_pylist(), win.column("row").to_pylist(), strict=True):
        by_part.setdefault(p, []).append(r)
    kept = []
    for i, t in enumerate(tables):
        rows = by_part.get(i)
        if rows is None:
            continue
        kept.append(t if len(rows) == t.num_rows else t.take(pa.array(sorted(rows), pa.int64())))
    return concat(kept)


def concat(tables: list[pa.Table]) -> pa.Table:
    """Parts with the same core columns but maybe different manifest columns -> one table.

    The first part's schema metadata (the label map) is kept."""
    if not tables:
        return pa.table({})
    meta = tables[0].schema.metadata
    out = pa.concat_tables(tables, promote_options="permissive")
    return out.replace_schema_metadata(meta)


def current_errors(fs: object, error_parts: list[str], keys: Keys) -> pa.Table:
    """Error rows that still describe a frame: one per (output, relative_path), the latest, and
    none for a frame that has a stats row (a later run labelled it)."""
    tables = read_parts(fs, error_parts)
    if not tables:
        return pa.table({})
    for i, t in enumerate(tables):
        tables[i] = t.append_column("output", pa.array([output_of(error_parts[i], "errors")] * t.num_rows, pa.string()))
    t = concat(tables)
    done = pc.binary_join_element_wise(keys.table.column("output"), keys.table.column("relative_path"), "\0")
    key = pc.binary_join_element_wise(t.column("output"), pc.cast(t.column("relative_path"), pa.string()), "\0")
    t = t.filter(pc.invert(pc.is_in(key, value_set=done)))
    if t.num_rows:
        t = t.sort_by([("processed_at", "descending"), ("run_id", "descending")])
        t = t.append_column("_i", pa.array(np.arange(t.num_rows)))
        first = t.group_by(["output", "relative_path"], use_threads=False).aggregate([("_i", "min")])
        t = t.take(first.column("_i_min")).drop_columns(["_i"])
    return t.drop_columns(["output"])


def read_stats(output: str, model_id: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """One row per frame and model from a labelling output (local or ``s3://``) or its ``stats/``.

    ``model_id`` keeps one model's rows; ``columns`` reads only those (the keys are read anyway).
    An output with no stats gives an empty table.
    """
    fs = storage.resolve(stats_uri(output))[0]
    wanted = None if columns is None else list(dict.fromkeys([*columns, *KEY, *ORDER]))

    def latest(parts: list[str]) -> pa.Table:
        keys = scan_keys(fs, parts)
        return latest_rows(read_parts(fs, parts, wanted), keys)

    table = storage.read_listed(lambda: stats_parts(output), latest, READ_ATTEMPTS)
    if model_id is not None and table.num_rows:
        table = table.filter(pc.equal(table.column("model_id"), model_id))
    if columns is not None and table.num_rows:
        table = table.select(columns)
    return table


def instance_parts(output: str) -> list[str]:
    """Filesystem paths of every ``instances/`` part of an output (none when it has no folder)."""
    uri = storage.join(output, "instances")
    return storage.list_files(uri, (".parquet",)) if storage.exists(uri) else []


def current_instances(tables: list[pa.Table], current: pa.Table) -> pa.Table:
    """The instance rows of ``tables`` that belong to a frame's current stats row: ``current`` holds
    (relative_path, model_id, run_id) of those rows. A write retried within one run may leave a
    frame's rows in two parts; one is kept. Sorted by frame, model and id."""
    from segray.outputs.schema import INSTANCES_SCHEMA

    if not tables or not current.num_rows:
        return INSTANCES_SCHEMA.empty_table()
    t = concat(tables).cast(INSTANCES_SCHEMA)

    def joined(table: pa.Table) -> pa.Array:
        return pc.binary_join_element_wise(*(pc.cast(table.column(c), pa.string()) for c in INSTANCE_KEY), "\0")

    t = t.filter(pc.is_in(joined(t), value_set=joined(current).combine_chunks()))
    if t.num_rows:
        t = t.sort_by([("processed_at", "descending")]).append_column("_i", pa.array(np.arange(t.num_rows)))
        first = t.group_by(["relative_path", "model_id", "instance_id"], use_threads=False).aggregate([("_i", "min")])
        t = t.take(first.column("_i_min")).drop_columns(["_i"])
    return t.sort_by([("relative_path", "ascending"), ("model_id", "ascending"), ("instance_id", "ascending")])


def read_instances(output: str, model_id: str | None = None) -> pa.Table:
    """One row per instance of an instance model's labelling output (local or ``s3://``), for the
    frames' current stats rows only (:func:`read_stats`): the instances of the run that a frame's
    stats row names, so a frame labelled again (a rerun after an interruption, another
    ``--min-score``) never counts twice. ``model_id`` keeps one model's rows. Sorted by frame and id.
    """

    def listing() -> tuple[pa.Table, list[str]]:
        return read_stats(output, model_id, columns=INSTANCE_KEY), instance_parts(output)

    def current(found: tuple[pa.Table, list[str]]) -> pa.Table:
        rows, parts = found
        if not parts or not rows.num_rows:
            return current_instances([], rows)
        fs = storage.resolve(storage.join(output, "instances"))[0]
        return current_instances(read_parts(fs, parts), rows)

    return storage.read_listed(listing, current, READ_ATTEMPTS)
