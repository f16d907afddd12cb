"""A real Sentinel-2 scene (Strzegom, Poland; outside the repository): ten named uint16 bands in
UTM 33N, read in windows, 401 x 401 pixels of 100 m^2."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.common import DATA_DIR

from segray.geo.areas import class_areas, scene_row_areas_m2
from segray.geo.scene import block_windows, open_scene, read_info, read_window, select_bands

IMAGES = DATA_DIR / "geo" / "strzegom" / "images"


@pytest.mark.slow
def test_a_real_sentinel2_scene_is_read_with_its_bands_crs_and_area() -> None:
    scenes = sorted(IMAGES.glob("strzegom_*_33u.tif")) if IMAGES.is_dir() else []
    if not scenes:
        pytest.skip(f"the Strzegom Sentinel-2 scenes are not in {IMAGES} (real data, kept outside the repository)")
    info = read_info(str(scenes[0]))
    assert info.count == 10 and info.crs == "EPSG:32633" and not info.is_geographic
    assert info.band_names == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    assert (info.width, info.height) == (401, 401) and info.dtypes == ("uint16",) * 10
    assert info.bounds_wgs84 is not None and 16.0 < info.bounds_wgs84[0] < 16.8 and 50.8 < info.bounds_wgs84[1] < 51.2
    rows = scene_row_areas_m2(info)
    assert class_areas(np.zeros((401, 401), dtype=np.uint8), rows, n_classes=1)[0] == 401 * 401 * 100
    rgb = select_bands(info, ["B04", "B03", "B02"])
    with open_scene(str(scenes[0])) as ds:
        windows = block_windows(info, size=128)
        assert len(windows) > 1 and all(w.width == 401 for w in windows)  # striped: row strips
        data, valid = read_window(ds, windows[0], rgb)
    assert data.dtype == np.uint16 and data.shape[0] == 3 and valid.all()
    assert 200 < float(np.median(data)) < 10_000  # reflectance x 10,000, not 8-bit
