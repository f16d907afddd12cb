"""Write a class mask (or a confidence map) of a scene as a Cloud-Optimized GeoTIFF, window by window.

The output is what GIS tools and tile servers expect of a land-cover map: one uint8 band on the
scene's own grid (CRS, transform, size), nodata 255, a colour table in the label map's colours,
DEFLATE, 512 x 512 internal tiles, and overviews resampled with NEAREST, so a zoomed-out view shows
real class ids (averaging ids would invent classes between them). A confidence map (whole percent) is
a continuous value: its overviews are resampled with AVERAGE (nodata left out), so a zoomed-out view
shows the mean confidence of the ground it covers rather than one pixel picked from it.

GDAL's COG layout (overviews and tile index before the pixel data) can only be made by copying a
finished raster. :class:`CogMaskWriter` therefore writes the windows into a temporary tiled GeoTIFF
on local disk (GDAL caches a few blocks; the mask is never held whole in memory), converts it with
GDAL's COG driver when closed, and publishes the file through :mod:`segray.storage` (atomic: a reader
never sees half a COG, locally or on S3).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from segray import storage
from segray.geo.scene import SceneInfo
from segray.labels import LabelMap

#: The value of pixels without a class or confidence (outside the scene's valid data).
NODATA = 255
#: Internal tile side of the COG, in pixels.
TILE = 512
#: A confidence map stores the top class's probability in whole percent (0..100).
MAX_PERCENT = 100


def colour_table(label_map: LabelMap) -> dict[int, tuple[int, int, int, int]]:
    """The GDAL colour table of a label map: each class (and the ignore class) in its colour, opaque;
    nodata transparent."""
    table = {c.id: (*c.color, 255) for c in label_map.classes}
    if label_map.ignore is not None and label_map.ignore.id != NODATA:
        table[label_map.ignore.id] = (*label_map.ignore.color, 255)
    table[NODATA] = (0, 0, 0, 0)
    return table  # type: ignore[return-value]


class CogMaskWriter:
    """Collects a scene's mask window by window, then writes it as a COG to a local path or s3:// URI.

    ``label_map`` given: a class mask (values ``0..num_classes-1``, or 255 where nothing was labelled),
    coloured with the label map's colours. ``label_map`` None: a confidence map in percent (0..100,
    255 where nothing was labelled), without colours. Pixels no window covers stay 255. Use as a
    context manager, or call :meth:`close`; :meth:`discard` drops the temporary files without writing.
    """

    def __init__(self, uri: str, info: SceneInfo, label_map: LabelMap | None, tmp_dir: str | None = None) -> None:
        self.uri = uri
        self.info = info
        self.label_map = label_map
        self._max_value = MAX_PERCENT if label_map is None else label_map.num_classes - 1
        self._dir = Path(tempfile.mkdtemp(prefix="segray-cog-", dir=tmp_dir))
        self._tmp = self._dir / "mask.tif"
        try:
            self._ds: Any = rasterio.open(self._tmp, "w", **self._profile())
            if label_map is not None:
                self._ds.write_colormap(1, colour_table(label_map))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise

    @classmethod
    def confidence(cls, uri: str, info: SceneInfo, tmp_dir: str | None = None) -> CogMaskWriter:
        """A writer of the confidence map (percent) that goes with a class mask."""
        return cls(uri, info, None, tmp_dir)

    def _profile(self) -> dict[str, Any]:
        info = self.info
        return {
            "driver": "GTiff",
            "width": info.width,
            "height": info.height,
            "count": 1,
            "dtype": "uint8",
            "crs": info.crs,
            "transform": info.affine(),
            "nodata": NODATA,
            "tiled": True,
            "blockxsize": TILE,
            "blockysize": TILE,
            "compress": "DEFLATE",
            "BIGTIFF": "IF_SAFER",
        }

    def write(self, window: Window, values: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write one window's class ids (or percents), shape (h, w) of the window; pixels where
        ``valid`` is False become nodata. Values out of range are refused: a wrong id in a map is
        worse than a failed write."""
        if self._ds is None:
            raise ValueError(f"{self.uri}: the writer is closed")
        if values.shape != (int(window.height), int(window.width)):
            raise ValueError(f"values of shape {values.shape} do not fit window {window}")
        ids = np.asarray(values).astype(np.int64)  # checked before the uint8 cast, which would wrap 256 to 0
        if valid is not None:
            ids[~valid] = NODATA
        bad = ((ids < 0) | (ids > self._max_value)) & (ids != NODATA)
        if bad.any():
            raise ValueError(
                f"{self.uri}: values {np.unique(ids[bad]).tolist()[:10]} are not in 0..{self._max_value} nor {NODATA}"
            )
        self._ds.write(ids.astype(np.uint8), 1, window=window)

    def close(self) -> str:
        """Finish the COG and publish it; returns its URI."""
        if self._ds is None:
            raise ValueError(f"{self.uri}: the writer is closed")
        try:
            self._ds.close()
            self._ds = None
            cog = self._dir / "cog.tif"
            # Class ids are categories: NEAREST keeps real ids. Percents are continuous: AVERAGE gives each
            # overview pixel the mean confidence of the pixels it covers (GDAL leaves nodata out of the mean).
            to_cog(self._tmp, cog, "NEAREST" if self.label_map is not None else "AVERAGE")
            # The compressed COG (typically a few MB for a 10,980^2 class mask) is held once while it is published.
            storage.write_bytes(self.uri, cog.read_bytes())
            return self.uri
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temporary files without publishing anything."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> CogMaskWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self._ds is not None:
            self.close()
        else:
            self.discard()


def to_cog(src: Path, dst: Path, resampling: str = "NEAREST") -> None:
    """Copy a tiled GeoTIFF to a COG with GDAL's COG driver: DEFLATE, 512 x 512 tiles, overviews
    (halving until one tile holds the image) resampled with ``resampling`` (NEAREST for class ids,
    AVERAGE for a continuous value); nodata and colour table kept."""
    rasterio.shutil.copy(
        str(src),
        str(dst),
        driver="COG",
        COMPRESS="DEFLATE",
        BLOCKSIZE=str(TILE),
        OVERVIEW_RESAMPLING=resampling,
        RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )
