"""A GeoTIFF/COG scene labelled window by window at native resolution, never read whole.

The scene's bands are seen as a lazy (H, W, C) array (:class:`SceneSource`): slicing it reads that
window of the selected bands, in the file's own dtype, with GDAL (segray.geo.scene.read_window), so
the sliding windows and the streaming blend of :mod:`segray.tiles.windows` run over it unchanged.
The windows also tell which pixels are valid (nodata, internal mask): those become 255 in the class
mask and count for no class, no area and no confidence. Class areas come from the CRS, row by row
(segray.geo.areas), so a geographic scene gets the true area of each pixel, not a flat-earth one.

With ``write_confidence`` the winning class's softmax probability of every pixel is kept too, in
whole percent (uint8, 255 where the scene has no data), for the confidence map beside the mask.

Memory: the mask (1 byte per pixel) and the valid map (1 byte per pixel) of the scene, plus the
confidence map (1 byte per pixel) when asked for, plus what :mod:`segray.tiles.windows` states for a
frame, minus the decoded frame, which is never held; and GDAL's block cache of the file being read
(at most ``GDAL_CACHEMAX``, by default 5% of the machine's memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segray.tiles.windows import PredictFn, TileSpec, blend_windows

if TYPE_CHECKING:  # torch stays out of processes that only read frames
    import torch

#: The batch column that marks a geodata row between the labelling stages: the scene's grid as JSON
#: (segray.geo.scene.scene_to_json), "" for other rows.
SCENE_COLUMN = "geo_scene"
#: Class id of a pixel the scene holds no data for (nodata value, internal mask): no class.
NODATA_CLASS = 255


class SceneSource:
    """The selected bands of an open scene as a lazy (H, W, C) array: ``source[ys, xs]`` reads that
    window only and returns (h, w, C) in the file's dtype. The valid-pixel map of every window read
    is kept (``valid``), so the pixels the model saw decide which are nodata without a second read."""

    def __init__(self, ds: Any, indexes: Sequence[int]) -> None:
        self.ds = ds
        self.indexes = list(indexes)
        self.shape = (int(ds.height), int(ds.width), len(self.indexes))
        self.dtype = np.dtype(ds.dtypes[self.indexes[0] - 1])
        #: (H, W): True where every selected band holds data; filled as windows are read.
        self.valid = np.zeros(self.shape[:2], dtype=bool)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        from rasterio.windows import Window

        from segray.geo.scene import read_window

        ys, xs = key
        y0, y1, step_y = ys.indices(self.shape[0])
        x0, x1, step_x = xs.indices(self.shape[1])
        if step_y != 1 or step_x != 1:
            raise IndexError("a scene is read in contiguous windows (step 1)")
        h, w = max(0, y1 - y0), max(0, x1 - x0)
        if not h or not w:
            return np.zeros((h, w, self.shape[2]), dtype=self.dtype)
        data, valid = read_window(self.ds, Window(x0, y0, w, h), self.indexes)
        self.valid[y0:y1, x0:x1] = valid
        return np.moveaxis(data, 0, -1)


@dataclass
class SceneResult:
    """One scene labelled: its (H, W) uint8 mask (255 = no data) and what the stats row needs."""

    mask: np.ndarray
    #: (C,) int64 pixels per class, nodata excluded.
    class_pixels: np.ndarray
    #: (C,) float64 m^2 per class; NaN when the scene has no CRS.
    class_area_m2: np.ndarray
    nodata_pixels: int
    #: Mean winning-class probability over every 2nd valid pixel; NaN when none is valid.
    mean_confidence: float
    windows: int
    #: (H, W) uint8: the winning class's probability in whole percent (0..100), 255 = no data;
    #: None unless asked for.
    confidence: np.ndarray | None = None


def label_scene(
    uri: str,
    bands: Sequence[str],
    predict: PredictFn,
    spec: TileSpec,
    batch_size: int,
    num_classes: int,
    confidence_stride: int = 2,
    write_confidence: bool = False,
) -> SceneResult:
    """Label the scene at ``uri`` (local or ``s3://``) with ``predict``, which takes (N, h, w, C)
    windows of ``bands`` (names or 1-based indexes) in the file's dtype. ``write_confidence``: also
    return the per-pixel confidence map (:attr:`SceneResult.confidence`)."""
    import torch

    from segray.geo.areas import scene_row_areas_m2
    from segray.geo.scene import open_scene, scene_info, select_bands

    with open_scene(uri) as ds:
        info = scene_info(ds, uri)
        source = SceneSource(ds, select_bands(info, bands))
        rows_m2 = scene_row_areas_m2(info) if info.crs is not None else np.full(info.height, math.nan)
        mask = np.empty((info.height, info.width), dtype=np.uint8)
        percent = np.empty((info.height, info.width), dtype=np.uint8) if write_confidence else None
        acc = _Totals(num_classes)

        def sink(y0: int, rows: torch.Tensor) -> None:
            valid = source.valid[y0 : y0 + rows.shape[1]]
            part = rows.argmax(dim=0).to(torch.uint8).cpu().numpy()
            part[~valid] = NODATA_CLASS
            mask[y0 : y0 + rows.shape[1]] = part
            acc.add(part, valid, rows_m2[y0 : y0 + rows.shape[1]])
            # Stride on absolute rows, so the sample does not depend on how rows were chunked.
            first = (-y0) % confidence_stride
            keep = valid[first::confidence_stride, ::confidence_stride]
            if percent is not None:
                # Every pixel's winning probability; the mean below samples the same values, so it is
                # the same with or without the map.
                full = rows.softmax(dim=0).amax(dim=0)
                conf = (full * 100).round().to(torch.uint8).cpu().numpy()
                conf[~valid] = NODATA_CLASS
                percent[y0 : y0 + rows.shape[1]] = conf
                top_all = full[first::confidence_stride, ::confidence_stride]
            if keep.any():
                if percent is None:
                    top_all = rows[:, first::confidence_stride, ::confidence_stride].softmax(dim=0).amax(dim=0)
                top = top_all[torch.from_numpy(keep).to(top_all.device)]
                acc.conf_sum += float(top.sum(dtype=torch.float64))
                acc.conf_n += int(top.numel())

        windows = blend_windows(source, predict, spec, batch_size, sink)  # type: ignore[arg-type]
    return SceneResult(
        mask,
        acc.pixels,
        acc.areas,
        int(mask.size - acc.pixels.sum()),
        acc.conf_sum / acc.conf_n if acc.conf_n else math.nan,
        windows,
        percent,
    )


class _Totals:
    """Running per-class pixel counts and areas, and the confidence sum, of a scene's finalised rows."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.pixels = np.zeros(num_classes, dtype=np.int64)
        self.areas = np.zeros(num_classes, dtype=np.float64)
        self.conf_sum = 0.0
        self.conf_n = 0

    def add(self, part: np.ndarray, valid: np.ndarray, rows_m2: np.ndarray) -> None:
        from segray.geo.areas import class_areas

        self.pixels += np.bincount(part[valid], minlength=self.num_classes)[: self.num_classes]
        self.areas += class_areas(part, rows_m2, self.num_classes, ignore=NODATA_CLASS)
