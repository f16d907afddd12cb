"""Tiny synthetic scenes with labels for the scene-training tests: a 4-band uint16 GeoTIFF, a label
raster on its grid, and polygons written as a GeoPackage (pyogrio) in any CRS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from helpers.geodata import UTM33_ORIGIN, write_geotiff

#: The synthetic scenes' shape and bands.
HEIGHT, WIDTH = 96, 128
BANDS = ("B02", "B03", "B04", "B08")
PIXEL = 10.0


def scene_bands(seed: int = 0) -> np.ndarray:
    """Four uint16 reflectance-like bands (4, HEIGHT, WIDTH)."""
    rng = np.random.default_rng(seed)
    return rng.integers(500, 4000, size=(len(BANDS), HEIGHT, WIDTH), dtype=np.uint16)


def write_scene(path: Path, seed: int = 0, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, scene_bands(seed), descriptions=BANDS, **kwargs)


def label_values(seed: int = 0) -> np.ndarray:
    """float32 (HEIGHT, WIDTH) labels: 0 unlabelled on the left quarter, else 1, 2 or 3 in bands of rows."""
    values = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    values[:, WIDTH // 4 :] = 1 + (np.arange(HEIGHT)[:, None] // 16 + seed) % 3
    return values


def write_labels(path: Path, values: np.ndarray, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_geotiff(path, values[None], nodata=0, **kwargs)


def pixel_box(row0: int, col0: int, row1: int, col1: int) -> list[tuple[float, float]]:
    """The ring of the pixel box rows [row0, row1), cols [col0, col1) in the scenes' UTM coordinates."""
    x0, y0 = UTM33_ORIGIN[0] + col0 * PIXEL, UTM33_ORIGIN[1] - row0 * PIXEL
    x1, y1 = UTM33_ORIGIN[0] + col1 * PIXEL, UTM33_ORIGIN[1] - row1 * PIXEL
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]


def write_polygons(
    path: Path, rings: list[list[tuple[float, float]]], values: list[str] | None = None, crs: str = "EPSG:32633"
) -> Path:
    """Polygons (one ring each, in ``crs``) with a ``label_name`` column, in the format the suffix names
    (.gpkg, .geojson)."""
    import pyogrio.raw
    import shapely
    from rasterio.warp import transform_geom

    def wkb(ring: list[tuple[float, float]]) -> bytes:
        geom = shapely.Polygon(ring).__geo_interface__
        if crs != "EPSG:32633":
            geom = transform_geom("EPSG:32633", crs, geom)
        return shapely.to_wkb(shapely.geometry.shape(geom))

    geoms = np.array([wkb(r) for r in rings], dtype=object)
    labels = np.array(values if values is not None else ["x"] * len(rings), dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    pyogrio.raw.write(str(path), geoms, [labels], ["label_name"], driver=None, geometry_type="Polygon", crs=crs)
    return path
