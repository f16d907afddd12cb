"""The class map that a reference sample is drawn from and checked against: a labelling output's COG
masks (``masks/**/*.tif``, all on one CRS), or one mask GeoTIFF (uint8 class ids, nodata 255).

Class names come from ``--labels`` (a label map), else from the labelling output's stats (the label map
its rows were written with); a single mask without ``--labels`` names its classes by their ids. Every
figure taken from the map is read window by window (the masks' own blocks), so a mask is never held
whole, and areas come from each mask's CRS (:mod:`segray.geo.areas`), not from pixel counts.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from segray import storage
from segray.geo.areas import class_areas, row_areas_m2
from segray.geo.cog import NODATA
from segray.geo.scene import SceneInfo, block_windows, is_geodata, open_scene, read_info
from segray.labels import BUILTIN, LabelMap, load_label_map

#: Mask files of a labelling output (its GeoTIFF scenes' masks).
MASK_SUFFIXES = (".tif", ".tiff")
#: Class ids a uint8 mask can hold besides nodata.
MAX_CLASSES = NODATA


@dataclass(frozen=True)
class MapMask:
    """One mask of the map: ``key`` is its path under the labelling output (``masks/<scene>.tif``), or
    the file's name for a single mask GeoTIFF; points carry it to say which mask they were drawn from."""

    key: str
    uri: str
    info: SceneInfo

    def centre(self, row: np.ndarray, col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The CRS coordinates of pixel centres."""
        a, b, c, d, e, f = self.info.transform
        return a * (col + 0.5) + b * (row + 0.5) + c, d * (col + 0.5) + e * (row + 0.5) + f

    def pixel(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row, col, inside)`` of CRS coordinates: the pixel each point falls in, and whether it is on
        the mask's grid at all."""
        inverse = ~self.info.affine()
        col_f, row_f = inverse @ (np.asarray(x, np.float64), np.asarray(y, np.float64))
        row, col = np.floor(row_f).astype(np.int64), np.floor(col_f).astype(np.int64)
        inside = (row >= 0) & (row < self.info.height) & (col >= 0) & (col < self.info.width)
        return row, col, inside


@dataclass(frozen=True)
class ClassMap:
    """A map's masks (sorted by key), its CRS and its class names (None: named by id)."""

    source: str
    masks: list[MapMask]
    crs: str
    label_map: LabelMap | None

    def name(self, class_id: int) -> str:
        if self.label_map is not None and class_id < self.label_map.num_classes:
            return self.label_map.names[class_id]
        return str(class_id)

    def class_id(self, value: Any) -> int | None:
        """A class given by name (or, failing that, by its id) -> its id; None when the map has no such
        class (a label map's classes are the map's; without one, any id a uint8 mask holds)."""
        text = str(value).strip()
        if self.label_map is not None:
            if text in self.label_map.names:
                return self.label_map.names.index(text)
            limit = self.label_map.num_classes
        else:
            limit = MAX_CLASSES
        return int(text) if text.isdigit() and int(text) < limit else None

    def mask(self, key: str) -> MapMask | None:
        return next((m for m in self.masks if m.key == key), None)


def _output_label_map(uri: str) -> LabelMap | None:
    """The label map a labelling output's stats rows were written with (their schema's metadata)."""
    stats = storage.join(uri, "stats")
    parts = storage.list_files(stats, (".parquet",))
    if not parts:
        return None
    fs = storage.resolve(stats)[0]
    with fs.open_input_file(parts[0]) as f:
        meta = (pq.read_schema(io.BytesIO(f.read())).metadata or {}).get(b"segray.label_map")
    return LabelMap.from_json(meta.decode(), parts[0]) if meta else None


def named_label_map(spec: str) -> LabelMap:
    """``--labels``: a built-in name, a label-map JSON file, or a labelling output whose stats name the
    classes (so a single mask of that output gets its class names without a separate file)."""
    if spec in BUILTIN or spec.lower().endswith(".json"):
        return load_label_map(spec)
    found = _output_label_map(spec)
    if found is None:
        raise ValueError(
            f"--labels {spec}: not a built-in name ({', '.join(BUILTIN)}), a label-map .json file, "
            "or a labelling output with stats/"
        )
    return found


def _masks(uri: str) -> list[MapMask]:
    if is_geodata(uri):
        return [MapMask(uri.rstrip("/").rsplit("/", 1)[-1], uri, read_info(uri))]
    root = storage.resolve(uri)[1]
    paths = storage.list_files(storage.join(uri, "masks"), MASK_SUFFIXES)
    if not paths:
        raise ValueError(f"{uri}: no masks/*.tif under it (a labelling output of GeoTIFF scenes, or one mask GeoTIFF)")
    keys = [posixpath.relpath(p, root) for p in paths]
    return [MapMask(k, storage.join(uri, k), read_info(storage.join(uri, k))) for k in keys]


def open_map(uri: str, labels: str | None = None) -> ClassMap:
    """Find a map's masks and class names; refuse masks without a CRS, of several CRSs, or not uint8."""
    masks = _masks(uri)
    for m in masks:
        if m.info.crs is None:
            raise ValueError(f"{m.uri}: the mask has no CRS: its areas and points have no place on the ground")
        if m.info.count != 1 or m.info.dtypes[0] != "uint8":
            raise ValueError(f"{m.uri}: a class mask is one uint8 band, got {m.info.count} x {m.info.dtypes[0]}")
    crss = sorted({m.info.crs for m in masks if m.info.crs is not None})
    if len(crss) > 1:
        raise ValueError(f"{uri}: the masks are on {len(crss)} CRSs ({', '.join(crss)}); sample each CRS on its own")
    if labels is not None:
        label_map: LabelMap | None = named_label_map(labels)
    else:
        label_map = None if is_geodata(uri) else _output_label_map(uri)
    return ClassMap(uri, masks, crss[0], label_map)


def mask_windows(mask: MapMask) -> Iterator[tuple[Any, np.ndarray]]:
    """``(window, class ids)`` of each of the mask's blocks, in a fixed order (nodata stays 255)."""
    with open_scene(mask.uri) as ds:
        for window in block_windows(mask.info):
            yield window, ds.read(1, window=window)


@dataclass(frozen=True)
class MapTotals:
    """Pixels and m^2 per class id over all masks (shape (MAX_CLASSES,)), and pixels per class in each
    block of each mask (the sampler's index of where a class's n-th pixel lies)."""

    pixels: np.ndarray
    area_m2: np.ndarray
    block_pixels: list[list[np.ndarray]]


def map_totals(cmap: ClassMap) -> MapTotals:
    """Count each class's pixels and area, block by block; a mask value beyond the label map is an error."""
    pixels = np.zeros(MAX_CLASSES, np.int64)
    area = np.zeros(MAX_CLASSES, np.float64)
    per_block: list[list[np.ndarray]] = []
    limit = cmap.label_map.num_classes if cmap.label_map is not None else MAX_CLASSES
    for m in cmap.masks:
        rows = row_areas_m2(m.info.crs, m.info.transform, m.info.height)
        blocks = []
        for window, ids in mask_windows(m):
            top = int(window.row_off)
            counts = np.bincount(ids[ids != NODATA].ravel(), minlength=MAX_CLASSES)[:MAX_CLASSES]
            if counts[limit:].any():
                stray = np.flatnonzero(counts[limit:]) + limit
                raise ValueError(
                    f"{m.uri}: mask values {stray.tolist()} are not classes of the label map (0..{limit - 1})"
                )
            blocks.append(counts)
            pixels += counts
            area += class_areas(ids, rows[top : top + ids.shape[0]], MAX_CLASSES, ignore=NODATA)
        per_block.append(blocks)
    return MapTotals(pixels, area, per_block)


def classes_at(mask: MapMask, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """The mask's values at pixels (row, col) (all on its grid), read one small window per point."""
    from rasterio.windows import Window

    out = np.empty(len(row), np.int64)
    with open_scene(mask.uri) as ds:
        for i, (r, c) in enumerate(zip(row.tolist(), col.tolist(), strict=True)):
            out[i] = int(ds.read(1, window=Window(c, r, 1, 1))[0, 0])
    return out
