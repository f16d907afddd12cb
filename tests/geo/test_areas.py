"""Ground areas: a UTM scene's pixels are exactly their transform's 100 m^2, a US-foot grid is
converted to metres, and a one-degree geographic scene sums to the geodesic area of its square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.geodata import s2_scene, write_geotiff
from pyproj import Geod
from rasterio.transform import from_origin

from segray.geo.areas import class_areas, row_areas_m2, scene_row_areas_m2
from segray.geo.scene import read_info

US_FOOT_M = 1200 / 3937


def test_a_utm_scene_is_width_times_height_times_100_m2(tmp_path: Path) -> None:
    info = read_info(str(write_geotiff(tmp_path / "utm.tif", s2_scene(height=60, width=80), nodata=0)))
    rows = scene_row_areas_m2(info)
    assert rows.shape == (60,) and (rows == 100.0).all()
    mask = np.zeros((60, 80), dtype=np.uint8)
    mask[:, 50:] = 2
    mask[:10] = 1
    areas = class_areas(mask, rows, n_classes=3)
    assert areas.sum() == 60 * 80 * 100  # exactly
    assert areas.tolist() == [50 * 50 * 100, 10 * 80 * 100, 50 * 30 * 100]


def test_ignored_pixels_count_for_no_class_and_stray_ids_are_refused() -> None:
    mask = np.array([[0, 1, 255], [255, 1, 1]], dtype=np.uint8)
    assert class_areas(mask, 100.0, n_classes=2).tolist() == [100.0, 300.0]
    assert class_areas(mask, np.array([1.0, 2.0]), n_classes=2).tolist() == [1.0, 5.0]  # per-row areas
    with pytest.raises(ValueError, match=r"mask values \[7\] are not class ids 0..1"):
        class_areas(np.array([[7, 0]], dtype=np.uint8), 1.0, n_classes=2)


def test_a_us_foot_grid_is_measured_in_metres() -> None:
    # EPSG:2263: NAD83 / New York Long Island, in US survey feet; 10 ft pixels.
    rows = row_areas_m2("EPSG:2263", tuple(from_origin(980_000, 200_000, 10, 10))[:6], 4)  # type: ignore[arg-type]
    assert rows == pytest.approx(np.full(4, 100 * US_FOOT_M**2), rel=1e-12)


def test_a_rotated_utm_grid_uses_the_transforms_determinant() -> None:
    a, b, d, e = 8.0, 6.0, 6.0, -8.0  # a 10 m pixel turned by about 37 degrees
    rows = row_areas_m2("EPSG:32633", (a, b, 500_000.0, d, e, 5_600_000.0), 3)
    assert rows.tolist() == [100.0, 100.0, 100.0]


def test_a_one_degree_geographic_scene_sums_to_its_geodesic_area() -> None:
    n = 100
    transform = (1.0 / n, 0.0, 10.0, 0.0, -1.0 / n, 51.0)  # 10..11 E, 50..51 N, 100 x 100 pixels
    rows = row_areas_m2("EPSG:4326", transform, n)
    assert rows.shape == (n,) and (np.diff(rows) > 0).all()  # pixels grow towards the equator (row 0 is north)
    total = class_areas(np.zeros((n, n), dtype=np.uint8), rows, n_classes=1)[0]
    edge = np.linspace(0, 1, 201)
    lons = np.concatenate([10 + edge, np.full(201, 11.0), 11 - edge, np.full(201, 10.0)])
    lats = np.concatenate([np.full(201, 50.0), 50 + edge, np.full(201, 51.0), 51 - edge])
    expected = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0])  # parallels followed closely
    assert total == pytest.approx(expected, rel=1e-3)
    assert 7.7e9 < total < 7.9e9  # about 111 km x 71.7 km
    flat = n * n * (111_320 / n) ** 2  # a flat-earth degree square: far off
    assert abs(flat - total) / total > 0.5


def test_areas_need_a_crs_and_a_north_up_geographic_grid() -> None:
    with pytest.raises(ValueError, match="no CRS"):
        row_areas_m2(None, (10.0, 0.0, 0.0, 0.0, -10.0, 0.0), 2)
    with pytest.raises(ValueError, match="rotated grid in a geographic CRS"):
        row_areas_m2("EPSG:4326", (0.01, 0.001, 10.0, 0.001, -0.01, 51.0), 2)
