"""Training labels on a scene's grid: label rasters and vector polygons -> class-id masks, the
validation region of a spatial split, and where training and validation chips may lie.

Every mask here is uint8 (H, W) on the scene's pixel grid: class ids ``0..N-1``, and :data:`IGNORE`
where there is no label (the label raster's "unlabelled" value or nodata, outside the labelled
areas of vector labels), which no loss or metric counts. Chip positions come from integral images
(2-D cumulative sums), so finding every valid chip of a scene costs O(pixels), whatever the chip size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segray.geo.scene import SceneInfo, open_scene, scene_info

#: The mask value of pixels without a label.
IGNORE = 255
#: Pixel transforms closer than this (in CRS units, relative to the pixel size) are the same grid.
GRID_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LabelClasses:
    """The label map's classes in class-id order: ``values[i]`` is the raster value (or the vector
    class column's value) of class ``i``, None for the background class of vector labels."""

    names: list[str]
    values: list[Any]

    @classmethod
    def from_recipe(cls, classes: Sequence[dict[str, Any]]) -> LabelClasses:
        if len(classes) >= IGNORE:
            raise ValueError(f"{len(classes)} classes: a uint8 mask holds at most {IGNORE} (255 means no label)")
        return cls([str(c["name"]) for c in classes], [c.get("value") for c in classes])


def same_grid(a: SceneInfo, b: SceneInfo) -> bool:
    """Whether two rasters share CRS, size and transform (to a millionth of a pixel)."""
    if (a.crs, a.width, a.height) != (b.crs, b.width, b.height):
        return False
    pixel = max(abs(a.transform[0]), abs(a.transform[4]), 1e-12)
    pairs = zip(a.transform, b.transform, strict=True)
    return all(math.isclose(x, y, abs_tol=GRID_TOLERANCE * pixel) for x, y in pairs)


def read_label_raster(uri: str, scene: SceneInfo, classes: LabelClasses, unlabelled: float = 0) -> np.ndarray:
    """The label raster ``uri`` (band 1) as class ids on ``scene``'s grid.

    A raster on another grid is an error naming both files (labels are not resampled: a shifted
    label teaches the wrong pixels). ``unlabelled``, the file's nodata and NaN become :data:`IGNORE`;
    any other value that is no class's value is an error naming the value and the file.
    """
    with open_scene(uri) as ds:
        info = scene_info(ds, uri)
        if not same_grid(info, scene):
            raise ValueError(
                f"label raster {uri} ({info.width}x{info.height}, {info.crs}, transform {info.transform}) is not "
                f"on the grid of scene {scene.uri} ({scene.width}x{scene.height}, {scene.crs}, "
                f"transform {scene.transform})"
            )
        raw = ds.read(1)
    out = np.full(raw.shape, IGNORE, dtype=np.uint8)
    ignored = raw == unlabelled
    if info.nodata is not None:
        ignored |= raw == info.nodata
    if np.issubdtype(raw.dtype, np.floating):
        ignored |= np.isnan(raw)
    known = ignored.copy()
    for class_id, value in enumerate(classes.values):
        if value is None:
            continue
        hit = (raw == value) & ~ignored
        out[hit] = class_id
        known |= hit
    if not known.all():
        bad = np.unique(raw[~known])
        raise ValueError(
            f"label raster {uri}: value {bad[0]:g} is no class's value "
            f"({len(bad)} unknown value(s): {', '.join(f'{v:g}' for v in bad[:10])}); add it to data.scenes.classes"
        )
    return out


def read_polygons(uri: str, crs: str | None, column: str | None = None) -> list[tuple[dict[str, Any], Any]]:
    """The polygons of a vector file (GeoPackage, GeoJSON, Shapefile: what GDAL's OGR reads) as
    (GeoJSON geometry in ``crs``, ``column``'s value or None) pairs."""
    import pyogrio  # type: ignore[import-untyped]
    import shapely  # type: ignore[import-untyped]
    from rasterio.warp import transform_geom

    from segray.geo.gdalenv import gdal_path

    # The first layer: a GeoPackage may also hold a GIS tool's style table.
    meta, _, wkb, fields = pyogrio.raw.read(gdal_path(uri), layer=0, columns=[column] if column else [])
    names = list(meta["fields"])
    if column is not None and column not in names:
        raise ValueError(f"{uri}: no attribute {column!r} (it has {', '.join(names) or 'none'})")
    values = fields[names.index(column)] if column is not None else [None] * len(wkb)
    src = meta.get("crs")
    out = []
    for geom_wkb, value in zip(wkb, values, strict=True):
        if geom_wkb is None:
            continue
        geom = shapely.geometry.mapping(shapely.from_wkb(geom_wkb))
        if src and crs and src != crs:
            geom = transform_geom(src, crs, geom)
        out.append((geom, value.item() if isinstance(value, np.generic) else value))
    return out


def burn(shapes: Sequence[tuple[dict[str, Any], int]], scene: SceneInfo, fill: int) -> np.ndarray:
    """Rasterise (geometry, value) pairs onto the scene's grid (a pixel whose centre lies inside)."""
    from rasterio.features import rasterize

    shape = (scene.height, scene.width)
    if not shapes:
        return np.full(shape, fill, dtype=np.uint8)
    return rasterize(shapes, out_shape=shape, transform=scene.affine(), fill=fill, dtype="uint8")


def rasterise_vectors(
    uri: str,
    scene: SceneInfo,
    classes: LabelClasses,
    column: str,
    labelled_areas: str | None = None,
    background: str | None = None,
) -> np.ndarray:
    """Vector labels as class ids on ``scene``'s grid: each polygon burns its class (its ``column``
    value, which must be a class's value). Pixels no polygon covers take the ``background`` class
    (None: ignored), and with ``labelled_areas`` every pixel outside those areas is ignored: there a
    missing polygon does not mean background."""
    ids = {str(v): i for i, v in enumerate(classes.values) if v is not None}
    shapes = []
    for geom, value in read_polygons(uri, scene.crs, column):
        if str(value) not in ids:
            raise ValueError(f"{uri}: {column} value {value!r} is no class's value ({', '.join(ids)})")
        shapes.append((geom, ids[str(value)]))
    fill = IGNORE if background is None else classes.names.index(background)
    mask = burn(shapes, scene, fill)
    if labelled_areas is not None:
        inside = burn([(g, 1) for g, _ in read_polygons(labelled_areas, scene.crs)], scene, 0)
        mask[inside == 0] = IGNORE
    return mask


def val_region(
    scene: SceneInfo,
    rows: Sequence[int] | None = None,
    bbox: Sequence[float] | None = None,
    areas: str | None = None,
) -> np.ndarray:
    """The validation region of a spatial split as bool (H, W): pixel rows ``[start, stop)``, a box
    ``[xmin, ymin, xmax, ymax]`` in the scene's CRS, or the polygons of a vector file (pixels whose
    centre lies inside)."""
    region = np.zeros((scene.height, scene.width), dtype=bool)
    if rows is not None:
        region[max(0, rows[0]) : max(0, rows[1])] = True
    elif bbox is not None:
        xmin, ymin, xmax, ymax = bbox
        ring = [(xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)]
        box = {"type": "Polygon", "coordinates": [ring]}
        region = burn([(box, 1)], scene, 0).astype(bool)
    elif areas is not None:
        region = burn([(g, 1) for g, _ in read_polygons(areas, scene.crs)], scene, 0).astype(bool)
    return region


def box_sums(values: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sum of ``values`` over every h x w box, indexed by the box's top-left pixel: (H-h+1, W-w+1)."""
    s = np.zeros((values.shape[0] + 1, values.shape[1] + 1), dtype=np.int64)
    s[1:, 1:] = values.astype(np.int64).cumsum(0).cumsum(1)
    return s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]


def train_chips(mask: np.ndarray, region: np.ndarray, h: int, w: int) -> np.ndarray:
    """Top-left (row, col) of every h x w chip that does not touch the validation ``region`` and holds
    at least one labelled pixel: (n, 2) int64."""
    if mask.shape[0] < h or mask.shape[1] < w:
        return np.zeros((0, 2), dtype=np.int64)
    ok = (box_sums(region, h, w) == 0) & (box_sums(mask != IGNORE, h, w) > 0)
    return np.argwhere(ok).astype(np.int64)


def val_chips(mask: np.ndarray, region: np.ndarray, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """A grid of h x w chips over the validation ``region``'s bounding box, each as (top, left, row0,
    col0): a chip at the scene's edge is moved inside it, and then scores only its pixels from
    (row0, col0) on, so that no pixel counts twice. Chips without a labelled pixel of the region are left out."""
    if not region.any() or mask.shape[0] < h or mask.shape[1] < w:
        return []
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    scored = region & (mask != IGNORE)
    out = []
    for r0 in range(int(rows[0]), int(rows[-1]) + 1, h):
        for c0 in range(int(cols[0]), int(cols[-1]) + 1, w):
            top, left = min(r0, mask.shape[0] - h), min(c0, mask.shape[1] - w)
            if scored[r0 : top + h, c0 : left + w].any():
                out.append((top, left, r0, c0))
    return out


def val_chip_mask(mask: np.ndarray, region: np.ndarray, chip: tuple[int, int, int, int], h: int, w: int) -> np.ndarray:
    """The labels a validation chip is scored on: its pixels of the region from (row0, col0) on; the
    rest :data:`IGNORE`."""
    top, left, r0, c0 = chip
    out = np.full((h, w), IGNORE, dtype=np.uint8)
    own = (slice(r0 - top, h), slice(c0 - left, w))
    window = (slice(r0, top + h), slice(c0, left + w))
    out[own] = np.where(region[window], mask[window], IGNORE)
    return out
