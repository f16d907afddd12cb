"""The writer's GeoTIFF side: a scene's class mask becomes a Cloud-Optimized GeoTIFF on the scene's
grid, and its stats row carries its CRS, bounds, nodata and areas from the CRS, while PNG frames in
the same batch are written exactly as in a batch without scenes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from helpers.common import ROOT
from helpers.geodata import UTM33_ORIGIN, write_geotiff
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from segray import storage
from segray.geo.areas import class_areas, scene_row_areas_m2
from segray.geo.scene import SceneInfo, read_info
from segray.geo.scenejson import scene_from_json, scene_to_json
from segray.labelling.write import write_outputs
from segray.labels import CAMVID
from segray.outputs.masks import mask_key
from segray.outputs.schema import GEO_STATS_FIELDS

C = CAMVID.num_classes
#: Over one 512-pixel tile each way, so the COG has an overview and the mask goes out in two strips.
HEIGHT, WIDTH, BORDER = 520, 600, 7
MODEL, RUN = "tiny-unet@000000000000", "run-geo"
SCENE_REL, PNG_REL, BAD_REL = "scenes/T33UWS.tif", "photos/a.jpg", "photos/broken.jpg"


@pytest.fixture(params=["disk", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh output location: a local folder, or a prefix on the session's S3 server."""
    if request.param == "disk":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_prefix") + "/out"


def utm_scene(tmp_path: Path) -> SceneInfo:
    """A 4-band uint16 scene in UTM 33N at 10 m, described by the scene reader."""
    data = np.zeros((4, HEIGHT, WIDTH), np.uint16)
    return read_info(str(write_geotiff(tmp_path / "T33UWS.tif", data, nodata=0, tiled=True, block=256)))


def scene_mask(seed: int = 0) -> np.ndarray:
    """Class ids with a nodata (255) border, as the predict stage hands a scene's mask over."""
    mask = np.random.default_rng(seed).integers(0, C, (HEIGHT, WIDTH), dtype=np.uint8)
    mask[:BORDER], mask[-BORDER:], mask[:, :BORDER], mask[:, -BORDER:] = 255, 255, 255, 255
    return mask


def png_row(seed: int = 1) -> dict[str, np.ndarray]:
    """One 8x6 photo with a pixel size from the command line, as the batches of photos carry it."""
    mask = np.random.default_rng(seed).integers(0, C, (6, 8), dtype=np.uint8)
    return {
        "uri": np.array([f"s3://fleet/{PNG_REL}"], dtype=object),
        "relative_path": np.array([PNG_REL], dtype=object),
        "error": np.array([""], dtype=object),
        "error_stage": np.array([""], dtype=object),
        "mask": np.array([mask, None], dtype=object)[:1],
        "class_pixels": np.bincount(mask.ravel(), minlength=C)[None],
        "width": np.array([8], np.int32),
        "height": np.array([6], np.int32),
        "mean_confidence": np.array([0.7]),
        "pixel_area_m2": np.array([0.25]),
        "pixel_size_source": np.array(["option"], dtype=object),
        "region": np.array(["north"], dtype=object),
    }


def with_scenes(photo: dict[str, np.ndarray], info: SceneInfo, mask: np.ndarray) -> dict[str, np.ndarray]:
    """``photo`` + a scene row + a failed row, with the scene columns the predict stage adds."""
    counts = np.bincount(mask[mask != 255], minlength=C)
    areas = class_areas(mask, scene_row_areas_m2(info), C)
    masks = np.empty(3, dtype=object)
    masks[:] = [photo["mask"][0], mask, None]
    return {
        "uri": np.array([*photo["uri"], info.uri, f"s3://fleet/{BAD_REL}"], dtype=object),
        "relative_path": np.array([PNG_REL, SCENE_REL, BAD_REL], dtype=object),
        "error": np.array(["", "", "decode: truncated JPEG"], dtype=object),
        "error_stage": np.array(["", "", "decode"], dtype=object),
        "mask": masks,
        "class_pixels": np.stack([photo["class_pixels"][0], counts, np.zeros(C, np.int64)]),
        "width": np.array([8, info.width, 0], np.int32),
        "height": np.array([6, info.height, 0], np.int32),
        "mean_confidence": np.array([0.7, 0.6, np.nan]),
        "pixel_area_m2": np.array([0.25, np.nan, np.nan]),
        "pixel_size_source": np.array(["option", "", ""], dtype=object),
        "region": np.array(["north", "north", "north"], dtype=object),
        "geo_scene": np.array(["", scene_to_json(info), ""], dtype=object),
        "class_area_m2": np.stack([np.full(C, np.nan), areas, np.full(C, np.nan)]),
        "nodata_pixels": np.array([0, int((mask == 255).sum()), 0], np.int64),
    }


def read_part(output: str, folder: str) -> pa.Table:
    uri = storage.join(output, folder)
    (path,) = storage.list_files(uri, (".parquet",))  # a filesystem path: opened with the folder's filesystem
    with storage.resolve(uri)[0].open_input_file(path) as f:
        return pq.read_table(io.BytesIO(f.read()))


def local_copy(uri: str, tmp_path: Path) -> Path:
    """The published file on local disk (the COG checks read files)."""
    path = tmp_path / "fetched" / Path(uri).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(storage.read_bytes(uri))
    return path


def test_a_scene_mask_is_a_cog_on_the_scene_grid_and_photos_stay_as_they_were(where: str, tmp_path: Path) -> None:
    info, mask = utm_scene(tmp_path), scene_mask()
    result = write_outputs(with_scenes(png_row(), info, mask), where, RUN, MODEL, CAMVID.to_dict())
    assert (int(result["labelled"][0]), int(result["failed"][0])) == (2, 1)

    key = mask_key(SCENE_REL, ".tif")
    assert key == f"masks/{SCENE_REL}.tif"
    cog = local_copy(storage.join(where, key), tmp_path)
    is_valid, errors, _warnings = cog_validate(str(cog))
    assert is_valid and errors == []
    with rasterio.open(cog) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes) == (WIDTH, HEIGHT, 1, ("uint8",))
        assert ds.crs.to_epsg() == 32633 and tuple(ds.transform)[:6] == info.transform
        assert ds.nodata == 255 and ds.overviews(1) == [2]
        assert np.array_equal(ds.read(1), mask)  # nodata exactly where the mask had 255, ids elsewhere
        colours = ds.colormap(1)
    assert all(colours[c.id][:3] == c.color for c in CAMVID.classes)

    stats = read_part(where, "stats").to_pylist()
    scene = next(r for r in stats if r["relative_path"] == SCENE_REL)
    valid, nodata = HEIGHT * WIDTH - int((mask == 255).sum()), int((mask == 255).sum())
    counts = np.bincount(mask[mask != 255], minlength=C)
    assert scene["mask_path"] == key and scene["crs"] == "EPSG:32633"
    left, top = UTM33_ORIGIN
    assert (scene["bounds_left"], scene["bounds_top"]) == (left, top)
    assert (scene["bounds_right"], scene["bounds_bottom"]) == (left + 10 * WIDTH, top - 10 * HEIGHT)
    assert 16.3 < scene["lon_min"] < scene["lon_max"] < 16.6 and 51.0 < scene["lat_min"] < scene["lat_max"] < 51.2
    assert (scene["nodata_pixels"], scene["area_nodata_m2"]) == (nodata, nodata * 100.0)
    assert (scene["pixel_area_m2"], scene["pixel_size_source"]) == (100.0, "crs")
    for c, name in enumerate(CAMVID.names):
        assert scene[f"px_{name}"] == counts[c]
        assert scene[f"area_m2_{name}"] == pytest.approx(counts[c] * 100.0, rel=1e-12)
        assert scene[f"frac_{name}"] == pytest.approx(counts[c] / valid, rel=1e-12)  # of the valid pixels
    assert sum(scene[f"frac_{n}"] for n in CAMVID.names) == pytest.approx(1.0)

    (error,) = read_part(where, "errors").to_pylist()
    assert (error["relative_path"], error["stage"]) == (BAD_REL, "decode")
    assert_photo_row_as_without_scenes(where, stats, tmp_path)


def assert_photo_row_as_without_scenes(where: str, stats: list[dict[str, object]], tmp_path: Path) -> None:
    """The photo's row and PNG equal those of a batch that holds only the photo and no scene columns."""
    alone = str(tmp_path / "alone")
    write_outputs(png_row(), alone, RUN, MODEL, CAMVID.to_dict())
    (expected,) = read_part(alone, "stats").to_pylist()
    photo = next(r for r in stats if r["relative_path"] == PNG_REL)
    photo.pop("processed_at"), expected.pop("processed_at")  # written at different times
    assert photo == expected and photo["mask_path"] == f"masks/{PNG_REL}.png"
    assert all(photo[name] is None for name, _ in GEO_STATS_FIELDS)
    png = storage.read_bytes(storage.join(where, photo["mask_path"]))  # type: ignore[arg-type]
    assert png == storage.read_bytes(storage.join(alone, photo["mask_path"]))  # type: ignore[arg-type]


def test_a_geographic_scene_takes_its_areas_from_the_crs(tmp_path: Path) -> None:
    """In degrees a pixel's area shrinks towards the poles: the rows' areas come from the predict stage's
    ``class_area_m2``, not from one pixel area times the counts."""
    transform = from_origin(16.0, 51.5, 0.001, 0.001)
    data = np.zeros((1, HEIGHT, WIDTH), np.uint8)
    info = read_info(str(write_geotiff(tmp_path / "wgs.tif", data, crs="EPSG:4326", transform=transform)))
    mask = scene_mask(seed=3)
    batch = with_scenes(png_row(), info, mask)
    out = str(tmp_path / "out")
    write_outputs(batch, out, RUN, MODEL, CAMVID.to_dict())

    scene = next(r for r in read_part(out, "stats").to_pylist() if r["relative_path"] == SCENE_REL)
    assert scene["crs"] == "EPSG:4326" and scene["pixel_size_source"] == "crs"
    rows = scene_row_areas_m2(info)
    assert rows[0] < rows[-1]  # northern rows are smaller: no single pixel area holds
    assert scene["pixel_area_m2"] == pytest.approx(rows.mean())
    for c, name in enumerate(CAMVID.names):
        assert scene[f"area_m2_{name}"] == batch["class_area_m2"][1][c]
    assert (scene["lon_min"], scene["lat_max"]) == pytest.approx((16.0, 51.5))
    assert scene["nodata_pixels"] == int((mask == 255).sum()) and scene["area_nodata_m2"] is None
    with rasterio.open(local_copy(storage.join(out, mask_key(SCENE_REL, ".tif")), tmp_path)) as ds:
        assert ds.crs.to_epsg() == 4326 and np.array_equal(ds.read(1), mask)


def test_a_mask_that_cannot_be_a_cog_is_the_frames_error(tmp_path: Path) -> None:
    """A class id the label map does not have is refused by the COG writer: that frame gets an error
    row (stage ``write``) and no mask; the other frames are written."""
    batch = with_scenes(png_row(), utm_scene(tmp_path), scene_mask())
    batch["mask"][1][100, 100] = C + 3  # after the predict stage counted it
    out = str(tmp_path / "out")
    result = write_outputs(batch, out, RUN, MODEL, CAMVID.to_dict())
    assert (int(result["labelled"][0]), int(result["failed"][0])) == (1, 2)
    errors = {r["relative_path"]: r for r in read_part(out, "errors").to_pylist()}
    assert errors[SCENE_REL]["stage"] == "write" and "not in 0.." in errors[SCENE_REL]["error"]
    assert not (Path(out) / mask_key(SCENE_REL, ".tif")).exists()
    assert [r["relative_path"] for r in read_part(out, "stats").to_pylist()] == [PNG_REL]


def test_scene_json_round_trip(tmp_path: Path) -> None:
    info = utm_scene(tmp_path)
    back = scene_from_json(scene_to_json(info), info.uri)
    for field in ("width", "height", "crs", "transform", "bounds", "bounds_wgs84", "nodata", "is_geographic"):
        assert getattr(back, field) == getattr(info, field), field
    with pytest.raises(ValueError, match="not a scene description"):
        scene_from_json('{"crs": null}', "s.tif")


def test_a_batch_without_scenes_does_not_load_gdal(tmp_path: Path) -> None:
    """Photos only (with and without the scene columns): the writer never imports rasterio."""
    code = f"""
import sys
import numpy as np
from segray.labelling.write import write_outputs
from segray.labels import CAMVID
C = CAMVID.num_classes
mask = np.zeros((6, 8), np.uint8)
batch = {{
    "uri": np.array(["a.jpg"], dtype=object), "relative_path": np.array(["a.jpg"], dtype=object),
    "error": np.array([""], dtype=object), "error_stage": np.array([""], dtype=object),
    "mask": np.array([mask, None], dtype=object)[:1], "class_pixels": np.bincount(mask.ravel(), minlength=C)[None],
    "width": np.array([8], np.int32), "height": np.array([6], np.int32), "mean_confidence": np.array([0.7]),
}}
write_outputs(batch, {str(tmp_path / "a")!r}, "r", "m@0", CAMVID.to_dict())
batch |= {{"geo_scene": np.array([""], dtype=object), "class_area_m2": np.full((1, C), np.nan),
          "nodata_pixels": np.zeros(1, np.int64)}}
write_outputs(batch, {str(tmp_path / "b")!r}, "r", "m@0", CAMVID.to_dict())
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("rasterio", "rio_cogeo")))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout
    for name in ("a", "b"):  # the writes really happened
        assert len(list((tmp_path / name / "stats").iterdir())) == 1
        assert (tmp_path / name / "masks" / "a.jpg.png").is_file()
