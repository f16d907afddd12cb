"""Large tiles through the whole labelling job (real Ray, real S3): windows, world files, areas."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.common import TINY_ENCODER
from helpers.tables import read_table
from PIL import Image

from segray import storage
from segray.frames.listing import list_folder
from segray.labelling.job import LabelOptions, run_label_job
from segray.labels import CAMVID
from segray.models.artifact import init_artifact
from segray.tiles.pixel_size import WORLD_FILE_COLUMN
from segray.tiles.worldfile import world_file_candidates

pytestmark = pytest.mark.usefixtures("ray_session")

#: The class the constant model always predicts.
CONSTANT_CLASS = 3


def constant_artifact(uri: str) -> str:
    """A real artifact built for the test: a tiny UNet whose head ignores its features (weights 0) and
    whose bias makes one class win everywhere. Any seam between windows would show as another class."""
    art = init_artifact("unet", TINY_ENCODER, CAMVID, name="constant-unet", height=64, width=64)
    head = art.model.segmentation_head[0]  # type: ignore[index]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[CONSTANT_CLASS] = 5.0
    art.save(uri)
    return uri


def png(h: int, w: int, seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", rgb)[1].tobytes()


def test_large_tiles_on_s3_with_world_files_and_manifest(tmp_path: Path, s3_prefix: str) -> None:
    model = constant_artifact(str(tmp_path / "constant"))
    tiles = storage.join(s3_prefix, "tiles")
    # big.png: 700 x 900 > 2 x the 64 x 64 input, so windows; its world file says 0.5 m pixels.
    storage.write_bytes(storage.join(tiles, "big.png"), png(700, 900, 0))
    storage.write_bytes(storage.join(tiles, "big.pgw"), b"0.5\n0\n0\n-0.5\n300000.25\n5000000.25\n")
    storage.write_bytes(storage.join(tiles, "small.png"), png(60, 80, 1))  # resized path; manifest pixel size
    storage.write_bytes(storage.join(tiles, "bare.png"), png(200, 150, 2))  # windows; no pixel size at all
    storage.write_bytes(storage.join(tiles, "badwf.png"), png(50, 50, 3))
    storage.write_bytes(storage.join(tiles, "badwf.pgw"), b"0.5\n0\n")
    storage.write_bytes(storage.join(tiles, "broken.png"), b"\x89PNG\r\n\x1a\n garbage")
    manifest = pa.table(
        {
            "uri": ["tiles/big.png", "tiles/small.png", "tiles/bare.png", "tiles/badwf.png", "tiles/broken.png"],
            "region": ["north", "north", "south", "south", "south"],
            "date": ["2026-06-01", "2026-06-01", "2026-06-02", "2026-06-02", "2026-06-02"],
            "pixel_size_m": [None, 2.0, None, None, None],
        }
    )
    buf = io.BytesIO()
    pq.write_table(manifest, buf)
    storage.write_bytes(storage.join(s3_prefix, "manifest.parquet"), buf.getvalue())
    out = storage.join(s3_prefix, "out")

    s = run_label_job(
        LabelOptions(model=model, input=storage.join(s3_prefix, "manifest.parquet"), output=out, batch_size=4)
    )
    assert (s.labelled, s.failed) == (3, 2)
    rows = {r["relative_path"].rsplit("/", 1)[-1]: r for r in read_table(out, "stats").to_pylist()}
    assert set(rows) == {"big.png", "small.png", "bare.png"}
    for name, (h, w) in {"big.png": (700, 900), "bare.png": (200, 150), "small.png": (60, 80)}.items():
        r = rows[name]
        assert (r["height"], r["width"]) == (h, w)
        with Image.open(io.BytesIO(storage.read_bytes(storage.join(out, r["mask_path"])))) as im:
            mask = np.asarray(im)
        assert mask.shape == (h, w) and (mask == CONSTANT_CLASS).all(), f"{name}: seams or wrong class"
        assert r[f"px_{CAMVID.names[CONSTANT_CLASS]}"] == h * w
    big, small, bare = rows["big.png"], rows["small.png"], rows["bare.png"]
    road = CAMVID.names[CONSTANT_CLASS]
    assert big["pixel_area_m2"] == 0.25 and big[f"area_m2_{road}"] == 700 * 900 * 0.25
    assert big["pixel_size_source"] == f"world_file:{storage.join(tiles, 'big.pgw')}"
    assert small["pixel_area_m2"] == 4.0 and small["pixel_size_source"] == "manifest"
    assert small[f"area_m2_{road}"] == 60 * 80 * 4.0 and small[f"area_m2_{CAMVID.names[0]}"] == 0.0
    # No pixel size anywhere: every area column is null, never a guess.
    assert bare["pixel_area_m2"] is None and bare["pixel_size_source"] is None
    assert all(bare[f"area_m2_{n}"] is None for n in CAMVID.names)
    assert (big["region"], big["date"], bare["region"]) == ("north", "2026-06-01", "south")

    errors = {e["relative_path"].rsplit("/", 1)[-1]: e for e in read_table(out, "errors").to_pylist()}
    assert set(errors) == {"badwf.png", "broken.png"}
    assert "badwf.pgw" in errors["badwf.png"]["error"] and "6 numbers" in errors["badwf.png"]["error"]
    assert errors["broken.png"]["stage"] == "decode"
    # Failed frames keep their manifest columns, so the land-cover export can count them per region/date.
    assert {(e["region"], e["date"]) for e in errors.values()} == {("south", "2026-06-02")}


def test_a_listed_folder_finds_world_files_in_its_listing(tmp_path: Path, s3_prefix: str) -> None:
    """The folder listing that finds the frames also finds their world files (ESRI's names, the short
    form first), so each frame's pixel size costs no request per candidate name."""
    model = constant_artifact(str(tmp_path / "constant"))
    tiles = storage.join(s3_prefix, "listed")
    world = {"a.pgw": 0.5, "b.pngw": 2.0, "c.wld": 0.25, "d.pgw": 1.5, "d.pngw": 9.0, "sub/e.jgw": 0.1}
    for name, size in world.items():
        storage.write_bytes(storage.join(tiles, name), f"{size}\n0\n0\n-{size}\n100\n200\n".encode())
    names = ["a.png", "b.png", "c.png", "d.png", "sub/e.jpg", "none.png", "badwf.png"]
    for i, name in enumerate(names):
        data = png(40, 30, i) if name.endswith(".png") else cv2.imencode(".jpg", np.zeros((40, 30, 3), np.uint8))[1]
        storage.write_bytes(storage.join(tiles, name), bytes(data))
    storage.write_bytes(storage.join(tiles, "badwf.pgw"), b"0.5\n0\n")

    table = list_folder(tiles, {WORLD_FILE_COLUMN: world_file_candidates}).to_pydict()
    found = dict(zip(table["relative_path"], table[WORLD_FILE_COLUMN], strict=True))
    assert found == {
        "a.png": storage.join(tiles, "a.pgw"),
        "b.png": storage.join(tiles, "b.pngw"),
        "badwf.png": storage.join(tiles, "badwf.pgw"),
        "c.png": storage.join(tiles, "c.wld"),
        "d.png": storage.join(tiles, "d.pgw"),
        "none.png": None,
        "sub/e.jpg": storage.join(tiles, "sub/e.jgw"),
    }
    assert list_folder(tiles).column_names == ["uri", "relative_path"]  # no sidecars asked: frames only

    out = storage.join(s3_prefix, "listed-out")
    s = run_label_job(LabelOptions(model=model, input=tiles, output=out, batch_size=4))
    assert (s.labelled, s.failed) == (6, 1)
    rows = {r["relative_path"]: r for r in read_table(out, "stats").to_pylist()}
    for rel in ("a.png", "b.png", "c.png", "d.png", "sub/e.jpg"):
        assert rows[rel]["pixel_size_source"] == f"world_file:{found[rel]}"
        assert rows[rel]["pixel_area_m2"] == pytest.approx(world[found[rel].removeprefix(tiles + "/")] ** 2)
    assert rows["none.png"]["pixel_area_m2"] is None and rows["none.png"]["pixel_size_source"] is None
    assert "_world_file" not in rows["a.png"]  # the listing's column is not an output column
    (error,) = read_table(out, "errors").to_pylist()
    assert error["relative_path"] == "badwf.png" and "badwf.pgw" in error["error"] and "6 numbers" in error["error"]


def test_job_option_pixel_size_and_tiling_threshold(tmp_path: Path) -> None:
    model = constant_artifact(str(tmp_path / "constant"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png(300, 200, 4))
    out = tmp_path / "out"
    # tile_above=10: 300 px is below 10 x 64, so the frame is resized, not windowed; same answer here.
    s = run_label_job(
        LabelOptions(model=model, input=str(tmp_path / "in"), output=str(out), pixel_size=0.1, tile_above=10)
    )
    assert s.labelled == 1
    (row,) = read_table(str(out), "stats").to_pylist()
    assert row["pixel_area_m2"] == pytest.approx(0.01) and row["pixel_size_source"] == "option"
    assert row[f"area_m2_{CAMVID.names[CONSTANT_CLASS]}"] == pytest.approx(300 * 200 * 0.01)
    with pytest.raises(ValueError, match="pixel_size must be a positive"):
        LabelOptions(model=model, input="x", output="y", pixel_size=0)
    with pytest.raises(ValueError, match="multiples of 32"):
        run_label_job(LabelOptions(model=model, input=str(tmp_path / "in"), output=str(out), tile_window=(100, 64)))


def trained_at(uri: str, frame_size: list[int] | None) -> str:
    """A 64x128-input artifact as `segray train` exports it after training on frames of ``frame_size``."""
    art = init_artifact("unet", TINY_ENCODER, CAMVID, name="trained", height=64, width=128)
    if frame_size:
        art.metrics = {"source": "segray train", "train_frame_size": frame_size}
    art.save(uri)
    return uri


def test_frames_the_size_the_model_was_trained_on_are_resized_not_windowed(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):  # 4x the model input on each side, the size of the training frames
        (tmp_path / "in" / f"f{i}.png").write_bytes(png(256, 512, i))
    trained = trained_at(str(tmp_path / "trained"), [256, 512])
    unknown = trained_at(str(tmp_path / "unknown"), None)
    runs = {
        "trained, default": LabelOptions(model=trained, input=str(tmp_path / "in"), output=str(tmp_path / "a")),
        "trained, windows asked for": LabelOptions(
            model=trained, input=str(tmp_path / "in"), output=str(tmp_path / "b"), tile_above=0.5
        ),
        "no record: the model input is the reference": LabelOptions(
            model=unknown, input=str(tmp_path / "in"), output=str(tmp_path / "c")
        ),
    }
    windowed = {name: run_label_job(opts).windowed for name, opts in runs.items()}
    assert windowed == {
        "trained, default": 0,
        "trained, windows asked for": 3,
        "no record: the model input is the reference": 3,
    }
    for out in ("a", "b", "c"):  # every way, masks at the frames' own size
        assert Image.open(tmp_path / out / "masks" / "f0.png.png").size == (512, 256)
