"""COG masks: written window by window, they validate as Cloud-Optimized GeoTIFFs, keep the scene's
grid, carry the label map's colours and nodata 255, and their overviews hold real class ids only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers.geodata import s2_scene, write_geotiff
from helpers.seaweed import SeaweedS3
from rio_cogeo.cogeo import cog_validate

from segray.geo.cog import NODATA, CogMaskWriter
from segray.geo.scene import SceneInfo, block_windows, open_scene, read_info
from segray.labels import CAMVID, LabelClass, LabelMap

#: Grey lies between black and white: an overview that averaged the colours of black and white pixels
#: (what GDAL's AVERAGE does on a colour table) would show grey, a class that is not there.
GREYS = LabelMap(
    "greys",
    (
        LabelClass(0, "black", (0, 0, 0)),
        LabelClass(1, "grey", (128, 128, 128)),
        LabelClass(2, "white", (255, 255, 255)),
    ),
)
#: Big enough for overviews: the COG driver halves the image until one 512 x 512 tile holds it.
HEIGHT, WIDTH = 1100, 1300


@pytest.fixture
def scene(tmp_path: Path) -> SceneInfo:
    """A UTM scene's description, grown to HEIGHT x WIDTH with 512-pixel blocks (no pixels needed)."""
    info = read_info(str(write_geotiff(tmp_path / "s.tif", s2_scene(height=8, width=8, border=0))))
    return dataclasses.replace(info, width=WIDTH, height=HEIGHT, block_shape=(512, 512))


def two_class_mask() -> np.ndarray:
    """White on the left, then black and white in a one-pixel checkerboard: an averaging overview would
    show grey there."""
    rows, cols = np.indices((HEIGHT, WIDTH))
    mask = np.where((rows + cols) % 2 == 0, 0, 2).astype(np.uint8)
    mask[:, :400] = 2
    return mask


def write_mask(uri: str, scene: SceneInfo, mask: np.ndarray, valid: np.ndarray, labels: LabelMap = GREYS) -> str:
    with CogMaskWriter(uri, scene, labels) as writer:
        for w in block_windows(scene, size=300):
            rows, cols = w.toslices()
            writer.write(w, mask[rows, cols], valid[rows, cols])
    return uri


def test_a_mask_is_written_as_a_valid_cog(tmp_path: Path, scene: SceneInfo) -> None:
    mask = two_class_mask()
    valid = np.ones(mask.shape, dtype=bool)
    valid[:40] = False  # a nodata band along the top
    out = write_mask(str(tmp_path / "out" / "mask.tif"), scene, mask, valid)
    is_valid, errors, _warnings = cog_validate(out)
    assert is_valid and errors == []
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count, ds.dtypes) == (WIDTH, HEIGHT, 1, ("uint8",))
        assert ds.crs.to_epsg() == 32633 and tuple(ds.transform)[:6] == scene.transform
        assert ds.nodata == NODATA and ds.compression.name == "deflate"
        assert ds.block_shapes == [(512, 512)] and ds.overviews(1) == [2, 4]
        data = ds.read(1)
        colours = ds.colormap(1)
    assert np.array_equal(data, np.where(valid, mask, NODATA))
    for c in GREYS.classes:
        assert colours[c.id][:3] == c.color and colours[c.id][3] == 255
    assert colours[NODATA][3] == 0  # nodata is transparent
    for level in range(2):
        with rasterio.open(out, overview_level=level) as ov:
            values = set(np.unique(ov.read(1)).tolist())
        assert values <= {0, 2, NODATA} and {0, 2} <= values  # NEAREST: no grey (1) between them


def test_unwritten_pixels_are_nodata_and_bad_values_are_refused(tmp_path: Path, scene: SceneInfo) -> None:
    with CogMaskWriter(str(tmp_path / "part.tif"), scene, CAMVID) as writer:
        window = block_windows(scene, size=512)[0]
        writer.write(window, np.full((512, 512), 3, dtype=np.uint8))
        with pytest.raises(ValueError, match=r"values \[11\] are not in 0..10 nor 255"):
            writer.write(window, np.full((512, 512), 11, dtype=np.uint8))
        with pytest.raises(ValueError, match=r"values \[256\]"):
            writer.write(window, np.full((512, 512), 256, dtype=np.int64))  # not wrapped to 0
        with pytest.raises(ValueError, match="do not fit window"):
            writer.write(window, np.zeros((10, 10), dtype=np.uint8))
    with rasterio.open(tmp_path / "part.tif") as ds:
        data = ds.read(1)
    assert (data[:512, :512] == 3).all() and (data[512:] == NODATA).all() and (data[:, 512:] == NODATA).all()


def test_a_confidence_map_is_written_in_percent(tmp_path: Path, scene: SceneInfo) -> None:
    rows, cols = np.indices((HEIGHT, WIDTH))
    percent = np.where((rows + cols) % 2 == 0, 0, 100).astype(np.uint8)
    percent[:, :400] = (rows[:, :400] + cols[:, :400]) % 101  # every percent, in blocks wide enough to survive NEAREST
    with CogMaskWriter.confidence(str(tmp_path / "conf.tif"), scene) as writer:
        for w in block_windows(scene, size=600):
            writer.write(w, percent[w.toslices()])
        with pytest.raises(ValueError, match=r"values \[101\] are not in 0..100"):
            writer.write(w, np.full((int(w.height), int(w.width)), 101, dtype=np.uint8))
    assert cog_validate(str(tmp_path / "conf.tif"))[0]
    with rasterio.open(tmp_path / "conf.tif") as ds:
        assert ds.nodata == NODATA and np.array_equal(ds.read(1), percent)
        with pytest.raises(ValueError):
            ds.colormap(1)  # no colour table: percentages are not classes
    with rasterio.open(tmp_path / "conf.tif", overview_level=0) as ov:
        # AVERAGE overviews: a percent is a continuous value, so the checkerboard of 0 and 100 shows its mean.
        assert (ov.read(1)[:, 250:] == 50).mean() > 0.95


def test_a_failed_write_publishes_nothing(tmp_path: Path, scene: SceneInfo) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with (
        pytest.raises(RuntimeError, match="model failed"),
        CogMaskWriter(str(tmp_path / "x.tif"), scene, CAMVID, str(tmp)),
    ):
        raise RuntimeError("model failed")
    assert not (tmp_path / "x.tif").exists() and list(tmp.iterdir()) == []


def test_a_cog_is_published_to_s3_and_read_back(s3: SeaweedS3, s3_prefix: str, scene: SceneInfo) -> None:
    mask = two_class_mask()
    valid = np.ones(mask.shape, dtype=bool)
    valid[:, -7:] = False
    mask[:50, :50] = 10
    uri = write_mask(f"{s3_prefix}/masks/scene.tif", scene, mask, valid, CAMVID)
    info = read_info(uri)
    assert (info.width, info.height, info.crs, info.nodata) == (WIDTH, HEIGHT, "EPSG:32633", NODATA)
    assert info.block_shape == (512, 512) and info.transform == scene.transform
    with open_scene(uri) as ds:
        assert ds.overviews(1) == [2, 4] and ds.colormap(1)[10][:3] == CAMVID.classes[10].color
        assert np.array_equal(ds.read(1), np.where(valid, mask, NODATA))
