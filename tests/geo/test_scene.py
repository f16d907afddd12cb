"""Scenes: a multi-band uint16 GeoTIFF with a nodata border read window by window, its description,
band selection by name and index, block-aligned windows, and reading through S3 (/vsis3)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers.geodata import S2_BANDS, UTM33_ORIGIN, s2_scene, write_geotiff
from helpers.seaweed import SeaweedS3
from pyproj import Transformer
from rasterio.transform import from_origin
from rasterio.windows import Window

from segray import storage
from segray.geo.gdalenv import EnvironmentCredentials, gdal_path, s3_options
from segray.geo.scene import block_windows, is_geodata, open_scene, read_info, read_window, scene_info, select_bands


@pytest.fixture
def s2_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = s2_scene()
    return write_geotiff(tmp_path / "s2.tif", data, nodata=0, descriptions=S2_BANDS), data


def test_info_describes_a_multiband_utm_scene(s2_file: tuple[Path, np.ndarray]) -> None:
    path, data = s2_file
    info = read_info(str(path))
    assert (info.width, info.height, info.count) == (80, 60, 10)
    assert info.dtypes == ("uint16",) * 10 and info.descriptions == S2_BANDS and info.band_names == list(S2_BANDS)
    assert info.crs == "EPSG:32633" and not info.is_geographic and info.nodata == 0.0
    assert info.transform == (10.0, 0.0, UTM33_ORIGIN[0], 0.0, -10.0, UTM33_ORIGIN[1])
    assert info.bounds == (600_000.0, 5_659_400.0, 600_800.0, 5_660_000.0)
    assert info.block_shape[1] == 80  # striped: blocks are whole rows
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    assert info.bounds_wgs84 is not None
    west, south, east, north = info.bounds_wgs84
    for x, y in [(600_000, 5_659_400), (600_800, 5_660_000), (600_000, 5_660_000), (600_800, 5_659_400)]:
        lon, lat = to_lonlat.transform(x, y)
        assert west - 1e-9 <= lon <= east + 1e-9 and south - 1e-9 <= lat <= north + 1e-9
    assert 16.4 < west < east < 16.5 and 51.0 < south < north < 51.2  # east of UTM 33N's meridian (15 E)


@pytest.mark.parametrize("layout", ["striped", "tiled", "bigtiff"])
def test_windows_cover_the_scene_and_mask_its_nodata(tmp_path: Path, layout: str) -> None:
    data = s2_scene(height=300, width=280)
    data[3, 100, 100] = 0  # nodata in one band of an inner pixel: the pixel is invalid
    path = write_geotiff(
        tmp_path / "s.tif", data, nodata=0, tiled=layout != "striped", block=64, bigtiff=layout == "bigtiff"
    )
    info = read_info(str(path))
    windows = block_windows(info, size=100)
    assert len(windows) > 1
    seen = np.zeros((info.height, info.width), dtype=np.int64)
    out = np.zeros_like(data)
    valid = np.zeros(seen.shape, dtype=bool)
    with open_scene(str(path)) as ds:
        for w in windows:
            rows, cols = w.toslices()
            assert rows.start % info.block_shape[0] == 0 and cols.start % info.block_shape[1] == 0  # whole blocks
            out[:, rows, cols], valid[rows, cols] = read_window(ds, w, list(range(1, 11)))
            seen[rows, cols] += 1
    assert (seen == 1).all()  # every pixel read exactly once
    assert out.dtype == np.uint16 and np.array_equal(out, data)
    assert np.array_equal(valid, (data != 0).all(axis=0))
    assert not valid[100, 100] and valid[100, 101] and not valid[:5].any()


def test_an_internal_mask_marks_pixels_invalid(tmp_path: Path) -> None:
    data = s2_scene(border=0)[:3]
    path = write_geotiff(tmp_path / "m.tif", data)  # no nodata value: only the mask band says what is valid
    with rasterio.open(path, "r+") as ds:
        mask = np.full((60, 80), 255, dtype=np.uint8)
        mask[10:20, 30:40] = 0
        ds.write_mask(mask)
    with open_scene(str(path)) as ds:
        arr, valid = read_window(ds, Window(0, 0, 80, 60), [1, 2, 3])
    assert np.array_equal(arr, data) and np.array_equal(valid, mask == 255)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_every_band_type_is_read_as_stored(tmp_path: Path, dtype: str) -> None:
    data = (np.arange(2 * 30 * 40).reshape(2, 30, 40) % 200 - (50 if dtype == "int16" else 0)).astype(dtype)
    nodata = float("nan") if dtype == "float32" else 7
    if dtype == "float32":
        data[1, 5, 6] = np.nan
    else:
        data[1, 5, 6] = nodata
    path = write_geotiff(tmp_path / f"{dtype}.tif", data, nodata=nodata, tiled=True, block=16)
    info = read_info(str(path))
    assert info.dtypes == (dtype, dtype) and info.block_shape == (16, 16)
    with open_scene(str(path)) as ds:
        arr, valid = read_window(ds, Window(0, 0, 40, 30), [1, 2])
    assert arr.dtype == np.dtype(dtype)
    assert np.array_equal(arr, data, equal_nan=dtype == "float32")
    assert not valid[5, 6]
    if dtype != "float32":
        expected = ~(data == nodata).any(axis=0)
        assert np.array_equal(valid, expected)
    else:
        assert valid.sum() == 30 * 40 - 1


def test_bands_are_selected_by_name_or_index(s2_file: tuple[Path, np.ndarray]) -> None:
    info = read_info(str(s2_file[0]))
    assert select_bands(info, ["B04", "B03", "B02"]) == [3, 2, 1]
    assert select_bands(info, ["b8a", "B12"]) == [8, 10]  # names match case-insensitively
    assert select_bands(info, [4, 3, 2]) == [4, 3, 2]
    assert select_bands(info, ["B08", 1, "2"]) == [7, 1, 2]
    assert select_bands(info, None) == list(range(1, 11))


def test_a_missing_band_names_it_and_lists_the_files_bands(s2_file: tuple[Path, np.ndarray]) -> None:
    info = read_info(str(s2_file[0]))
    with pytest.raises(ValueError) as e:
        select_bands(info, ["B04", "B01", 11, "B09"])
    msg = str(e.value)
    assert "no band B01, 11, B09" in msg and "10 bands" in msg
    assert "1=B02" in msg and "10=B12" in msg and str(s2_file[0]) in msg


def test_bands_without_descriptions_are_named_by_index(tmp_path: Path) -> None:
    info = read_info(str(write_geotiff(tmp_path / "plain.tif", s2_scene()[:3])))
    assert info.band_names == ["band1", "band2", "band3"]
    assert select_bands(info, ["band2", 3]) == [2, 3]
    with pytest.raises(ValueError, match="no band B04 .*1=band1, 2=band2, 3=band3"):
        select_bands(info, ["B04"])


def test_large_scenes_are_read_in_windows_of_whole_blocks(s2_file: tuple[Path, np.ndarray]) -> None:
    info = read_info(str(s2_file[0]))
    striped = dataclasses.replace(info, width=10_980, height=10_980, block_shape=(1, 10_980))
    strips = block_windows(striped, size=1024)
    assert all(w.width == 10_980 and w.col_off == 0 for w in strips)  # full-width row strips
    assert max(w.height for w in strips) == 1024 * 1024 // 10_980 and sum(w.height for w in strips) == 10_980
    tiled = dataclasses.replace(striped, block_shape=(512, 512))
    tiles = block_windows(tiled, size=1000)
    assert {(w.width, w.height) for w in tiles[:-1]} >= {(1024, 1024)}
    assert sum(w.width * w.height for w in tiles) == 10_980 * 10_980
    assert all(w.row_off % 512 == 0 and w.col_off % 512 == 0 for w in tiles)
    small = block_windows(dataclasses.replace(info, block_shape=(256, 256)), size=4096)
    assert [(w.col_off, w.row_off, w.width, w.height) for w in small] == [(0, 0, 80, 60)]


def test_geodata_is_routed_by_extension() -> None:
    assert is_geodata("s3://b/scenes/x.TIF") and is_geodata("/data/a.tiff") and is_geodata("a.tif?versionId=3")
    assert not is_geodata("frame.png") and not is_geodata("photo.jpg") and not is_geodata("x.tif.aux.xml")


def test_gdal_paths_and_s3_settings() -> None:
    assert gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert gdal_path("file:///data/x.tif") == "/data/x.tif"
    with pytest.raises(storage.StorageError, match="bucket, not a file"):
        gdal_path("s3://bucket/")
    local = s3_options({"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_REGION": "eu-central-1"})
    assert local["AWS_S3_ENDPOINT"] == "127.0.0.1:8333" and local["AWS_HTTPS"] == "NO"
    assert local["AWS_VIRTUAL_HOSTING"] == "FALSE" and local["AWS_REGION"] == "eu-central-1"
    minio = s3_options({"AWS_ENDPOINT_URL": "https://minio.example.org/", "AWS_ENDPOINT_URL_S3": ""})
    assert minio["AWS_S3_ENDPOINT"] == "minio.example.org" and minio["AWS_HTTPS"] == "YES"
    assert "AWS_S3_ENDPOINT" not in s3_options({}) and "AWS_HTTPS" not in s3_options({})
    env = {"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "very-secret-value"}
    creds = EnvironmentCredentials(env)
    assert creds.get_credential_options() == env and "very-secret" not in repr(creds)
    assert not any("very-secret" in v for v in s3_options(env).values())


def test_a_scene_is_read_from_s3_through_vsis3(
    s3: SeaweedS3, s3_prefix: str, s2_file: tuple[Path, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    path, data = s2_file
    uri = f"{s3_prefix}/scenes/s2.tif"
    storage.write_bytes(uri, path.read_bytes())
    caplog.set_level(logging.DEBUG)
    info = read_info(uri)
    assert info == dataclasses.replace(read_info(str(path)), uri=uri)
    with open_scene(uri) as ds:
        assert ds.name == "/vsis3/" + uri[len("s3://") :]
        arr, valid = read_window(ds, Window(10, 20, 30, 15), select_bands(info, ["B04", "B08"]))
    assert np.array_equal(arr, data[[2, 6], 20:35, 10:40]) and valid.all()
    assert s3.secret_key not in caplog.text


def test_refused_s3_credentials_fail_clearly(
    s3: SeaweedS3, s3_prefix: str, s2_file: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"{s3_prefix}/refused.tif"
    storage.write_bytes(uri, s2_file[0].read_bytes())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    with pytest.raises(storage.StorageError) as e:
        read_info(uri)
    assert uri in str(e.value) and "access denied" in str(e.value) and "not-the-secret" not in str(e.value)


def test_a_scene_without_crs_has_no_wgs84_bounds(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=3, count=1, dtype="uint8", transform=from_origin(0, 3, 1, 1)
    ) as ds:
        ds.write(np.ones((1, 3, 4), dtype=np.uint8))
    with open_scene(str(path)) as ds:
        info = scene_info(ds)
    assert info.crs is None and info.bounds_wgs84 is None and info.uri == str(path)
