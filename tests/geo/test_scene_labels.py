"""Training labels on a scene's grid (segray.geo.labels): label rasters mapped to class ids, a label
raster on another grid or with a value no class has, polygons rasterised (reprojected, labelled
areas, background), the validation region of a spatial split, and where chips may lie."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.geodata import UTM33_ORIGIN
from helpers.scene_labels import HEIGHT, WIDTH, label_values, pixel_box, write_labels, write_polygons, write_scene
from rasterio.transform import from_origin

from segray.geo.labels import (
    IGNORE,
    LabelClasses,
    box_sums,
    rasterise_vectors,
    read_label_raster,
    train_chips,
    val_chip_mask,
    val_chips,
    val_region,
)
from segray.geo.scene import read_info

CLASSES = LabelClasses(["forest", "water", "urban"], [1, 2, 3])


def test_a_label_raster_maps_values_to_class_ids_and_unlabelled_to_255(tmp_path: Path) -> None:
    scene = read_info(str(write_scene(tmp_path / "s.tif")))
    values = label_values()
    values[5, 40] = 7  # the "unlabelled" value given below
    values[6, 40] = np.nan
    mask = read_label_raster(str(write_labels(tmp_path / "l.tif", values)), scene, CLASSES, unlabelled=7)
    assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
    expected = np.where(np.isin(values, [1, 2, 3]), values - 1, IGNORE).astype(np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert (mask[:, : WIDTH // 4] == IGNORE).all() and mask[5, 40] == mask[6, 40] == IGNORE
    assert set(np.unique(mask)) == {0, 1, 2, IGNORE}


def test_a_label_raster_on_another_grid_or_with_an_unknown_value_is_refused(tmp_path: Path) -> None:
    scene = read_info(str(write_scene(tmp_path / "s.tif")))
    shifted = from_origin(UTM33_ORIGIN[0] + 10, UTM33_ORIGIN[1], 10.0, 10.0)
    moved = write_labels(tmp_path / "moved.tif", label_values(), transform=shifted)
    with pytest.raises(ValueError, match=r"label raster .*moved\.tif .* is not on the grid of scene .*s\.tif"):
        read_label_raster(str(moved), scene, CLASSES)
    other_crs = write_labels(tmp_path / "crs.tif", label_values(), crs="EPSG:32634")
    with pytest.raises(ValueError, match="EPSG:32634.*not on the grid"):
        read_label_raster(str(other_crs), scene, CLASSES)
    values = label_values()
    values[10, 100] = 9
    bad = write_labels(tmp_path / "bad.tif", values)
    with pytest.raises(ValueError, match=r"label raster .*bad\.tif: value 9 is no class's value"):
        read_label_raster(str(bad), scene, CLASSES)


def test_polygons_burn_their_class_and_labelled_areas_bound_the_background(tmp_path: Path) -> None:
    scene = read_info(str(write_scene(tmp_path / "s.tif")))
    fields = write_polygons(tmp_path / "f.gpkg", [pixel_box(10, 10, 30, 40), pixel_box(50, 60, 70, 100)], ["a", "b"])
    areas = write_polygons(tmp_path / "areas.gpkg", [pixel_box(0, 0, 48, 64)])
    classes = LabelClasses(["not_field", "field_a", "field_b"], [None, "a", "b"])
    mask = rasterise_vectors(str(fields), scene, classes, "label_name", str(areas), "not_field")
    expected = np.full((HEIGHT, WIDTH), IGNORE, dtype=np.uint8)
    expected[:48, :64] = 0
    expected[10:30, 10:40] = 1  # inside the labelled area
    expected[50:70, 60:100] = IGNORE  # field b lies outside every labelled area: not known
    np.testing.assert_array_equal(mask, expected)
    everywhere = rasterise_vectors(str(fields), scene, classes, "label_name", None, "not_field")
    assert (everywhere[50:70, 60:100] == 2).all() and (everywhere[80:] == 0).all()
    no_background = rasterise_vectors(str(fields), scene, classes, "label_name")
    assert (no_background[80:] == IGNORE).all() and (no_background[10:30, 10:40] == 1).all()
    with pytest.raises(ValueError, match="no attribute 'crop'"):
        rasterise_vectors(str(fields), scene, classes, "crop")
    with pytest.raises(ValueError, match="label_name value 'b' is no class's value"):
        rasterise_vectors(str(fields), scene, LabelClasses(["bg", "a"], [None, "a"]), "label_name")


def test_polygons_in_another_crs_are_reprojected_to_the_scene(tmp_path: Path) -> None:
    scene = read_info(str(write_scene(tmp_path / "s.tif")))
    fields = write_polygons(tmp_path / "f.geojson", [pixel_box(20, 30, 60, 90)], ["a"], crs="EPSG:4326")
    mask = rasterise_vectors(str(fields), scene, LabelClasses(["bg", "a"], [None, "a"]), "label_name", None, "bg")
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    expected[20:60, 30:90] = 1
    # A straight UTM edge is a slightly curved one in degrees: only the box's edge pixels may differ.
    assert (mask != expected).sum() < 0.05 * expected.sum() and (mask[25:55, 35:85] == 1).all()


def test_the_split_region_from_rows_a_box_or_areas(tmp_path: Path) -> None:
    scene = read_info(str(write_scene(tmp_path / "s.tif")))
    rows = val_region(scene, rows=[60, 80])
    assert rows[60:80].all() and rows.sum() == 20 * WIDTH
    x0, y0 = UTM33_ORIGIN
    box = val_region(scene, bbox=[x0 + 100, y0 - 300, x0 + 400, y0 - 100])  # rows 10-29, cols 10-39
    expected = np.zeros_like(box)
    expected[10:30, 10:40] = True
    np.testing.assert_array_equal(box, expected)
    areas = val_region(scene, areas=str(write_polygons(tmp_path / "v.gpkg", [pixel_box(10, 10, 30, 40)])))
    np.testing.assert_array_equal(areas, expected)


def test_box_sums_equal_a_direct_sum() -> None:
    values = np.random.default_rng(0).integers(0, 3, size=(17, 23))
    sums = box_sums(values, 4, 5)
    assert sums.shape == (14, 19)
    for r, c in [(0, 0), (13, 18), (7, 3)]:
        assert sums[r, c] == values[r : r + 4, c : c + 5].sum()


def test_no_training_chip_touches_the_val_region_and_val_chips_score_only_it() -> None:
    mask = np.full((HEIGHT, WIDTH), IGNORE, dtype=np.uint8)
    mask[:, 40:] = 1  # labelled right of column 40
    region = np.zeros((HEIGHT, WIDTH), dtype=bool)
    region[50:90] = True  # its last row of chips is moved up inside the scene
    h = w = 16
    chips = train_chips(mask, region, h, w)
    assert len(chips)
    for r, c in chips:
        assert not region[r : r + h, c : c + w].any() and (mask[r : r + h, c : c + w] != IGNORE).any()
    # every chip that qualifies is found: the slow way, over every position
    brute = [
        (r, c)
        for r in range(HEIGHT - h + 1)
        for c in range(WIDTH - w + 1)
        if not region[r : r + h, c : c + w].any() and (mask[r : r + h, c : c + w] != IGNORE).any()
    ]
    assert [tuple(x) for x in chips.tolist()] == brute
    grid = val_chips(mask, region, h, w)
    counted = np.zeros((HEIGHT, WIDTH), dtype=int)
    for chip in grid:
        top, left, _, _ = chip
        scored = val_chip_mask(mask, region, chip, h, w) != IGNORE
        assert region[top : top + h, left : left + w][scored].all()
        counted[top : top + h, left : left + w] += scored
    # every labelled pixel of the region is scored exactly once, and nothing else
    np.testing.assert_array_equal(counted, (region & (mask != IGNORE)).astype(int))
