"""Stage 3 (CPU tasks): masks as palette PNGs, stats and errors as Parquet, one file per batch.

Every file is published whole (S3 PUT, or write-to-hidden-name then rename on a disk), so a reader
never sees a half-written mask or Parquet part. Mask keys come from the frame's relative path, so
a rerun overwrites a mask instead of adding a second one. A frame whose mask cannot be written
goes to ``errors/`` (stage ``write``), never nowhere.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from segray import storage
from segray.frames.listing import safe_relative_path
from segray.labelling.stats import ERRORS_SCHEMA, passthrough_columns, stats_schema, to_parquet_bytes
from segray.labels import LabelMap

WRITE_THREADS = 8


def encode_mask_png(mask: np.ndarray, palette: list[int]) -> bytes:
    """A palette PNG; zlib's run-length strategy suits masks' long runs of one class: about half
    the size of the default strategy at the same speed (docs/benchmarks.md, PNG encoding)."""
    im = Image.fromarray(mask, mode="P")
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def batch_key(batch: dict[str, Any]) -> str:
    """12 hex digits naming a batch by the frames in it (same frames, same name)."""
    h = hashlib.sha256()
    for rel in sorted(str(r) for r in batch["relative_path"]):
        h.update(rel.encode() + b"\0")
    return h.hexdigest()[:12]


def mask_key(relative_path: str) -> str:
    return f"masks/{safe_relative_path(relative_path)}.png"


def write_outputs(
    batch: dict[str, Any], output: str, run_id: str, model_id: str, label_map: dict[str, Any]
) -> dict[str, np.ndarray]:
    lm = LabelMap.from_dict(label_map)
    palette = lm.palette()
    n = len(batch["uri"])
    errors = [str(e) for e in batch["error"]]
    stages = [str(s) for s in batch["error_stage"]]
    keys: list[str | None] = [None] * n

    def put(i: int) -> None:
        try:
            key = mask_key(str(batch["relative_path"][i]))
        except ValueError as e:
            errors[i], stages[i] = str(e), "key"
            return
        try:
            storage.write_bytes(storage.join(output, key), encode_mask_png(np.asarray(batch["mask"][i]), palette))
            keys[i] = key
        except Exception as e:  # noqa: BLE001 - recorded against the frame
            errors[i], stages[i] = f"writing mask: {e}", "write"

    todo = [i for i in range(n) if not errors[i]]
    with ThreadPoolExecutor(min(WRITE_THREADS, max(1, len(todo)))) as pool:
        list(pool.map(put, todo))

    now = datetime.now(timezone.utc)
    ok = [i for i in range(n) if not errors[i]]
    bad = [i for i in range(n) if errors[i]]
    # The part's name comes from the frames it holds: a write task that Ray retries (its worker died
    # after the PUT but before returning) rewrites the same key instead of adding duplicate rows.
    part = f"part-{run_id}-{batch_key(batch)}.parquet"
    if ok:
        schema = stats_schema(lm)
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
            "model_id": [model_id] * len(ok),
        }
        for c, name in enumerate(lm.names):
            cols[f"px_{name}"] = counts[:, c]
        for c, name in enumerate(lm.names):
            cols[f"frac_{name}"] = counts[:, c] / area
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
        cols["mean_confidence"] = np.asarray(batch["mean_confidence"], dtype=np.float64)[ok]
        cols["run_id"] = [run_id] * len(ok)
        cols["processed_at"] = pa.array([now] * len(ok), pa.timestamp("us", tz="UTC"))
        table = pa.table(cols, schema=schema)
        for extra in passthrough_columns(batch):
            table = table.append_column(extra, pa.array(list(np.asarray(batch[extra])[ok])))
        storage.write_bytes(storage.join(output, "stats", part), to_parquet_bytes(table))
    if bad:
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
        storage.write_bytes(storage.join(output, "errors", part), to_parquet_bytes(table))
    windowed = int(np.asarray(batch["windowed"])[ok].sum()) if "windowed" in batch and ok else 0
    return {"labelled": np.array([len(ok)]), "failed": np.array([len(bad)]), "windowed": np.array([windowed])}
