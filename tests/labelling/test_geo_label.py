"""GeoTIFF scenes labelled at native resolution, window by window, with the model's bands: the read
stage's routing, the Predictor on geodata rows, and the labelling job end to end on the suite's Ray
and SeaweedFS."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run
from helpers.common import TINY_ENCODER
from helpers.frames import write_frames
from helpers.geodata import write_geotiff
from helpers.tables import read_table
from rasterio.transform import from_origin

from segray import storage
from segray.geo.areas import row_areas_m2
from segray.geo.scenejson import scene_from_json
from segray.labelling.job import LabelOptions, run_label_job
from segray.labelling.read import read_frames
from segray.labels import CAMVID
from segray.models.artifact import init_artifact
from segray.tasks.semantic.predict import Predictor

pytestmark = pytest.mark.usefixtures("ray_session")

#: The model's bands, in its channel order (not the file's).
MODEL_BANDS = ("B04", "B03", "B02", "B08")
FILE_BANDS = ("B02", "B03", "B04", "B08")
HEIGHT, WIDTH, BORDER = 260, 300, 7
#: 0.001 degree pixels near Wroclaw.
WGS84_GRID = from_origin(16.0, 51.0, 0.001, 0.001)


def scene_data(count: int = 4, height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """uint16 reflectance-like bands with a nodata (0) border; a bright block so classes differ."""
    rng = np.random.default_rng(seed)
    data = rng.integers(500, 3000, size=(count, height, width), dtype=np.uint16)
    data[:, 60:140, 80:200] += 4000
    data[:, :BORDER] = 0
    data[:, -BORDER:] = 0
    data[:, :, :BORDER] = 0
    data[:, :, -BORDER:] = 0
    return data


def border_invalid(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:BORDER], invalid[-BORDER:], invalid[:, :BORDER], invalid[:, -BORDER:] = True, True, True, True
    return invalid


@pytest.fixture(scope="module")
def band_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 4-band UNet with a tiny encoder and 64x64 input."""
    path = tmp_path_factory.mktemp("models") / "bands-unet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no band statistics given: fine for a test
        art = init_artifact(
            "unet",
            TINY_ENCODER,
            CAMVID,
            name="bands-unet",
            height=64,
            width=64,
            bands=MODEL_BANDS,
            band_mean=(1500.0,) * 4,
            band_std=(1000.0,) * 4,
        )
    art.save(str(path))
    return str(path)


def read_batch(uris: list[str], model: str) -> dict[str, np.ndarray]:
    """The read stage's batch for ``uris``, as the labelling job makes it."""
    from segray.models.artifact import read_info

    pre = read_info(model).preprocessing.to_dict()
    batch = {"uri": np.array(uris, dtype=object), "relative_path": np.array([Path(u).name for u in uris], dtype=object)}
    return read_frames(batch, pre, max_pixels=10**8)


def test_predictor_labels_a_utm_scene_with_nodata(tmp_path: Path, band_model: str) -> None:
    tif = write_geotiff(tmp_path / "s2.tif", scene_data(), nodata=0, descriptions=FILE_BANDS)
    batch = read_batch([str(tif)], band_model)
    assert batch["error"][0] == "" and batch["encoded"][0] == b""  # header only: the actor reads the pixels
    assert (batch["width"][0], batch["height"][0]) == (WIDTH, HEIGHT)
    assert batch["pixel_area_m2"][0] == pytest.approx(100.0) and batch["pixel_size_source"][0] == "crs"
    scene = scene_from_json(batch["geo_scene"][0])
    assert scene.crs == "EPSG:32633" and (scene.width, scene.height) == (WIDTH, HEIGHT)
    assert scene.nodata == 0 and len(scene.transform) == 6

    out = Predictor(band_model)(batch)
    assert out["error"][0] == ""
    mask = out["mask"][0]
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == np.uint8
    assert np.array_equal(mask == 255, border_invalid())  # 255 exactly where the scene has no data
    assert mask[~border_invalid()].max() < CAMVID.num_classes
    counts = out["class_pixels"][0]
    assert counts.tolist() == np.bincount(mask[mask != 255], minlength=CAMVID.num_classes).tolist()
    assert out["nodata_pixels"][0] == border_invalid().sum()
    assert out["class_area_m2"][0] == pytest.approx(counts * 100.0)  # 10 m pixels
    assert out["windowed"][0] and 0 < out["mean_confidence"][0] <= 1
    assert out["geo_scene"][0] == batch["geo_scene"][0]


def test_geographic_scene_areas_are_geodesic_per_row(tmp_path: Path, band_model: str) -> None:
    height, width = 96, 80
    transform = WGS84_GRID
    data = scene_data(height=height, width=width, seed=3)
    tif = write_geotiff(tmp_path / "wgs84.tif", data, crs="EPSG:4326", transform=transform, nodata=0)
    bands_by_index = tmp_path / "model-by-index"
    # Bands named by 1-based index: a file without band descriptions.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        init_artifact(
            "unet",
            TINY_ENCODER,
            CAMVID,
            height=64,
            width=64,
            bands=("3", "2", "1", "4"),
            band_mean=(1500.0,) * 4,
            band_std=(1000.0,) * 4,
        ).save(str(bands_by_index))
    batch = read_batch([str(tif)], str(bands_by_index))
    assert batch["error"][0] == "" and np.isnan(batch["pixel_area_m2"][0]) and batch["pixel_size_source"][0] == "crs"
    out = Predictor(str(bands_by_index))(batch)
    mask, areas = out["mask"][0], out["class_area_m2"][0]
    valid = mask != 255
    assert np.array_equal(~valid, border_invalid(height, width))
    rows = row_areas_m2("EPSG:4326", tuple(transform)[:6], height)
    assert rows[0] < rows[-1]  # pixels grow towards the equator
    assert areas.sum() == pytest.approx(float((valid.sum(axis=1) * rows).sum()), rel=1e-9)
    assert areas.sum() != pytest.approx(float(valid.sum() * rows.mean()), rel=1e-12)


def test_missing_bands_and_frames_are_error_rows(tmp_path: Path, band_model: str) -> None:
    three = write_geotiff(tmp_path / "three.tif", scene_data(3, 64, 64), nodata=0, descriptions=FILE_BANDS[:3])
    png = write_frames(tmp_path / "frames", [(40, 50)])[0]
    batch = read_batch([str(three), str(png)], band_model)
    assert batch["error_stage"].tolist() == ["read", "read"]
    assert "B08" in batch["error"][0] and "B02" in batch["error"][0]
    assert batch["error"][1] == f"a multi-band model labels GeoTIFF scenes; {png} is PNG"
    out = Predictor(band_model)(batch)
    assert out["error"].tolist() == batch["error"].tolist() and not out["windowed"].any()


def test_rgb_model_reads_georeferenced_uint8_as_a_scene_and_plain_tiff_as_a_frame(
    tmp_path: Path, tiny_model: str
) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, size=(3, 90, 110), dtype=np.uint8)
    geo = write_geotiff(tmp_path / "geo.tif", rgb)
    plain = write_geotiff(tmp_path / "plain.tif", rgb, crs=None)
    batch = read_batch([str(geo), str(plain)], tiny_model)
    assert batch["error"].tolist() == ["", ""]
    assert batch["geo_scene"][0] and batch["geo_scene"][1] == ""
    assert batch["pixel_size_source"][1] != "crs" and batch["image"][1].any()  # decoded as today
    out = Predictor(tiny_model)(batch)
    assert out["mask"][0].shape == (90, 110) and out["windowed"].tolist() == [True, False]
    assert out["class_pixels"][0].sum() == 90 * 110 and out["nodata_pixels"].tolist() == [0, 0]
    assert np.isnan(out["class_area_m2"][1]).all()


def test_label_job_labels_scenes_from_s3_to_cog_masks_on_s3(tmp_path: Path, band_model: str, s3_prefix: str) -> None:
    """SeaweedFS to SeaweedFS: the mask is a valid COG on the scene's grid (CRS, transform, size),
    255 exactly where the scene has nodata, with overviews and the label map's colours; areas leave
    nodata out and are pixel counts x 100 m^2 at 10 m."""
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    height, width = 520, 600  # large enough for GDAL's COG driver to add an overview level
    tif = write_geotiff(tmp_path / "s2.tif", scene_data(height=height, width=width), nodata=0, descriptions=FILE_BANDS)
    storage.write_bytes(f"{s3_prefix}/in/tiles/s2.tif", tif.read_bytes())
    out = f"{s3_prefix}/out"
    s = run_label_job(LabelOptions(model=band_model, input=f"{s3_prefix}/in", output=out))
    assert (s.labelled, s.failed, s.windowed) == (1, 0, 1)
    assert read_table(out, "errors").num_rows == 0
    (row,) = read_table(out, "stats").to_pylist()
    assert row["mask_path"] == "masks/tiles/s2.tif.tif" and (row["width"], row["height"]) == (width, height)
    invalid = border_invalid(height, width)
    assert row["crs"] == "EPSG:32633" and row["nodata_pixels"] == int(invalid.sum())
    assert sum(row[f"px_{name}"] for name in CAMVID.names) == int((~invalid).sum())
    for name in CAMVID.names:
        assert row[f"area_m2_{name}"] == pytest.approx(row[f"px_{name}"] * 100.0)
    assert row["pixel_size_source"] == "crs" and row["area_nodata_m2"] == pytest.approx(invalid.sum() * 100.0)

    local = tmp_path / "mask.tif"
    local.write_bytes(storage.read_bytes(storage.join(out, row["mask_path"])))
    ok, errors, _ = cog_validate(str(local))
    assert ok and not errors
    with rasterio.open(tif) as src, rasterio.open(local) as mask:
        assert (mask.crs, mask.transform, mask.shape) == (src.crs, src.transform, src.shape)
        assert mask.nodata == 255 and mask.overviews(1)
        classes = mask.read(1)
        colours = mask.colormap(1)
    assert np.array_equal(classes == 255, invalid)
    assert set(np.unique(classes[~invalid])) <= set(range(CAMVID.num_classes))
    assert all(colours[c.id][:3] == tuple(c.color) for c in CAMVID.classes)


def test_a_scene_in_degrees_gets_geodesic_areas_end_to_end(tmp_path: Path, band_model: str) -> None:
    """An EPSG:4326 scene's class areas sum to the geodesic area of its footprint (pyproj), within 0.1%."""
    from pyproj import Geod

    data = scene_data(height=90, width=120)
    data[data == 0] = 1000  # no nodata: every pixel is labelled
    (tmp_path / "in").mkdir()
    tif = write_geotiff(
        tmp_path / "in" / "deg.tif", data, crs="EPSG:4326", transform=WGS84_GRID, descriptions=FILE_BANDS
    )
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=band_model, input=str(tif.parent), output=str(out)))
    assert (s.labelled, s.failed) == (1, 0)
    (row,) = read_table(str(out), "stats").to_pylist()
    left, top = WGS84_GRID.c, WGS84_GRID.f
    right, bottom = left + 120 * WGS84_GRID.a, top + 90 * WGS84_GRID.e
    geodesic, _ = Geod(ellps="WGS84").polygon_area_perimeter([left, right, right, left], [bottom, bottom, top, top])
    total = sum(row[f"area_m2_{name}"] for name in CAMVID.names)
    assert total == pytest.approx(abs(geodesic), rel=1e-3)
    assert row["crs"] == "EPSG:4326" and row["pixel_size_source"] == "crs"


def test_a_scene_without_the_models_bands_stops_the_run_before_any_work(
    tmp_path: Path, band_model: str, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    three = write_geotiff(tmp_path / "x.tif", scene_data(3, 64, 64), nodata=0, descriptions=FILE_BANDS[:3])
    storage.write_bytes(f"{s3_prefix}/in/x.tif", three.read_bytes())
    out = f"{s3_prefix}/out"
    code, text = run(capsys, "label", "--model", band_model, "--input", f"{s3_prefix}/in", "--output", out)
    assert code == 2
    assert f"scene {s3_prefix}/in/x.tif has bands B02,B03,B04; the model needs B08" in text
    assert not storage.exists(storage.join(out, "stats"))
    assert not storage.list_files(storage.join(out, "_runs"))


def test_a_nan_nodata_travels_as_strict_json(tmp_path: Path) -> None:
    from segray.geo.scene import read_info
    from segray.geo.scenejson import scene_to_json

    floats = scene_data(1, 20, 30).astype(np.float32)
    nan_info = read_info(
        str(write_geotiff(tmp_path / "nan.tif", floats, crs="EPSG:4326", transform=WGS84_GRID, nodata=float("nan")))
    )
    text = scene_to_json(nan_info)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))  # strict JSON
    back = scene_from_json(text)
    assert back.nodata is not None and np.isnan(back.nodata) and back.crs == "EPSG:4326" and back.is_geographic
