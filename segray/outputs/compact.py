"""``segray compact``: rewrite ``stats/`` as a few large Parquet files with one row per frame and model
(and an instance model's ``instances/`` as a few files of its current rows).

A nightly output of 1M frames written in 128-row parts is about 8k files, and every reader and every
S3 LIST pays for each. Compaction:

1. takes the output's lease (:mod:`segray.outputs.lease`), so no labelling run writes meanwhile (and
   refuses, changing nothing, while a run holds it: step 4 would delete parts that run adds to);
2. reads the key columns of every part and picks one row per (relative_path, model_id), as the
   readers do (:mod:`segray.outputs.read`);
3. writes the kept rows, sorted by model and path, as ``stats/compact-<id>-<n>.parquet`` files of at
   most ``rows_per_file`` rows, each published whole; then the ``instances/`` rows of the runs those
   rows name (:func:`~segray.outputs.read.current_instances`: rows of superseded runs go) as
   ``instances/compact-<id>-<n>.parquet``;
4. records what it did in ``_runs/compact-<id>.json``, then deletes the parts it read.

Between 3 and 4 a reader sees each row twice, in a part and in its compacted copy, with the same
key, time and run: the readers keep one. A reader that listed a part that 4 then deletes starts
over. If compaction dies half-way, the next one (or any reader) resolves the leftovers the same way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from segray import storage
from segray.outputs.lease import LeaseHeld, OutputLease, read_lease
from segray.outputs.read import (
    INSTANCE_KEY,
    KEY,
    concat,
    current_instances,
    instance_parts,
    read_parts,
    scan_keys,
    stats_parts,
)
from segray.outputs.schema import to_parquet_bytes

log = logging.getLogger("segray.compact")

#: Rows per compacted file: about 100-300 MB in memory for an 11-40-class label map.
DEFAULT_ROWS_PER_FILE = 250_000
#: Parts read into memory at once while compacting.
READ_CHUNK = 256
DELETE_THREADS = 16


@dataclass
class CompactSummary:
    compact_id: str
    output: str
    parts_before: int
    rows_before: int
    files_after: int
    rows_after: int
    seconds: float
    files: list[str]
    instance_parts_before: int = 0
    instance_rows_before: int = 0
    instance_rows_after: int = 0
    instance_files: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def compact(output: str, rows_per_file: int = DEFAULT_ROWS_PER_FILE) -> CompactSummary:
    """Compact ``output``'s ``stats/`` in place (local or ``s3://``); see the module docstring."""
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    storage.check_writable(output)
    started = time.time()
    compact_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    try:
        lease = OutputLease(output, f"compact-{compact_id}", purpose="compact").acquire()
    except LeaseHeld as e:
        raise LeaseHeld(_refusal(output, e)) from e
    try:
        parts = stats_parts(output)
        fs = storage.resolve(storage.join(output, "stats"))[0]
        keys = scan_keys(fs, parts)
        win = keys.winners().sort_by([(k, "ascending") for k in KEY])
        log.info("%s: %d rows in %d parts, %d after keeping one per frame and model", output, keys.rows,
                 len(parts), win.num_rows)  # fmt: skip
        written = _write_compacted(output, fs, parts, win, rows_per_file, compact_id, lease)
        inst_parts = instance_parts(output)
        inst_rows, inst_written = _compact_instances(output, inst_parts, win, rows_per_file, compact_id, lease)
        lease.check()
        summary = CompactSummary(compact_id, output, len(parts), keys.rows, len(written), win.num_rows, 0.0, written)
        summary.instance_parts_before, summary.instance_files = len(inst_parts), inst_written
        summary.instance_rows_before, summary.instance_rows_after = inst_rows
        summary.seconds = round(time.time() - started, 3)
        storage.write_bytes(storage.join(output, "_runs", f"compact-{compact_id}.json"), summary.to_json().encode())
        keep = {storage.resolve(u)[1] for u in [*written, *inst_written]}
        with ThreadPoolExecutor(DELETE_THREADS) as pool:
            list(pool.map(fs.delete_file, [p for p in [*parts, *inst_parts] if p not in keep]))
    finally:
        lease.release()
    log.info("%s: stats compacted from %d parts to %d files in %.1f s", output, len(parts), len(written),
             summary.seconds)  # fmt: skip
    return summary


def _refusal(output: str, held: LeaseHeld) -> str:
    """Why compaction does not run beside the run that holds ``output``, and when to run it."""
    record = read_lease(output)
    if record is None or record.is_free():  # released between the refusal and this read
        return f"{held} Run `segray compact {output}` again."
    expires = datetime.fromtimestamp(record.heartbeat_at + record.ttl_s, timezone.utc).strftime("%H:%M:%S UTC")
    return (
        f"{output} is being written by {record.describe()}, last heartbeat {record.age():.0f} s ago. Compaction "
        "rewrites stats/ and instances/ and then deletes the parts it read, so beside a run that is still adding "
        "parts it could delete rows written meanwhile (an instance model's instances/ rows) with no copy kept; it "
        f"stops here and changes nothing. Run `segray compact {output}` once that run ends (`segray runs {output}` "
        f"shows who holds the output); if that run is dead, its lease lapses {record.ttl_s:.0f} s after its last "
        f"heartbeat ({expires})."
    )


def _write_compacted(
    output: str,
    fs: object,
    parts: list[str],
    win: pa.Table,
    rows_per_file: int,
    compact_id: str,
    lease: OutputLease,
) -> list[str]:
    """Kept rows -> compacted files, in (model_id, relative_path) order, reading parts in chunks."""
    written: list[str] = []
    part_of = win.column("part").to_numpy()
    row_of = win.column("row").to_numpy()
    for start in range(0, win.num_rows, rows_per_file):
        lease.check()
        part_ids = part_of[start : start + rows_per_file]
        rows = row_of[start : start + rows_per_file]
        needed = sorted(set(part_ids.tolist()))
        pieces: list[pa.Table] = []
        for c in range(0, len(needed), READ_CHUNK):
            chunk = needed[c : c + READ_CHUNK]
            tables = dict(zip(chunk, read_parts(fs, [parts[i] for i in chunk]), strict=True))
            for i, t in tables.items():
                sel = rows[part_ids == i]
                taken = t.take(pa.array(sel, pa.int64()))
                pieces.append(taken.append_column("_order", pa.array((part_ids == i).nonzero()[0])))
        table = concat(pieces).sort_by("_order").drop_columns(["_order"])
        uri = storage.join(output, "stats", f"compact-{compact_id}-{len(written):05d}.parquet")
        storage.write_bytes(uri, to_parquet_bytes(table))
        written.append(uri)
    return written


def _compact_instances(
    output: str,
    parts: list[str],
    win: pa.Table,
    rows_per_file: int,
    compact_id: str,
    lease: OutputLease,
) -> tuple[tuple[int, int], list[str]]:
    """``instances/`` parts -> files of the rows the kept stats rows ``win`` count, at most
    ``rows_per_file`` each. Reads every part at once, as :func:`~segray.outputs.read.read_instances`
    does. -> ((rows before, rows after), the files written)."""
    if not parts:
        return (0, 0), []
    fs = storage.resolve(storage.join(output, "instances"))[0]
    tables = read_parts(fs, parts)
    kept = current_instances(tables, win.select(INSTANCE_KEY))
    written: list[str] = []
    for start in range(0, kept.num_rows, rows_per_file):
        lease.check()
        uri = storage.join(output, "instances", f"compact-{compact_id}-{len(written):05d}.parquet")
        storage.write_bytes(uri, to_parquet_bytes(kept.slice(start, rows_per_file)))
        written.append(uri)
    return (sum(t.num_rows for t in tables), kept.num_rows), written
