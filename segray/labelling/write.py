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

A GeoTIFF scene (a frame whose ``geo_scene`` column holds its georeferencing) gets its class mask as
a Cloud-Optimized GeoTIFF on the scene's grid (``masks/<path>.tif``), and its stats row its CRS, its
bounds, its nodata pixels and areas from the CRS. GDAL is loaded only for batches that hold a scene.
A run with ``--write-confidence`` hands each scene's confidence map (``confidence_map``) here too: it
is written as a COG beside the mask (``confidence/<path>.tif``) before the stats row that names it.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from segray import storage
from segray.labels import LabelMap
from segray.outputs.masks import COG, PNG, confidence_key, mask_key, write_cog_mask
from segray.outputs.schema import (
    CLASS_AREA_COLUMN,
    CONFIDENCE_MAP_COLUMN,
    ERRORS_SCHEMA,
    GEO_SCENE_COLUMN,
    GEO_STATS_FIELDS,
    NODATA_PIXELS_COLUMN,
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
    n = len(batch["uri"])
    scenes = scene_texts(batch, n)
    keys = _write_masks(batch, output, lm, t, errors, stages, scenes)
    conf_keys = _write_confidence_maps(batch, output, errors, stages, scenes)

    now = datetime.now(timezone.utc)
    ok = [i for i in range(n) if not errors[i]]
    bad = [i for i in range(n) if errors[i]]
    # The part's name comes from the frames it holds: a write task that Ray retries (its worker died
    # after the PUT but before returning) rewrites the same key instead of adding duplicate rows.
    part = f"part-{run_id}-{batch_key(batch)}.parquet"
    for folder, table in (t.extra_tables(batch, ok, lm, model_id, run_id, now) if ok else {}).items():
        storage.write_bytes(storage.join(output, folder, part), to_parquet_bytes(table))
    if ok:
        table = _stats_table(batch, ok, keys, conf_keys, scenes, lm, t, model_id, run_id, now)
        storage.write_bytes(storage.join(output, "stats", part), to_parquet_bytes(table))
    if bad:
        table = _errors_table(batch, bad, errors, stages, run_id, now)
        storage.write_bytes(storage.join(output, "errors", part), to_parquet_bytes(table))
    windowed = int(np.asarray(batch["windowed"])[ok].sum()) if "windowed" in batch and ok else 0
    return {"labelled": np.array([len(ok)]), "failed": np.array([len(bad)]), "windowed": np.array([windowed])}


def scene_texts(batch: dict[str, Any], n: int) -> list[str]:
    """Each frame's scene description (JSON), "" for a frame that is not a GeoTIFF scene, and for
    every frame of a batch without the column."""
    if GEO_SCENE_COLUMN not in batch:
        return [""] * n
    return [s if isinstance(s, str) else "" for s in batch[GEO_SCENE_COLUMN]]


def _write_masks(
    batch: dict[str, Any],
    output: str,
    lm: LabelMap,
    task: Task,
    errors: list[str],
    stages: list[str],
    scenes: list[str],
) -> list[str | None]:
    """Writes the mask of every frame without an error, several at a time; returns each frame's mask
    key (None where there is none). A frame whose mask cannot be named or written gets its error
    and stage set in ``errors`` and ``stages``. A scene's mask is a COG, any other frame's the task's PNG."""
    n = len(batch["uri"])
    keys: list[str | None] = [None] * n

    def put(i: int) -> None:
        try:
            key = mask_key(str(batch["relative_path"][i]), COG if scenes[i] else PNG)
        except ValueError as e:
            errors[i], stages[i] = str(e), "key"
            return
        try:
            mask = np.asarray(batch["mask"][i])
            if scenes[i]:
                write_cog_mask(storage.join(output, key), scenes[i], mask, lm)
            else:
                storage.write_bytes(storage.join(output, key), task.encode_mask(mask, lm))
            keys[i] = key
        except Exception as e:  # noqa: BLE001 - recorded against the frame
            errors[i], stages[i] = f"writing mask: {e}", "write"

    todo = [i for i in range(n) if not errors[i]]
    with ThreadPoolExecutor(min(WRITE_THREADS, max(1, len(todo)))) as pool:
        list(pool.map(put, todo))
    return keys


def _write_confidence_maps(
    batch: dict[str, Any], output: str, errors: list[str], stages: list[str], scenes: list[str]
) -> list[str | None]:
    """Writes the confidence map of every scene without an error that has one (a run with
    ``--write-confidence``); returns each frame's key (None where there is none). A map that cannot be
    written puts its frame in ``errors`` (stage ``write``), as a mask would."""
    n = len(batch["uri"])
    keys: list[str | None] = [None] * n
    if CONFIDENCE_MAP_COLUMN not in batch:
        return keys

    def put(i: int) -> None:
        try:
            key = confidence_key(str(batch["relative_path"][i]))
            write_cog_mask(storage.join(output, key), scenes[i], np.asarray(batch[CONFIDENCE_MAP_COLUMN][i]), None)
            keys[i] = key
        except Exception as e:  # noqa: BLE001 - recorded against the frame
            errors[i], stages[i] = f"writing confidence map: {e}", "write"

    todo = [i for i in range(n) if not errors[i] and scenes[i] and np.asarray(batch[CONFIDENCE_MAP_COLUMN][i]).size]
    if todo:
        with ThreadPoolExecutor(min(WRITE_THREADS, len(todo))) as pool:
            list(pool.map(put, todo))
    return keys


def _stats_table(
    batch: dict[str, Any],
    ok: list[int],
    keys: list[str | None],
    conf_keys: list[str | None],
    scenes: list[str],
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
    sc = _scene_rows(batch, ok, scenes, lm.num_classes)
    # A scene's shares are of its valid pixels: nodata (255 in its mask) is no class's ground.
    valid = (w * h - sc.nodata).astype(np.float64)
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
    no_valid = sc.is_scene & (valid == 0)  # a scene that is all nodata has no shares
    with np.errstate(divide="ignore", invalid="ignore"):
        for c, name in enumerate(lm.names):
            cols[f"frac_{name}"] = pa.array(counts[:, c] / valid, pa.float64(), mask=no_valid)
    cols |= _area_columns(batch, ok, counts, lm, sc)
    cols["mean_confidence"] = np.asarray(batch["mean_confidence"], dtype=np.float64)[ok]
    cols["run_id"] = [run_id] * len(ok)
    cols["processed_at"] = pa.array([now] * len(ok), pa.timestamp("us", tz="UTC"))
    cols |= _geo_columns(sc)
    cols["confidence_path"] = pa.array([conf_keys[i] for i in ok], pa.string())
    table = pa.table(cols, schema=stats_schema(lm, counts=task.counts))
    for extra in passthrough_columns(batch):
        table = table.append_column(extra, pa.array(list(np.asarray(batch[extra])[ok])))
    return table


@dataclass(frozen=True)
class _SceneRows:
    """What the stats rows of a batch's labelled frames say of the GeoTIFF scenes among them."""

    #: Per frame, the scene's description; None for a frame that is not a scene.
    infos: list[Any]  # segray.geo.scene.SceneInfo | None
    #: Per frame, pixels without valid data; 0 for a frame that is not a scene.
    nodata: np.ndarray
    #: (frames, classes) m^2 per class from the scene's CRS; NaN rows where not known.
    class_area: np.ndarray
    #: Per frame, one pixel's m^2 from the CRS (a geographic CRS: the mean over the scene's rows);
    #: NaN where the frame's areas do not come from its CRS.
    crs_pixel_area: np.ndarray
    #: Per frame, whether the scene's CRS is projected (every pixel has the same area).
    projected: np.ndarray

    @property
    def is_scene(self) -> np.ndarray:
        return np.array([info is not None for info in self.infos], dtype=bool)

    @property
    def from_crs(self) -> np.ndarray:
        """Frames whose areas come from their CRS (``pixel_size_source`` ``crs``)."""
        return ~np.isnan(self.crs_pixel_area)


def _scene_rows(batch: dict[str, Any], ok: list[int], scenes: list[str], n_classes: int) -> _SceneRows:
    """The scene facts of frames ``ok``. A batch without scenes costs nothing here and loads no GDAL."""
    n = len(ok)
    infos: list[Any] = [None] * n
    px_area, projected = np.full(n, np.nan), np.zeros(n, dtype=bool)
    class_area = _per_class(batch, CLASS_AREA_COLUMN, ok, n_classes)
    nodata = np.zeros(n, dtype=np.int64)
    if any(scenes[i] for i in ok):
        from segray.geo.areas import scene_row_areas_m2
        from segray.geo.scenejson import scene_from_json

        given = np.nan_to_num(np.asarray(batch.get(NODATA_PIXELS_COLUMN, np.zeros(len(scenes))), np.float64))
        for j, i in enumerate(ok):
            if not scenes[i]:
                continue
            info = infos[j] = scene_from_json(scenes[i], str(batch["uri"][i]))
            nodata[j] = int(given[i])
            if info.crs is None or not np.isfinite(class_area[j]).all():
                continue  # no CRS (or no areas from it): the frame's areas follow the other frames' rule
            try:
                rows = scene_row_areas_m2(info)
            except ValueError:
                continue  # a grid whose areas the CRS cannot give (e.g. rotated in degrees)
            px_area[j], projected[j] = float(rows.mean()), not info.is_geographic
            if projected[j]:
                px_area[j] = float(rows[0])  # the one area of every pixel, exactly
    return _SceneRows(infos, nodata, class_area, px_area, projected)


def _per_class(batch: dict[str, Any], column: str, ok: list[int], n_classes: int) -> np.ndarray:
    """A (frames, classes) float column of frames ``ok``; NaN rows where the batch has no value."""
    out = np.full((len(ok), n_classes), np.nan)
    if column not in batch:
        return out
    values = batch[column]
    for j, i in enumerate(ok):
        row = np.asarray(values[i], dtype=np.float64).reshape(-1)
        if row.size == n_classes:
            out[j] = row
    return out


def _area_columns(
    batch: dict[str, Any], ok: list[int], counts: np.ndarray, lm: LabelMap, sc: _SceneRows
) -> dict[str, Any]:
    """``pixel_area_m2``, ``area_m2_<class>`` and ``pixel_size_source`` of frames ``ok``: null where a
    frame has no pixel size (areas are never guessed). A scene with a CRS takes its areas from the
    CRS (summed row by row, so a geographic scene's shrinking pixels count true)."""
    cols: dict[str, Any] = {}
    px_area = (
        np.asarray(batch["pixel_area_m2"], dtype=np.float64)[ok]
        if "pixel_area_m2" in batch
        else np.full(len(ok), np.nan)
    )
    from_crs = sc.from_crs
    px_area = np.where(from_crs, sc.crs_pixel_area, px_area)
    unknown = np.isnan(px_area)  # no pixel size: areas stay null, never guessed
    cols["pixel_area_m2"] = pa.array(px_area, pa.float64(), mask=unknown)
    for c, name in enumerate(lm.names):
        area = np.where(from_crs, sc.class_area[:, c], counts[:, c] * px_area)
        cols[f"area_m2_{name}"] = pa.array(area, pa.float64(), mask=unknown)
    sources = [str(batch["pixel_size_source"][i]) for i in ok] if "pixel_size_source" in batch else [""] * len(ok)
    sources = ["crs" if crs else s for s, crs in zip(sources, from_crs, strict=True)]
    cols["pixel_size_source"] = pa.array([s or None for s in sources], pa.string())
    return cols


def _geo_columns(sc: _SceneRows) -> dict[str, Any]:
    """The scene columns (:data:`segray.outputs.schema.GEO_STATS_FIELDS`) but ``confidence_path`` (which
    the writes give): null for frames that are not scenes; bounds null for a scene without a CRS;
    ``area_nodata_m2`` only in a projected CRS."""
    infos = sc.infos
    has_crs = [info is not None and info.crs is not None for info in infos]
    wgs84 = [info.bounds_wgs84 if crs else None for info, crs in zip(infos, has_crs, strict=True)]
    cols: dict[str, Any] = {"crs": [info.crs if info is not None else None for info in infos]}
    for k, name in enumerate(("bounds_left", "bounds_bottom", "bounds_right", "bounds_top")):
        cols[name] = [info.bounds[k] if crs else None for info, crs in zip(infos, has_crs, strict=True)]
    for k, name in enumerate(("lon_min", "lat_min", "lon_max", "lat_max")):
        cols[name] = [box[k] if box is not None else None for box in wgs84]
    cols["nodata_pixels"] = pa.array(sc.nodata, pa.int64(), mask=~sc.is_scene)
    nodata_area = sc.nodata * sc.crs_pixel_area
    cols["area_nodata_m2"] = pa.array(nodata_area, pa.float64(), mask=~(sc.projected & sc.from_crs))
    return {name: pa.array(cols[name], type_) for name, type_ in GEO_STATS_FIELDS if name in cols}


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
