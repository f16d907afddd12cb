"""Ground area per pixel and per class, in square metres, from a scene's CRS and transform.

In a projected CRS (UTM, national grids) every pixel covers the same area: the transform's
determinant, in the CRS's linear unit squared, converted to metres (a US-foot grid is not a metre
grid). In a geographic CRS (longitude/latitude) a pixel of fixed degrees shrinks towards the poles:
each row's pixel is measured as a geodesic polygon on the CRS's own ellipsoid, so a whole-degree
scene at 50 degrees north gets its true area, not a flat-earth one.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS

from segray.geo.scene import SceneInfo, Transform


def row_areas_m2(crs: str | None, transform: Transform, height: int) -> np.ndarray:
    """Area of one pixel in each row, m^2, shape (height,). Constant in a projected CRS."""
    if crs is None:
        raise ValueError("the scene has no CRS: its ground area is unknown")
    parsed = CRS.from_user_input(crs)
    if parsed.is_geographic:
        return _geographic_row_areas(parsed, transform, height)
    return np.full(height, projected_pixel_area_m2(parsed, transform), dtype=np.float64)


def scene_row_areas_m2(info: SceneInfo) -> np.ndarray:
    """:func:`row_areas_m2` of a described scene."""
    return row_areas_m2(info.crs, info.transform, info.height)


def projected_pixel_area_m2(crs: CRS, transform: Transform) -> float:
    """``|a*e - b*d|`` (rotated or sheared grids included) times the square of the CRS axes' unit in
    metres."""
    a, b, _, d, e, _ = transform
    x_unit, y_unit = (axis.unit_conversion_factor for axis in crs.axis_info[:2])
    return abs(a * e - b * d) * float(x_unit) * float(y_unit)


def _geographic_row_areas(crs: CRS, transform: Transform, height: int) -> np.ndarray:
    """The geodesic area of the first pixel of each row on the CRS's ellipsoid (in a north-up grid
    every pixel of a row has the same area). One geodesic polygon per row, not per pixel."""
    a, b, c, d, e, f = transform
    if b != 0 or d != 0:
        raise ValueError("a rotated grid in a geographic CRS is not supported for areas")
    geod = crs.get_geod()
    if geod is None:
        raise ValueError(f"{crs.name}: the CRS names no ellipsoid")
    scale = float(crs.axis_info[0].unit_conversion_factor) / float(np.pi / 180)  # CRS unit -> degrees
    edges = np.clip((f + e * np.arange(height + 1)) * scale, -90.0, 90.0)  # row edges, degrees
    west, east = c * scale, (c + a) * scale
    lons = [west, east, east, west]
    areas = [
        abs(geod.polygon_area_perimeter(lons, [top, top, bottom, bottom])[0])
        for top, bottom in zip(edges[:-1], edges[1:], strict=True)
    ]
    return np.asarray(areas, dtype=np.float64)


def class_areas(mask: np.ndarray, row_area_m2: np.ndarray | float, n_classes: int, ignore: int = 255) -> np.ndarray:
    """m^2 per class (shape (n_classes,)) of a class mask (h, w), given each row's pixel area (shape
    (h,), or one number for all rows). Pixels equal to ``ignore`` (nodata, unlabelled) count for no
    class. For a window of a scene, pass the rows' slice of the scene's row areas."""
    if mask.ndim != 2:
        raise ValueError(f"a class mask is (height, width), got shape {mask.shape}")
    height = mask.shape[0]
    rows = np.broadcast_to(np.asarray(row_area_m2, dtype=np.float64), (height,))
    values = mask.astype(np.int64)
    counted = values != ignore
    stray = np.unique(values[counted & ((values < 0) | (values >= n_classes))])
    if stray.size:
        raise ValueError(
            f"mask values {stray.tolist()} are not class ids 0..{n_classes - 1} nor the ignore value {ignore}"
        )
    row_index = np.broadcast_to(np.arange(height)[:, None], mask.shape)
    counts = np.bincount((row_index * n_classes + values)[counted], minlength=height * n_classes)
    return (counts.reshape(height, n_classes) * rows[:, None]).sum(axis=0)
