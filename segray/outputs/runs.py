"""``segray runs``: what the runs on one output did, who holds it now, and how many frames it has."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from segray import storage
from segray.outputs.lease import read_lease
from segray.outputs.read import scan_keys, stats_parts, stats_uri


@dataclass
class OutputReport:
    output: str
    runs: list[dict[str, Any]]  # the _runs/*.json records, oldest first
    lease: str  # who holds the output, or that nobody does
    stats_rows: int
    frames: dict[str, int]  # model id -> frames with a stats row (each counted once)
    parts: int


def output_report(output: str) -> OutputReport:
    runs_uri = storage.join(output, "_runs")
    fs = storage.resolve(runs_uri)[0]
    runs = []
    for path in storage.list_files(runs_uri, (".json",)):
        with fs.open_input_stream(path) as f:
            record = json.loads(f.read())
        record.setdefault("run_id", record.get("compact_id", path.rsplit("/", 1)[-1]))
        runs.append(record)
    runs.sort(key=lambda r: str(r.get("started_at", r["run_id"])))
    held = read_lease(output)
    if held is None:
        lease = "free (never taken)"
    elif held.released:
        lease = f"free (last released by run {held.run_id})"
    elif held.is_free():
        lease = f"free: {held.describe()} stopped sending heartbeats {held.age():.0f} s ago (it died)"
    else:
        lease = f"held by {held.describe()}, last heartbeat {held.age(time.time()):.0f} s ago"
    parts = stats_parts(output)
    keys = scan_keys(storage.resolve(stats_uri(output))[0], parts)
    win = keys.winners()
    frames: dict[str, int] = {}
    for mid in win.column("model_id").to_pylist():
        frames[mid] = frames.get(mid, 0) + 1
    return OutputReport(output, runs, lease, keys.rows, frames, len(parts))


def run_status(run: dict[str, Any]) -> str:
    """How a finished run ended (a run that died wrote no record; the lease line tells of it)."""
    status = str(run.get("status", "complete"))  # records written before status existed ended complete
    if status == "limited":
        return f"limited ({run.get('left_by_limit', 0)} left)"
    if status == "over failure budget":
        return "exit 3: over the failure budget"
    return status


def format_report(r: OutputReport) -> str:
    lines = [f"output {r.output}", f"lease: {r.lease}", ""]
    head = (
        f"{'run':<33} {'started (UTC)':<20} {'model':<34} {'frames in':>9} {'labelled':>9} {'failed':>7} "
        f"{'skipped':>8} {'frames/s':>9}  status"
    )
    lines += [head, "-" * len(head)]
    for run in r.runs:
        if "compact_id" in run:
            lines.append(
                f"{run['run_id']:<33} {'':<20} {'(compaction)':<34} {run['rows_before']:>9} {run['rows_after']:>9} "
                f"{'':>7} {'':>8} {'':>9}  {run['parts_before']} parts -> {run['files_after']} files"
            )
            continue
        lines.append(
            f"{run['run_id']:<33} {str(run.get('started_at', ''))[:19]:<20} {str(run.get('model_id', '')):<34} "
            f"{run.get('frames_in', 0):>9} {run.get('labelled', 0):>9} {run.get('failed', 0):>7} "
            f"{run.get('skipped_done', 0):>8} {run.get('frames_per_s', 0):>9.2f}  {run_status(run)}"
        )
    if not r.runs:
        lines.append("(no finished runs)")
    lines.append("")
    lines.append(f"stats: {r.stats_rows} rows in {r.parts} files")
    for mid, n in sorted(r.frames.items()):
        lines.append(f"  {mid}: {n} frames (one row each)")
    if r.stats_rows > sum(r.frames.values()):
        lines.append(
            f"  {r.stats_rows - sum(r.frames.values())} superseded rows are ignored by every reader; "
            "`segray compact` removes them"
        )
    return "\n".join(lines)
