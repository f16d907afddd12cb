"""Open a GeoTIFF or COG scene (local or ``s3://``), describe it, pick its bands and read it in
block-aligned windows with a mask of its valid pixels.

A scene is read as it is stored: every band the caller asks for, in the file's own data type
(uint8, uint16, int16, float32, ...), never squeezed into 8-bit RGB. Reading goes window by window
along the file's own blocks (tiles, or row strips of a striped file), so a scene of any size costs
one window of memory, and on S3 each window costs the ranged reads of the blocks it covers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from pyproj import CRS, Transformer
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from segray.geo.gdalenv import gdal_env, gdal_path
from segray.storage import StorageError

#: File name endings that route a frame to this reader instead of the 8-bit image decoders.
GEODATA_SUFFIXES = (".tif", ".tiff")
#: Points per edge when scene bounds are carried to WGS84: a projected edge is curved in degrees.
DENSIFY_POINTS = 21

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class SceneInfo:
    """What a scene is, in plain values (picklable: it travels between Ray tasks).

    ``transform`` is the affine pixel -> CRS transform ``(a, b, c, d, e, f)``: x = a*col + b*row + c,
    y = d*col + e*row + f. ``crs`` is ``EPSG:<code>`` when the CRS has one, else its WKT, and None
    when the file has no CRS. ``bounds`` are (left, bottom, right, top) in the CRS, ``bounds_wgs84``
    the same box in longitude/latitude (the bounding box of the densified edges).
    """

    uri: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    descriptions: tuple[str | None, ...]
    crs: str | None
    transform: Transform
    bounds: tuple[float, float, float, float]
    bounds_wgs84: tuple[float, float, float, float] | None
    nodata: float | None
    block_shape: tuple[int, int]
    is_geographic: bool

    @property
    def band_names(self) -> list[str]:
        """Each band's description, or ``band<i>`` (1-based) where the file gives none."""
        return [d or f"band{i}" for i, d in enumerate(self.descriptions, 1)]

    def affine(self) -> Any:  # affine.Affine
        """The transform as an ``affine.Affine`` (what rasterio's window and transform helpers take)."""
        return rasterio.transform.Affine(*self.transform)


def is_geodata(uri: str) -> bool:
    """A file that :func:`open_scene` reads (GeoTIFF/COG), told by its name: routing happens while
    listing, before any file is opened."""
    return uri.lower().split("?", 1)[0].endswith(GEODATA_SUFFIXES)


@contextmanager
def open_scene(uri: str) -> Iterator[Any]:  # rasterio.DatasetReader
    """Open a scene for reading. The GDAL environment (S3 settings and credentials) stays active
    while the dataset is open, since GDAL fetches blocks from S3 lazily, window by window."""
    with ExitStack() as stack:
        stack.enter_context(gdal_env())
        try:
            ds = stack.enter_context(rasterio.open(gdal_path(uri)))
        except RasterioIOError as e:
            raise _explain(uri, e) from e
        yield ds


def _explain(uri: str, e: Exception) -> StorageError:
    msg = str(e)
    if any(sign in msg for sign in ("403", "AccessDenied", "Access Denied", "signature", "InvalidAccessKeyId")):
        return StorageError(
            f"{uri}: access denied ({msg}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or the instance profile) for this bucket."
        )
    return StorageError(f"{uri}: cannot open as a raster ({msg})")


def scene_info(ds: Any, uri: str | None = None) -> SceneInfo:
    """Describe an open dataset."""
    crs = _crs_text(ds.crs)
    bounds = (float(ds.bounds.left), float(ds.bounds.bottom), float(ds.bounds.right), float(ds.bounds.top))
    t = ds.transform
    return SceneInfo(
        uri=uri if uri is not None else str(ds.name),
        width=int(ds.width),
        height=int(ds.height),
        count=int(ds.count),
        dtypes=tuple(str(d) for d in ds.dtypes),
        descriptions=tuple(ds.descriptions),
        crs=crs,
        transform=(float(t.a), float(t.b), float(t.c), float(t.d), float(t.e), float(t.f)),
        bounds=bounds,
        bounds_wgs84=None if crs is None else _to_wgs84(crs, bounds),
        nodata=None if ds.nodata is None else float(ds.nodata),
        block_shape=tuple(int(v) for v in ds.block_shapes[0]),  # type: ignore[arg-type]
        is_geographic=bool(ds.crs is not None and ds.crs.is_geographic),
    )


def read_info(uri: str) -> SceneInfo:
    """Open a scene, describe it and close it (reads the header only)."""
    with open_scene(uri) as ds:
        return scene_info(ds, uri)


def _crs_text(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else str(crs.to_wkt())


def _to_wgs84(crs: str, bounds: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The scene's box in longitude/latitude: edges densified, since a straight edge in UTM is curved
    in degrees and its corners alone would cut off part of the scene."""
    to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    west, south, east, north = to_lonlat.transform_bounds(*bounds, densify_pts=DENSIFY_POINTS)
    return (float(west), float(south), float(east), float(north))


def select_bands(info: SceneInfo, bands: Sequence[str | int] | None) -> list[int]:
    """Band names (descriptions such as ``B04``, matched case-insensitively) or 1-based indices ->
    the 1-based indexes rasterio reads; None means every band. A band the file lacks is an error that
    names it and lists the file's bands, so a model trained on other bands fails before any read."""
    if bands is None:
        return list(range(1, info.count + 1))
    by_name = {name.lower(): i for i, name in enumerate(info.band_names, 1)}
    indexes: list[int] = []
    missing: list[str] = []
    for band in bands:
        if isinstance(band, int) or (isinstance(band, str) and band.isdigit() and band.lower() not in by_name):
            index = int(band)
            if 1 <= index <= info.count:
                indexes.append(index)
            else:
                missing.append(str(band))
        elif band.lower() in by_name:
            indexes.append(by_name[band.lower()])
        else:
            missing.append(band)
    if missing:
        listed = ", ".join(f"{i}={name}" for i, name in enumerate(info.band_names, 1))
        raise ValueError(f"{info.uri}: no band {', '.join(missing)} (the file has {info.count} bands: {listed})")
    return indexes


def read_window(ds: Any, window: Window, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Read ``indexes`` (1-based) of a window -> (array (bands, h, w) in the file's dtype, valid (h, w)).

    A pixel is invalid when any selected band holds the nodata value (NaN nodata included) or GDAL's
    mask for the band (an internal mask band, alpha, or the nodata value) says so: a model must not
    label pixels the sensor never saw, and areas must not count them.
    """
    bands = list(indexes)
    data = ds.read(bands, window=window)
    valid = np.all(ds.read_masks(bands, window=window) != 0, axis=0)
    if ds.nodata is not None:
        nodata = ds.nodata
        hit = np.isnan(data) if isinstance(nodata, float) and math.isnan(nodata) else data == nodata
        valid &= ~np.any(hit, axis=0)
    return data, valid


def block_windows(info: SceneInfo, size: int = 1024) -> list[Window]:
    """Windows that cover the scene, each about ``size`` x ``size`` pixels and made of whole blocks of
    the file (a window never splits a tile or strip, so no block is read twice).

    A tiled file gets windows of whole tiles; a striped file (blocks the width of the scene) gets row
    strips holding about ``size * size`` pixels. The last window of a row or column ends on the
    scene's edge. A scene smaller than one window is one window.
    """
    if size < 1:
        raise ValueError(f"window size must be at least 1 pixel, got {size}")
    block_h, block_w = info.block_shape
    if block_w >= info.width:  # striped: full-width strips of whole blocks
        rows_wanted = max(1, (size * size) // max(info.width, 1))
        win_h, win_w = _whole_blocks(rows_wanted, block_h), info.width
    else:
        win_h, win_w = _whole_blocks(size, block_h), _whole_blocks(size, block_w)
    return [
        Window(col, row, min(win_w, info.width - col), min(win_h, info.height - row))
        for row in range(0, info.height, win_h)
        for col in range(0, info.width, win_w)
    ]


def _whole_blocks(pixels: int, block: int) -> int:
    """``pixels`` rounded to the nearest whole number of blocks, at least one block."""
    return max(1, round(pixels / block)) * block
