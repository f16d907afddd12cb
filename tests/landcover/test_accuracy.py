"""A reference sample and the accuracy assessment, through `segray landcover sample` and `segray landcover
accuracy` on real COG masks and GeoPackages: Olofsson et al. (2014)'s worked example reproduced, nodata
never sampled, points outside the map or on nodata left out and counted, unknown classes refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pyogrio.raw
import pytest
from helpers.cli import run
from helpers.geodata import UTM33_ORIGIN, write_geotiff
from rasterio.transform import from_origin
from rasterio.windows import Window

from segray.cli import build_parser, subcommand
from segray.geo.areas import class_areas, scene_row_areas_m2
from segray.geo.cog import CogMaskWriter
from segray.geo.scene import SceneInfo, read_info
from segray.geo.scenejson import scene_to_json
from segray.labelling.write import write_outputs
from segray.labels import LabelMap
from segray.landcover.sample import point_wkb
from segray.options import declared_option

#: Olofsson et al. (2014), section 5 (the worked example): map classes, mapped areas in 30 m pixels, and
#: the sample counts (rows: map class, columns: reference class, in the same order).
PAPER_CLASSES = ["deforestation", "forest_gain", "stable_forest", "stable_non_forest"]
PAPER_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
PAPER_COUNTS = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
#: The paper's results: error-adjusted area +/- 95% CI (ha), user's, producer's and overall accuracy.
PAPER_AREAS_HA = [(21_158, 6_158), (11_686, 3_756), (285_770, 15_510), (581_386, 16_282)]
PAPER_USERS = [0.88, 0.73, 0.93, 0.96]
PAPER_PRODUCERS = [0.75, 0.85, 0.93, 0.96]
PAPER_OVERALL = 0.95


def label_map(names: list[str]) -> LabelMap:
    return LabelMap.from_dict(
        {
            "name": "map",
            "classes": [{"id": i, "name": n, "color": [40 * i, 90, 200 - 40 * i]} for i, n in enumerate(names)],
        }
    )


def write_mask_cog(path: Path, mask: np.ndarray, transform: Any, labels: LabelMap) -> str:
    """A class mask as segray writes a scene's: a COG with nodata 255 and the label map's colours."""
    h, w = mask.shape
    info = SceneInfo(
        uri=str(path), width=w, height=h, count=1, dtypes=("uint8",), descriptions=(None,), crs="EPSG:32633",
        transform=tuple(transform)[:6], bounds=(0.0, 0.0, 0.0, 0.0), bounds_wgs84=None, nodata=255.0,
        block_shape=(h, w), is_geographic=False,
    )  # fmt: skip
    with CogMaskWriter(str(path), info, labels) as writer:
        writer.write(Window(0, 0, w, h), mask)
    return str(path)


def read_points(path: Path) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    meta, _, geometry, values = pyogrio.raw.read(str(path), return_fids=True)
    return meta, geometry, dict(zip(meta["fields"], values, strict=True))


def write_points(path: Path, meta: dict[str, Any], geometry: np.ndarray, data: dict[str, np.ndarray]) -> None:
    """Save the points as an interpreter's GIS would: the same layer, fields and CRS, edited values."""
    path.unlink(missing_ok=True)
    names = list(data)
    pyogrio.raw.write(
        str(path), geometry, [data[n] for n in names], names,
        layer="points", driver="GPKG", geometry_type="Point", crs=meta["crs"],
    )  # fmt: skip


def paper_map(tmp_path: Path) -> tuple[str, str]:
    """The paper's map scaled down: 10,000 pixels of 900 m x 1,000 m (90 ha, a hundred 30 m pixels each)
    in the ratio 200:150:3,200:6,450, shuffled, and ten rows of nodata; its label map as JSON."""
    ids = np.repeat(np.arange(4, dtype=np.uint8), [n // 1000 for n in PAPER_PIXELS])
    mask = np.full((110, 100), 255, np.uint8)
    mask[:100] = np.random.default_rng(5).permutation(ids).reshape(100, 100)
    labels = tmp_path / "labels.json"
    labels.write_text(label_map(PAPER_CLASSES).to_json())
    cog = write_mask_cog(
        tmp_path / "change.tif", mask, from_origin(*UTM33_ORIGIN, 900.0, 1000.0), label_map(PAPER_CLASSES)
    )
    return cog, str(labels)


def test_olofsson_worked_example_through_the_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cog, labels = paper_map(tmp_path)
    points = tmp_path / "points.gpkg"
    per_class = ",".join(f"{n}={sum(row)}" for n, row in zip(PAPER_CLASSES, PAPER_COUNTS, strict=True))
    code, out = run(capsys, "landcover", "sample", "--map", cog, "--labels", labels, "--per-class", per_class,
                    "--seed", "7", "--output", str(points))  # fmt: skip
    assert code == 0 and "640 points (seed 7): deforestation 75/200 px" in out, out
    meta, geometry, data = read_points(points)
    assert meta["crs"] == "EPSG:32633" and set(data["reference"]) == {None}
    # Interpreters' reference classes, in the paper's counts: row i's points get its columns' classes.
    reference = np.empty(len(data["point_id"]), dtype=object)
    for i, row in enumerate(PAPER_COUNTS):
        mine = np.flatnonzero(data["map_class"] == PAPER_CLASSES[i])
        assert len(mine) == sum(row)
        reference[mine] = np.repeat(PAPER_CLASSES, row)
    data["reference"] = reference
    write_points(points, meta, geometry, data)

    acc = tmp_path / "acc"
    code, out = run(capsys, "landcover", "accuracy", "--map", cog, "--labels", labels, "--reference", str(points),
                    "--output", str(acc), "--print-table")  # fmt: skip
    assert code == 0, out
    assert "640 of 640 reference points used (0 left out); overall accuracy 0.947 ± 0.018" in out
    assert "| deforestation | 18,000 | 75 | 0.880 ± 0.074 | 0.749 ± 0.213 | 21,158 ± 6,158 |" in out
    result = json.loads((acc / "accuracy.json").read_text())
    assert result["classes"] == PAPER_CLASSES and result["error_matrix_counts"] == PAPER_COUNTS
    rows = result["per_class"]
    assert [r["mapped_area_ha"] for r in rows] == [n * 0.09 for n in PAPER_PIXELS]  # areas from the CRS
    got_areas = [(round(r["error_adjusted_area_ha"]), round(r["error_adjusted_area_ha_ci95"])) for r in rows]
    assert got_areas == PAPER_AREAS_HA
    assert [round(r["users_accuracy"], 2) for r in rows] == PAPER_USERS
    assert [round(r["producers_accuracy"], 2) for r in rows] == PAPER_PRODUCERS
    assert round(result["overall_accuracy"], 2) == PAPER_OVERALL
    assert np.isclose(np.sum(result["error_matrix_proportions"]), 1.0)
    table = pq.read_table(acc / "classes.parquet").to_pylist()
    assert [round(r["error_adjusted_area_ha"]) for r in table] == [a for a, _ in PAPER_AREAS_HA]
    counts = pq.read_table(acc / "error_matrix_counts.parquet").to_pydict()
    assert counts["map_class"] == PAPER_CLASSES and counts["deforestation"] == [66, 0, 1, 2]
    assert (acc / "accuracy.md").read_text().startswith("## Accuracy of ")


WATER, FOREST, QUARRY = 0, 1, 2
LANDS = label_map(["water", "forest", "quarry"])


def scene_mask(shape: tuple[int, int], classes: list[int], rare: int | None, seed: int) -> np.ndarray:
    """Random classes with a nodata border; ``rare``: a class with only 6 pixels."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(classes, shape).astype(np.uint8)
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = 255, 255, 255, 255
    if rare is not None:
        inner = np.flatnonzero(mask.ravel() != 255)
        mask.ravel()[rng.choice(inner, 6, replace=False)] = rare
    return mask


def labelled_output(tmp_path: Path) -> tuple[str, dict[str, tuple[SceneInfo, np.ndarray]]]:
    """A labelling output of two adjacent UTM scenes, written by the labelling job's writer: water only in
    the west one, quarry (6 pixels) only in the east one, forest in both."""
    x0, y0 = UTM33_ORIGIN
    scenes = {}
    for k, (rel, classes, rare) in enumerate((("west.tif", [WATER, FOREST], None), ("east.tif", [FOREST], QUARRY))):
        band = np.zeros((1, 30, 40), np.uint16)
        info = read_info(str(write_geotiff(tmp_path / rel, band, transform=from_origin(x0 + 400 * k, y0, 10, 10))))
        scenes[rel] = (info, scene_mask((30, 40), classes, rare, seed=k))
    n, c = len(scenes), LANDS.num_classes
    masks = np.empty(n, dtype=object)
    masks[:] = [m for _, m in scenes.values()]
    batch = {
        "uri": np.array([i.uri for i, _ in scenes.values()], dtype=object),
        "relative_path": np.array(list(scenes), dtype=object),
        "error": np.array([""] * n, dtype=object),
        "error_stage": np.array([""] * n, dtype=object),
        "mask": masks,
        "class_pixels": np.stack([np.bincount(m[m != 255], minlength=c) for _, m in scenes.values()]),
        "width": np.full(n, 40, np.int32),
        "height": np.full(n, 30, np.int32),
        "mean_confidence": np.full(n, 0.8),
        "pixel_area_m2": np.full(n, np.nan),
        "pixel_size_source": np.array([""] * n, dtype=object),
        "geo_scene": np.array([scene_to_json(i) for i, _ in scenes.values()], dtype=object),
        "class_area_m2": np.stack([class_areas(m, scene_row_areas_m2(i), c) for i, m in scenes.values()]),
        "nodata_pixels": np.array([int((m == 255).sum()) for _, m in scenes.values()], np.int64),
    }
    out = str(tmp_path / "labels")
    write_outputs(batch, out, "run-1", "lands@000000000000", LANDS.to_dict())
    return out, scenes


def sample(capsys: pytest.CaptureFixture[str], out: str, points: Path, *flags: str) -> dict[str, np.ndarray]:
    code, text = run(capsys, "landcover", "sample", "--map", out, "--output", str(points), *flags)
    assert code == 0, text
    return read_points(points)[2]


def test_a_stratified_sample_takes_its_counts_per_class_and_never_nodata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, scenes = labelled_output(tmp_path)
    points = tmp_path / "points.gpkg"
    data = sample(capsys, out, points, "--per-class", "10", "--seed", "3")
    names = list(data["map_class"])
    assert {n: names.count(n) for n in set(names)} == {"water": 10, "forest": 10, "quarry": 6}  # quarry: all 6
    assert sorted(data["point_id"]) == list(range(1, 27))
    pixels = set()
    for key, row, col, x, y, cid in zip(data["mask"], data["row"], data["col"], data["x"], data["y"],
                                        data["map_class_id"], strict=True):  # fmt: skip
        info, mask = scenes[key.removeprefix("masks/").removesuffix(".tif")]
        assert mask[row, col] == cid != 255  # the map's class there, never nodata
        assert (x, y) == info.affine() @ (col + 0.5, row + 0.5)  # the pixel's centre
        pixels.add((key, row, col))
    assert len(pixels) == 26 and {k for k, _, _ in pixels} == {"masks/west.tif.tif", "masks/east.tif.tif"}
    assert {k for k, n in zip(data["mask"], names, strict=True) if n == "quarry"} == {"masks/east.tif.tif"}

    again = sample(capsys, out, tmp_path / "again.gpkg", "--per-class", "10", "--seed", "3")
    assert list(again["x"]) == list(data["x"]) and list(again["y"]) == list(data["y"])  # a seed repeats
    mapped = sample(capsys, out, points, "--per-class", "forest=4", "--min-per-class", "3")
    names = list(mapped["map_class"])
    assert {n: names.count(n) for n in set(names)} == {"water": 3, "forest": 4, "quarry": 3}
    code, text = run(capsys, "landcover", "sample", "--map", out, "--output", str(points), "--per-class", "lava=3")
    assert code == 2 and "--per-class names ['lava']: not classes of the map" in text
    code, text = run(capsys, "landcover", "sample", "--map", out, "--output", str(points), "--per-class", "x=y")
    assert code == 2 and "--per-class" in text


def test_points_outside_the_map_or_on_nodata_are_left_out_and_unknown_classes_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, scenes = labelled_output(tmp_path)
    points = tmp_path / "points.gpkg"
    sample(capsys, out, points, "--per-class", "5")
    meta, geometry, data = read_points(points)
    n = len(data["point_id"])
    # Interpreters agree with the map, but for one point; add a point off the map, one on the nodata
    # border of the east scene and one not interpreted yet.
    data["reference"] = data["map_class"].copy()
    data["reference"][0] = "quarry" if data["map_class"][0] != "quarry" else "forest"
    east = scenes["east.tif"][0].affine()
    extra = {"outside": (0.0, 0.0, "water"), "nodata": (*(east @ (0.5, 0.5)), "forest"), "blank": (None, None, "")}
    first = data["point_id"][0]
    for k, (x, y, ref) in enumerate(extra.values()):
        if x is None:
            x, y = data["x"][1], data["y"][1]
        geometry = np.append(geometry, np.array([point_wkb(x, y)], dtype=object))
        for name in data:
            value = {"point_id": 100 + k, "mask": None, "x": x, "y": y, "reference": ref}.get(name, data[name][0])
            data[name] = np.append(data[name], np.array([value], dtype=data[name].dtype))
    write_points(points, meta, geometry, data)

    acc = tmp_path / "acc"
    code, text = run(capsys, "landcover", "accuracy", "--map", out, "--reference", str(points), "--output", str(acc))
    assert code == 0, text
    assert (
        f"{n} of {n + 3} reference points used (3 left out: 1 outside the map, 1 on nodata, 1 no reference class)"
        in text
    )
    result = json.loads((acc / "accuracy.json").read_text())
    assert [(p["point_id"], p["why"]) for p in result["left_out"]] == [
        (100, "outside the map"), (101, "on nodata"), (102, "no reference class"),
    ]  # fmt: skip
    assert np.trace(result["error_matrix_counts"]) == n - 1 and int(first) > 0
    mapped = {
        name: sum(int((m == i).sum()) for _, m in scenes.values()) * 100 / 1e4 for i, name in enumerate(LANDS.names)
    }
    assert {r["class"]: r["mapped_area_ha"] for r in result["per_class"]} == mapped

    data["reference"][2] = "lava"
    write_points(points, meta, geometry, data)
    code, text = run(capsys, "landcover", "accuracy", "--map", out, "--reference", str(points), "--output", str(acc))
    assert (
        code == 2
        and f"reference classes that the map {out} does not have: 'lava' (points [{data['point_id'][2]}])" in text
    )
    code, text = run(capsys, "landcover", "accuracy", "--map", out, "--reference", str(points), "--output", str(acc),
                     "--reference-column", "interpreted")  # fmt: skip
    assert code == 2 and "no reference column 'interpreted' (its columns: point_id, mask, row, col" in text


def test_the_subcommands_declare_every_flag_once_and_the_export_keeps_its_command_line() -> None:
    landcover = subcommand(build_parser(), ["landcover"])
    commands: dict[str, argparse.ArgumentParser] = landcover.commands  # type: ignore[attr-defined]
    assert set(commands) == {"sample", "accuracy", "zones", "change"}
    for name, parser in commands.items():
        for action in parser._actions:
            if "--help" in action.option_strings:
                continue
            assert declared_option(action) is not None, (name, action.option_strings)
            if not (action.required or isinstance(action, argparse._StoreTrueAction)):
                assert action.help and "(default" in action.help, (name, action.option_strings)
    a = build_parser().parse_args(["landcover", "--stats", "s", "--output", "o"])
    assert (a.stats, a.output, a.by, a.func.__name__) == (["s"], "o", "region,date", "cmd_landcover")
    a = build_parser().parse_args(["landcover", "sample", "--map", "m", "--per-class", "a=1,b=2", "--output", "p"])
    assert (a.per_class, a.min_per_class, a.func.__name__) == ({"a": 1, "b": 2}, 0, "cmd_sample")
