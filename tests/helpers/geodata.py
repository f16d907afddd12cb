"""Tiny synthetic GeoTIFFs for the geo tests: each test writes the scene it needs with rasterio."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

#: A UTM 33N origin (Lower Silesia), 10 m pixels: the shape of a Sentinel-2 scene.
UTM33_ORIGIN = (600_000.0, 5_660_000.0)
S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str = "EPSG:32633",
    transform: object | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str] | None = None,
    tiled: bool = False,
    block: int = 256,
    bigtiff: bool = False,
) -> Path:
    """Write ``data`` (bands, h, w) as a GeoTIFF: striped (GDAL's default strips) unless ``tiled``."""
    count, height, width = data.shape
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": str(data.dtype),
        "crs": crs,
        "transform": transform if transform is not None else from_origin(*UTM33_ORIGIN, 10.0, 10.0),
        "nodata": nodata,
        "BIGTIFF": "YES" if bigtiff else "NO",
    }
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, name in enumerate(descriptions or (), 1):
            ds.set_band_description(i, name)
    return path


def s2_scene(height: int = 60, width: int = 80, border: int = 5, seed: int = 0) -> np.ndarray:
    """Ten uint16 reflectance-like bands with a nodata (0) border ``border`` pixels wide."""
    rng = np.random.default_rng(seed)
    data = rng.integers(1000, 5500, size=(len(S2_BANDS), height, width), dtype=np.uint16)
    data[:, :border, :] = 0
    data[:, -border:, :] = 0
    data[:, :, :border] = 0
    data[:, :, -border:] = 0
    return data
