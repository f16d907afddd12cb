"""Training from GeoTIFF scenes (``data.scenes``): the recipe's checks, the plan (label map, band
statistics, chips of a spatial split), the masks the loss sees, and ``segray train`` on vector labels
end to end, then ``segray label`` with the exported band model writing a COG mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from helpers.cli import run
from helpers.common import TINY_ENCODER
from helpers.scene_labels import (
    BANDS,
    HEIGHT,
    WIDTH,
    label_values,
    pixel_box,
    write_labels,
    write_polygons,
    write_scene,
)

from segray.geo.labels import IGNORE
from segray.recipe import load_config
from segray.tasks.semantic.scenes import worker_datasets
from segray.training.job import loop_config, plan

CHIP = 32
RASTER_CLASSES = [
    {"value": 1, "name": "forest", "color": "#2e8b57"},
    {"value": 2, "name": "water", "color": "#1e90ff"},
    {"value": 3, "name": "urban", "color": [139, 0, 0]},
]
#: The labelled area of the vector data: rows 0-63, columns 0-95; the field lies across its edge.
AREA = (0, 0, 64, 96)
FIELD = (16, 48, 48, 112)


def tiny(storage_uri: str, *extra: str) -> list[str]:
    return [
        f"model.encoder={TINY_ENCODER}",
        f"model.height={CHIP}",
        f"model.width={CHIP}",
        f"run.storage={storage_uri}",
        "run.epochs=1",
        "run.batch_size=4",
        "run.val_batch_size=4",
        "run.torch_threads=1",
        "run.max_failures=0",
        "optim.warmup_epochs=0.5",
        *extra,
    ]


def raster_recipe(tmp_path: Path) -> Path:
    """Two scenes with label rasters (by file name); rows 64-95 validate."""
    for i in range(2):
        write_scene(tmp_path / "images" / f"s{i}.tif", seed=i)
        write_labels(tmp_path / "labels" / f"s{i}.tif", label_values(seed=i))
    recipe = {
        "name": "scenes-raster",
        "model": {"arch": "unet"},
        "data": {
            "bands": list(BANDS[::-1]),  # the model's channel order, not the file's
            "scenes": {"images": str(tmp_path / "images"), "labels": str(tmp_path / "labels"),
                       "classes": RASTER_CLASSES, "chips_per_epoch": 12},
            "split": {"val_rows": [64, HEIGHT]},
        },
    }  # fmt: skip
    path = tmp_path / "raster.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def vector_recipe(tmp_path: Path) -> Path:
    """One scene, a field polygon with labelled areas and a background class; the box of rows 40-63,
    columns 0-47 validates (inside the labelled area)."""
    scene = write_scene(tmp_path / "v" / "scenes" / "scene.tif")
    write_polygons(tmp_path / "v" / "fields.gpkg", [pixel_box(*FIELD)], ["field"])
    write_polygons(tmp_path / "v" / "areas.gpkg", [pixel_box(*AREA)])
    write_polygons(tmp_path / "v" / "val.gpkg", [pixel_box(40, 0, 64, 48)])
    recipe = {
        "name": "scenes-vector",
        "model": {"arch": "unet"},
        "data": {
            "bands": ["B08", "B04", "B03"],
            "scenes": {
                "images": str(scene),
                "vectors": str(tmp_path / "v" / "fields.gpkg"),
                "class_column": "label_name",
                "labelled_areas": str(tmp_path / "v" / "areas.gpkg"),
                "background": "not_field",
                "classes": [
                    {"name": "not_field", "color": "#000000"},
                    {"value": "field", "name": "field", "color": "#ffd700"},
                ],
                "chips_per_epoch": 8,
            },
            "split": {"val_areas": str(tmp_path / "v" / "val.gpkg")},
        },
    }
    path = tmp_path / "vector.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_scene_recipe_keys_are_checked_and_named(tmp_path: Path) -> None:
    path = str(raster_recipe(tmp_path))
    cfg = load_config(path, tiny(str(tmp_path / "runs")))
    assert cfg.data.from_scenes and cfg.data.scenes.unlabelled == 0 and cfg.data.split.val_rows == [64, HEIGHT]
    bad = {
        "data.scenes.vector=x.gpkg": r"did you mean data\.scenes\.vectors",
        "data.split.val_bbox=[0, 0, 1, 1]": "give exactly one of val_rows, val_bbox, val_areas",
        "data.split.val_rows=[9, 3]": r"data\.split\.val_rows \[9, 3\]",
        "data.scenes.vectors=x.gpkg": "give labels .* or vectors .*, exactly one",
        "data.root=somewhere": "data.root is for image/mask pairs",
        "data.val={split: test}": "data.train and data.val are for image/mask pairs",
        "data.bands=null": "data.bands: name the scene bands",
        "data.scenes.classes=[{name: forest, colour: red}]": r"classes\[0\]: unknown key colour",
        "data.scenes.chips_per_epoch=0": "chips_per_epoch must be >= 1",
        "data.band_stats={mean: [1], std: [1]}": "4 values each",
    }
    for override, message in bad.items():
        with pytest.raises(ValueError, match=message):
            load_config(path, [override])
    with pytest.raises(ValueError, match="are for scene training: set data.scenes"):
        load_config(None, ["data.bands=[B04]"])


def test_the_plan_reads_classes_band_stats_and_chips_of_the_split(tmp_path: Path) -> None:
    cfg = load_config(str(raster_recipe(tmp_path)), tiny(str(tmp_path / "runs")))
    task, p = plan(cfg, "local")
    assert p.label_map.names == ["forest", "water", "urban"] and p.label_map.classes[2].color == (139, 0, 0)
    stats = cfg.data.band_stats
    assert isinstance(stats, dict)
    bands = np.concatenate([np.stack([rasterio.open(tmp_path / "images" / f"s{i}.tif").read(b) for b in (4, 3, 2, 1)])
                            for i in range(2)], axis=2).reshape(4, -1).astype(np.float64)  # fmt: skip
    np.testing.assert_allclose(stats["mean"], bands.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], bands.std(axis=1), rtol=1e-9)
    labelled = [label_values(seed=i) > 0 for i in range(2)]
    assert p.data["val_labelled_pixels"] == sum(int(m[64:].sum()) for m in labelled)
    assert p.data["train_labelled_pixels"] == sum(int(m[:64].sum()) for m in labelled)
    assert p.data["train_frame_size"] == [CHIP, CHIP] and len(p.train) == 2
    assert {v[2] for v in p.val} == {64} and len(p.val) == 2 * 3  # rows 64-95, columns 32-127: 3 chips a scene
    # every worker draws the same chips of an epoch, and each takes its own share
    config = loop_config(task, cfg, p)
    parts = [worker_datasets(cfg, config)[0] for _ in range(2)]
    for rank, part in enumerate(parts):
        part.set_epoch(0, rank, 2)
    shares = [part.items for part in parts]
    whole = parts[0]
    whole.set_epoch(0)  # the whole draw, as one worker would take it
    assert shares == [whole.items[0::2], whole.items[1::2]] and len(whole.items) == 12
    assert all(top + CHIP <= 64 for _, top, *_ in whole.items)  # never in the val rows
    whole.set_epoch(1)
    assert whole.items != shares[0] + shares[1]


def area_mask() -> np.ndarray:
    """Where the vector recipe's labels are known: inside the labelled area (pixel centres)."""
    known = np.zeros((HEIGHT, WIDTH), dtype=bool)
    known[AREA[0] : AREA[2], AREA[1] : AREA[3]] = True
    return known


def test_the_loss_sees_255_exactly_outside_the_labelled_areas(tmp_path: Path) -> None:
    cfg = load_config(str(vector_recipe(tmp_path)), tiny(str(tmp_path / "runs")))
    task, p = plan(cfg, "local")
    part = task.worker(cfg, p.label_map, loop_config(task, cfg, p), task.start_model(cfg, p.label_map), 0, 1,
                       torch.device("cpu"))  # fmt: skip
    known, region = area_mask(), np.zeros((HEIGHT, WIDTH), dtype=bool)
    region[40:64, 0:48] = True
    field = np.zeros((HEIGHT, WIDTH), dtype=bool)
    field[FIELD[0] : FIELD[2], FIELD[1] : FIELD[3]] = True
    seen = 0
    loader = part.loader_for(0)  # draws the epoch's chips
    for batch_items, (images, masks) in zip(_batches(part.train_ds.items, 4), loader, strict=True):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, CHIP, CHIP)
        for (_, top, left, rot, vflip, hflip), mask in zip(batch_items, masks, strict=True):
            window = (slice(top, top + CHIP), slice(left, left + CHIP))
            assert not region[window].any()  # the spatial split: no training chip touches the val region
            expected = np.where(known[window], field[window].astype(np.int64), IGNORE)
            expected = np.rot90(expected, rot)
            expected = expected[::-1] if vflip % 2 else expected
            expected = expected[:, ::-1] if hflip % 2 else expected
            np.testing.assert_array_equal(mask.numpy(), expected)
            seen += 1
    assert seen == 8
    val = part.val_loader.dataset.dataset  # the worker's share (a Subset) of the val chips
    assert len(val) == len(p.val) == 2  # rows 40-63, columns 0-47: two 32x32 chips, the second moved left
    for (_, top, left, _, _), (_, mask) in zip(val.items, val, strict=True):
        window = (slice(top, top + CHIP), slice(left, left + CHIP))
        assert region[window][mask.numpy() != IGNORE].all()  # val chips score only the val region
        assert ((mask.numpy() != IGNORE) == (region[window] & known[window])).any()


def _batches(items: list[tuple[int, ...]], size: int) -> list[list[tuple[int, ...]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@pytest.mark.usefixtures("ray_session")
def test_segray_train_on_vector_labels_then_label_the_scene(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = vector_recipe(tmp_path)
    extra = ["run.num_workers=2", "run.cpus_per_worker=0.5"]
    code, text = run(capsys, "train", "--config", str(recipe), *tiny(str(tmp_path / "runs"), *extra))
    assert code == 0, text[-3000:]
    model = tmp_path / "runs" / "scenes-vector" / "model"
    info = json.loads((model / "segray.json").read_text())
    assert info["preprocessing"]["bands"] == ["B08", "B04", "B03"]
    assert info["label_map"]["classes"] == [
        {"id": 0, "name": "not_field", "color": [0, 0, 0]},
        {"id": 1, "name": "field", "color": [255, 215, 0]},
    ]
    code, text = run(capsys, "model", "info", str(model))
    assert code == 0 and "B08" in text, text
    out = tmp_path / "out"
    code, text = run(
        capsys, "label", "--model", str(model), "--input", str(tmp_path / "v" / "scenes"), "--output", str(out)
    )
    assert code == 0, text[-3000:]
    with (
        rasterio.open(out / "masks" / "scene.tif.tif") as mask,
        rasterio.open(tmp_path / "v" / "scenes" / "scene.tif") as scene,
    ):
        assert (mask.crs, mask.transform, mask.shape) == (scene.crs, scene.transform, scene.shape)
        assert set(np.unique(mask.read(1))) <= {0, 1}
