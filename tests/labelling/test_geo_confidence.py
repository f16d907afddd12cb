"""``segray label --write-confidence``: a GeoTIFF scene's per-pixel confidence map, written as a COG of
whole percents on the scene's grid beside its class mask; refused for PNG/JPEG frames. And the PNG
path's stages (read, predict, write) never load GDAL."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run
from helpers.common import ROOT, TINY_ENCODER
from helpers.frames import write_frames
from helpers.geodata import write_geotiff
from helpers.tables import read_table

from segray.labelling.read import read_frames
from segray.labels import CAMVID
from segray.models.artifact import init_artifact, read_info
from segray.outputs.schema import CONFIDENCE_MAP_COLUMN
from segray.tasks.semantic.predict import Predictor

BANDS = ("B04", "B03", "B02", "B08")
BORDER = 7


def scene_data(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint16 bands with a nodata (0) border and a bright block, so the model's confidence varies."""
    rng = np.random.default_rng(seed)
    data = rng.integers(500, 3000, size=(len(BANDS), height, width), dtype=np.uint16)
    data[:, 60:140, 80:200] += 4000
    data[:, :BORDER], data[:, -BORDER:], data[:, :, :BORDER], data[:, :, -BORDER:] = 0, 0, 0, 0
    return data


def border_invalid(height: int, width: int) -> np.ndarray:
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:BORDER], invalid[-BORDER:], invalid[:, :BORDER], invalid[:, -BORDER:] = True, True, True, True
    return invalid


@pytest.fixture(scope="module")
def band_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 4-band UNet with a tiny encoder and 64x64 input."""
    path = tmp_path_factory.mktemp("models") / "bands-unet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        art = init_artifact(
            "unet", TINY_ENCODER, CAMVID, height=64, width=64, bands=BANDS, band_mean=(1500.0,) * 4, band_std=(1e3,) * 4
        )
    art.save(str(path))
    return str(path)


def test_predictor_hands_over_the_confidence_map_only_when_asked(tmp_path: Path, band_model: str) -> None:
    """The map is the winning class's probability in percent, 255 exactly on nodata; the mask and the
    row's mean confidence are the same with or without it, and the mean is that of the map's pixels."""
    height, width = 150, 170
    tif = write_geotiff(tmp_path / "s.tif", scene_data(height, width), nodata=0, descriptions=BANDS)
    batch = read_frames(
        {"uri": np.array([str(tif)], dtype=object), "relative_path": np.array(["s.tif"], dtype=object)},
        read_info(band_model).preprocessing.to_dict(),
        max_pixels=10**8,
    )
    plain = Predictor(band_model)(dict(batch))
    with_map = Predictor(band_model, write_confidence=True)(dict(batch))
    assert CONFIDENCE_MAP_COLUMN not in plain and with_map["error"][0] == ""
    assert np.array_equal(plain["mask"][0], with_map["mask"][0])
    assert with_map["mean_confidence"][0] == pytest.approx(plain["mean_confidence"][0], rel=1e-6)
    percent = with_map[CONFIDENCE_MAP_COLUMN][0]
    invalid = border_invalid(height, width)
    assert percent.shape == (height, width) and percent.dtype == np.uint8
    assert np.array_equal(percent == 255, invalid)
    valid = percent[~invalid]
    # The winning class of 11 holds at least 1/11 of the probability.
    assert valid.min() >= 100 // CAMVID.num_classes and valid.max() <= 100 and len(np.unique(valid)) > 1
    sampled = percent[::2, ::2][~invalid[::2, ::2]]  # the row's mean samples every 2nd pixel
    assert sampled.mean() / 100 == pytest.approx(with_map["mean_confidence"][0], abs=0.006)


@pytest.mark.usefixtures("ray_session")
def test_label_write_confidence_writes_a_cog_of_percents_on_the_scene_grid(
    tmp_path: Path, band_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    height, width = 520, 600  # large enough for GDAL's COG driver to add an overview level
    (tmp_path / "in" / "tiles").mkdir(parents=True)
    tif = write_geotiff(
        tmp_path / "in" / "tiles" / "s2.tif", scene_data(height, width), nodata=0, descriptions=BANDS, tiled=True
    )
    out = tmp_path / "out"
    args = ["label", "--model", band_model, "--input", str(tmp_path / "in"), "--max-actors", "1"]
    code, text = run(capsys, *args, "--output", str(out), "--write-confidence")
    assert code == 0, text
    assert read_table(str(out), "errors").num_rows == 0
    (row,) = read_table(str(out), "stats").to_pylist()
    assert row["confidence_path"] == "confidence/tiles/s2.tif.tif"
    cog = out / row["confidence_path"]
    ok, errors, _ = cog_validate(str(cog))
    assert ok and not errors
    invalid = border_invalid(height, width)
    with rasterio.open(tif) as src, rasterio.open(cog) as conf:
        assert (conf.crs, conf.transform, conf.shape) == (src.crs, src.transform, src.shape)
        assert conf.count == 1 and conf.dtypes[0] == "uint8" and conf.nodata == 255 and conf.overviews(1)
        percent = conf.read(1)
    assert np.array_equal(percent == 255, invalid)
    assert percent[~invalid].min() >= 100 // CAMVID.num_classes and percent[~invalid].max() <= 100
    with rasterio.open(cog, overview_level=0) as overview:  # AVERAGE overviews stay percents
        zoomed = overview.read(1)
    assert zoomed[zoomed != 255].max() <= 100 and (zoomed == 255).any()
    with rasterio.open(out / row["mask_path"]) as mask:  # the mask is unchanged by the flag
        assert np.array_equal(mask.read(1) == 255, invalid)

    plain = tmp_path / "plain"
    code, text = run(capsys, *args, "--output", str(plain))
    assert code == 0, text
    (row,) = read_table(str(plain), "stats").to_pylist()
    assert row["confidence_path"] is None and not (plain / "confidence").exists()


@pytest.mark.usefixtures("ray_session")
def test_write_confidence_refuses_png_frames_before_any_work(
    tmp_path: Path, band_model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = tmp_path / "rgb"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        init_artifact("unet", TINY_ENCODER, CAMVID, height=64, width=64).save(str(rgb))
    (frame,) = write_frames(tmp_path / "in", [(40, 60)])
    out2 = tmp_path / "out2"
    code, text = run(
        capsys,
        "label",
        "--model",
        str(rgb),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out2),
        "--write-confidence",
    )
    assert code == 2
    assert "--write-confidence writes confidence maps of GeoTIFF scenes (.tif, .tiff) only" in text
    assert str(frame) in text
    assert not (out2 / "stats").exists()


def test_labelling_png_frames_never_loads_gdal(tmp_path: Path) -> None:
    """Every stage a PNG frame goes through (read, predict, write), run in one fresh interpreter as Ray
    workers run them: rasterio and rio_cogeo stay unloaded."""
    write_frames(tmp_path / "in", [(40, 60)])
    (frame,) = sorted((tmp_path / "in").rglob("*.png"))
    code = f"""
import sys, warnings
import numpy as np
from segray.labelling.read import read_frames
from segray.labelling.write import write_outputs
from segray.labels import CAMVID
from segray.models.artifact import init_artifact
from segray.tasks.semantic.predict import Predictor
warnings.simplefilter("ignore")
art = init_artifact("unet", {TINY_ENCODER!r}, CAMVID, height=64, width=64)
art.save({str(tmp_path / "model")!r})
batch = {{"uri": np.array([{str(frame)!r}], dtype=object), "relative_path": np.array(["f.png"], dtype=object)}}
batch = read_frames(batch, art.preprocessing.to_dict(), max_pixels=10**8)
out = Predictor({str(tmp_path / "model")!r})(batch)
counts = write_outputs(out, {str(tmp_path / "out")!r}, "r", "m@0", CAMVID.to_dict())
print("LABELLED", int(counts["labelled"][0]))
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("rasterio", "rio_cogeo")))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "LABELLED 1" in done.stdout and "LOADED []" in done.stdout
    assert (tmp_path / "out" / "masks" / "f.png.png").is_file()
