"""A reference sample for accuracy assessment: a stratified random sample of pixel centres, the map
classes being the strata (the stratified design of Olofsson et al. 2014, "Good practices for
estimating area and assessing accuracy of land change", Remote Sensing of Environment 148, 42-57).

Within a class every pixel of every mask of the map is equally likely to be drawn, and no pixel twice;
nodata pixels belong to no class and are never drawn. The points go to a GeoPackage (layer
``points``, in the masks' CRS) with their mask, pixel, map class and an empty ``reference`` column
for interpreters to fill in (QGIS, or any GIS); ``segray landcover accuracy`` reads it back.
"""

from __future__ import annotations

import struct
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segray import storage
from segray.landcover.maps import ClassMap, MapTotals, map_totals, mask_windows, open_map

#: The GeoPackage layer that holds the points.
LAYER = "points"
#: The column interpreters fill with the class they see on the ground (or in imagery).
REFERENCE = "reference"


def allocation(
    cmap: ClassMap, totals: MapTotals, per_class: int | dict[str, int], min_per_class: int = 0
) -> dict[int, int]:
    """Points wanted per class id present in the map: ``per_class`` (a class a mapping leaves out gets
    none), raised to ``min_per_class``, and at most the class's pixels (a small class is drawn whole)."""
    present = [int(c) for c in np.flatnonzero(totals.pixels)]
    if isinstance(per_class, dict):
        known = {cmap.name(c) for c in present}
        unknown = sorted(set(per_class) - known)
        if unknown:
            raise ValueError(
                f"--per-class names {unknown}: not classes of the map {cmap.source} "
                f"(classes with pixels there: {sorted(known)})"
            )
        wanted = {c: per_class.get(cmap.name(c), 0) for c in present}
    else:
        wanted = {c: per_class for c in present}
    return {c: min(max(n, min_per_class), int(totals.pixels[c])) for c, n in wanted.items()}


def _picks(totals: MapTotals, alloc: dict[int, int], rng: np.random.Generator) -> dict[int, list[tuple[int, Any]]]:
    """For each block (numbered across masks, in :func:`mask_windows` order): ``(class id, ordinals of the
    class's pixels in the block)`` to take. A class's pixels are numbered mask by mask, block by block,
    row by row; each class draws its ordinals without replacement."""
    counts = np.array([c for blocks in totals.block_pixels for c in blocks])  # (blocks, classes)
    ends = np.cumsum(counts, axis=0)
    out: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for cid, n in sorted(alloc.items()):
        if n == 0:
            continue
        ordinals = np.sort(rng.choice(int(totals.pixels[cid]), size=n, replace=False))
        block = np.searchsorted(ends[:, cid], ordinals, side="right")
        for b in np.unique(block):
            first = ends[b, cid] - counts[b, cid]
            out[int(b)].append((cid, ordinals[block == b] - first))
    return out


def draw_points(cmap: ClassMap, totals: MapTotals, alloc: dict[int, int], seed: int) -> dict[str, np.ndarray]:
    """The sample as columns (``point_id`` 1..n in a random order, so interpreters meet the classes
    mixed): mask key, pixel row and column, pixel-centre x and y in the CRS, map class id and name."""
    rng = np.random.default_rng(seed)
    picks = _picks(totals, alloc, rng)
    cols: dict[str, list[Any]] = defaultdict(list)
    b = 0
    for m in cmap.masks:
        for window, ids in mask_windows(m):
            for cid, ordinals in picks.get(b, []):
                flat = np.flatnonzero(ids.ravel() == cid)[ordinals]
                row = flat // ids.shape[1] + int(window.row_off)
                col = flat % ids.shape[1] + int(window.col_off)
                x, y = m.centre(row, col)
                cols["mask"] += [m.key] * len(flat)
                cols["row"] += row.tolist()
                cols["col"] += col.tolist()
                cols["x"] += x.tolist()
                cols["y"] += y.tolist()
                cols["map_class_id"] += [cid] * len(flat)
            b += 1
    order = rng.permutation(len(cols["mask"]))
    out = {k: np.asarray(v)[order] for k, v in cols.items()}
    out["map_class"] = np.array([cmap.name(int(c)) for c in out.get("map_class_id", [])], dtype=object)
    out["point_id"] = np.arange(1, len(order) + 1, dtype=np.int64)
    return out


def point_wkb(x: float, y: float) -> bytes:
    """A 2D point as little-endian WKB (byte order 1, geometry type 1, x, y)."""
    return struct.pack("<BIdd", 1, 1, x, y)


def write_points(uri: str, points: dict[str, np.ndarray], crs: str) -> None:
    """The points as a GeoPackage (layer ``points``) with an empty ``reference`` text column, published
    whole through :mod:`segray.storage` (local or s3://)."""
    import pyogrio.raw  # type: ignore[import-untyped]

    n = len(points["point_id"])
    geometry = np.array(
        [point_wkb(x, y) for x, y in zip(points.get("x", []), points.get("y", []), strict=True)], dtype=object
    )
    names = ["point_id", "mask", "row", "col", "x", "y", "map_class_id", "map_class", REFERENCE]
    data = [
        points["point_id"].astype(np.int64),
        np.asarray(points.get("mask", []), dtype=object),
        np.asarray(points.get("row", []), dtype=np.int64),
        np.asarray(points.get("col", []), dtype=np.int64),
        np.asarray(points.get("x", []), dtype=np.float64),
        np.asarray(points.get("y", []), dtype=np.float64),
        np.asarray(points.get("map_class_id", []), dtype=np.int64),
        np.asarray(points["map_class"], dtype=object),
        np.full(n, None, dtype=object),
    ]
    with tempfile.TemporaryDirectory(prefix="segray-sample-") as tmp:
        path = Path(tmp) / "points.gpkg"
        pyogrio.raw.write(str(path), geometry, data, names, layer=LAYER, driver="GPKG", geometry_type="Point", crs=crs)
        storage.write_bytes(uri, path.read_bytes())


@dataclass
class SampleSummary:
    output: str
    points: int
    seed: int
    #: class name -> (points drawn, pixels in the map)
    per_class: dict[str, tuple[int, int]] = field(default_factory=dict)


def run_sample(
    map_uri: str,
    output: str,
    per_class: int | dict[str, int],
    min_per_class: int = 0,
    seed: int = 0,
    labels: str | None = None,
) -> SampleSummary:
    """Draw the stratified sample of a map (a labelling output or one mask GeoTIFF) into ``output``."""
    cmap = open_map(map_uri, labels)
    totals = map_totals(cmap)
    if not totals.pixels.any():
        raise ValueError(f"{map_uri}: the map has no class pixels (all nodata): nothing to sample")
    alloc = allocation(cmap, totals, per_class, min_per_class)
    points = draw_points(cmap, totals, alloc, seed)
    write_points(output, points, cmap.crs)
    drawn = {cmap.name(c): (n, int(totals.pixels[c])) for c, n in sorted(alloc.items())}
    return SampleSummary(output, len(points["point_id"]), seed, drawn)
