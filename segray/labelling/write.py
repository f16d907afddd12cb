"""Stage 3 (CPU tasks): masks, stats and errors as Parquet, one file per batch, for every task.

The model's task (:mod:`segray.tasks`) encodes the masks (semantic: palette PNGs of class ids;
instance: 16-bit PNGs of instance ids, 0 = none), adds its stats columns and its tables beside
``stats/`` (instance: one ``instances/`` part per batch), written before the stats part. A frame's
stats row is written last, so a frame that has one has its mask and instances written (readers
count the instances of the run its stats row names).

Every file is published whole (S3 PUT, or write-to-hidden-name then rename on a disk), so a reader
never sees a half-written mask or Parquet part. Mask keys come from the frame's relative path, so
a rerun overwrites a mask instead of adding a second one. A frame whose mask cannot be written
goes to ``errors/`` (stage ``write``), never nowhere.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from segray import storage
from segray.labels import LabelMap
from segray.outputs.masks import mask_key
from segray.outputs.schema import (
    ERRORS_SCHEMA,
    ORIENTATION_COLUMN,
    passthrough_columns,
    stats_schema,
    to_parquet_bytes,
)
from segray.tasks import Task, task_named

WRITE_THREADS = 8


def batch_key(batch: dict[str, Any]) -> str:
    """12 hex digits naming a batch by the frames in it (same frames, same name)."""
    h = hashlib.sha256()
    for rel in sorted(str(r) for r in batch["relative_path"]):
        h.update(rel.encode() + b"\0")
    return h.hexdigest()[:12]


def write_outputs(
    batch: dict[str, Any], output: str, run_id: str, model_id: str, label_map: dict[str, Any], task: str = "semantic"
) -> dict[str, np.ndarray]:
    """Writes a batch's masks, then its instances, stats and errors parts; returns the batch's counts
    of frames labelled, failed and labelled in windows."""
    lm, t = LabelMap.from_dict(label_map), task_named(task)
    errors = [str(e) for e in batch["error"]]
    stages = [str(s) for s in batch["error_stage"]]
    keys = _write_masks(batch, output, lm, t, errors, stages)

    now = datetime.now(timezone.utc)
    n = len(batch["uri"])
    ok = [i for i in range(n) if not errors[i]]
    bad = [i for i in range(n) if errors[i]]
    # The part's name comes from the frames it holds: a write task that Ray retries (its worker died
    # after the PUT but before returning) rewrites the same key instead of adding duplicate rows.
    part = f"part-{run_id}-{batch_key(batch)}.parquet"
    for folder, table in (t.extra_tables(batch, ok, lm, model_id, run_id, now) if ok else {}).items():
        storage.write_bytes(storage.join(output, folder, part), to_parquet_bytes(table))
    if ok:
        table = _stats_table(batch, ok, keys, lm, t, model_id, run_id, now)
        storage.write_bytes(storage.join(output, "stats", part), to_parquet_bytes(table))
    if bad:
        table = _errors_table(batch, bad, errors, stages, run_id, now)
        storage.write_bytes(storage.join(output, "errors", part), to_parquet_bytes(table))
    windowed = int(np.asarray(batch["windowed"])[ok].sum()) if "windowed" in batch and ok else 0
    return {"labelled": np.array([len(ok)]), "failed": np.array([len(bad)]), "windowed": np.array([windowed])}


def _write_masks(
    batch: dict[str, Any], output: str, lm: LabelMap, task: Task, errors: list[str], stages: list[str]
) -> list[str | None]:
    """Writes the mask of every frame without an error, several at a time; returns each frame's mask
    key (None where there is none). A frame whose mask cannot be named or written gets its error
    and stage set in ``errors`` and ``stages``."""
    n = len(batch["uri"])
    keys: list[str | None] = [None] * n

    def put(i: int) -> None:
        try:
            key = mask_key(str(batch["relative_path"][i]))
        except ValueError as e:
            errors[i], stages[i] = str(e), "key"
            return
        try:
            mask = np.asarray(batch["mask"][i])
            png = task.encode_mask(mask, lm)
            storage.write_bytes(storage.join(output, key), png)
            keys[i] = key
        except Exception as e:  # noqa: BLE001 - recorded against the frame
            errors[i], stages[i] = f"writing mask: {e}", "write"

    todo = [i for i in range(n) if not errors[i]]
    with ThreadPoolExecutor(min(WRITE_THREADS, max(1, len(todo)))) as pool:
        list(pool.map(put, todo))
    return keys


def _stats_table(
    batch: dict[str, Any],
    ok: list[int],
    keys: list[str | None],
    lm: LabelMap,
    task: Task,
    model_id: str,
    run_id: str,
    now: datetime,
) -> pa.Table:
    """One stats row per labelled frame ``ok`` (schema: :func:`segray.outputs.schema.stats_schema`)."""
    counts = np.asarray(batch["class_pixels"])[ok]
    w = np.asarray(batch["width"])[ok].astype(np.int64)
    h = np.asarray(batch["height"])[ok].astype(np.int64)
    area = (w * h).astype(np.float64)
    cols: dict[str, Any] = {
        "source_uri": [str(batch["uri"][i]) for i in ok],
        "relative_path": [str(batch["relative_path"][i]) for i in ok],
        "mask_path": [keys[i] for i in ok],
        "width": w.astype(np.int32),
        "height": h.astype(np.int32),
        # A batch built without the read stage (a tool, a test) carries no orientation: as stored.
        ORIENTATION_COLUMN: (
            np.asarray(batch[ORIENTATION_COLUMN], dtype=np.int32)[ok]
            if ORIENTATION_COLUMN in batch
            else np.ones(len(ok), np.int32)
        ),
        "model_id": [model_id] * len(ok),
    }
    for c, name in enumerate(lm.names):
        cols[f"px_{name}"] = counts[:, c]
    cols |= task.frame_columns(batch, ok, lm)
    for c, name in enumerate(lm.names):
        cols[f"frac_{name}"] = counts[:, c] / area
    cols |= _area_columns(batch, ok, counts, lm)
    cols["mean_confidence"] = np.asarray(batch["mean_confidence"], dtype=np.float64)[ok]
    cols["run_id"] = [run_id] * len(ok)
    cols["processed_at"] = pa.array([now] * len(ok), pa.timestamp("us", tz="UTC"))
    table = pa.table(cols, schema=stats_schema(lm, counts=task.counts))
    for extra in passthrough_columns(batch):
        table = table.append_column(extra, pa.array(list(np.asarray(batch[extra])[ok])))
    return table


def _area_columns(batch: dict[str, Any], ok: list[int], counts: np.ndarray, lm: LabelMap) -> dict[str, Any]:
    """``pixel_area_m2``, ``area_m2_<class>`` and ``pixel_size_source`` of frames ``ok``: null where a
    frame has no pixel size (areas are never guessed)."""
    cols: dict[str, Any] = {}
    px_area = (
        np.asarray(batch["pixel_area_m2"], dtype=np.float64)[ok]
        if "pixel_area_m2" in batch
        else np.full(len(ok), np.nan)
    )
    unknown = np.isnan(px_area)  # no pixel size: areas stay null, never guessed
    cols["pixel_area_m2"] = pa.array(px_area, pa.float64(), mask=unknown)
    for c, name in enumerate(lm.names):
        cols[f"area_m2_{name}"] = pa.array(counts[:, c] * px_area, pa.float64(), mask=unknown)
    sources = [str(batch["pixel_size_source"][i]) for i in ok] if "pixel_size_source" in batch else [""] * len(ok)
    cols["pixel_size_source"] = pa.array([s or None for s in sources], pa.string())
    return cols


def _errors_table(
    batch: dict[str, Any], bad: list[int], errors: list[str], stages: list[str], run_id: str, now: datetime
) -> pa.Table:
    """One errors row per failed frame ``bad``, with the stage that failed and why (ERRORS_SCHEMA)."""
    table = pa.table(
        {
            "source_uri": [str(batch["uri"][i]) for i in bad],
            "relative_path": [str(batch["relative_path"][i]) for i in bad],
            "stage": [stages[i] for i in bad],
            "error": [errors[i] for i in bad],
            "run_id": [run_id] * len(bad),
            "processed_at": pa.array([now] * len(bad), pa.timestamp("us", tz="UTC")),
        },
        schema=ERRORS_SCHEMA,
    )
    for extra in passthrough_columns(batch):  # region, date...: failed frames count per group too
        table = table.append_column(extra, pa.array(list(np.asarray(batch[extra])[bad])))
    return table
