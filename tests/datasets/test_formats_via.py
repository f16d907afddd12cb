"""VIA polygon annotations: rasterised masks against numpy-drawn truth, overlaps in file order and
by --priority, both VIA 2 JSON shapes (project and flat export), S3 input, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.format_samples import VIA_H as H
from helpers.format_samples import VIA_W as W
from helpers.format_samples import entry, rect, vineyard

from segray import storage
from segray.datasets.formats import ConvertError, ConvertOptions, convert
from segray.labels import LabelMap


def truth_a(ids: dict[str, int], grape_over_leaf: bool = True) -> np.ndarray:
    m = np.full((H, W), ids["background"], np.uint8)
    leaf = np.zeros((H, W), bool)
    leaf[2:13, 2:31] = True
    leaf[2:31, 2:13] = True
    grape = np.zeros((H, W), bool)
    grape[8:14, 8:18] = True
    first, second = ((leaf, "leaf"), (grape, "grape")) if grape_over_leaf else ((grape, "grape"), (leaf, "leaf"))
    m[first[0]] = ids[first[1]]
    m[second[0]] = ids[second[1]]
    m[30:35, 40:45] = ids["grape"]
    return m


def truth_b(ids: dict[str, int], grape_over_leaf: bool = False) -> np.ndarray:
    m = truth_a(ids, grape_over_leaf)
    m[30:35, 40:45] = ids["background"]
    m[0:21, 50:61] = ids["trunk"]
    return m


def read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_project_json_file_order_and_derived_label_map(tmp_path: Path) -> None:
    src = tmp_path / "vines"
    doc = vineyard(src / "train", np.random.default_rng(0))
    (src / "train" / "project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": doc}))
    report = convert("via", str(src), str(tmp_path / "out"), ConvertOptions(attribute="type"))
    assert report.frames == {"train": 2}
    lm = LabelMap.from_json((tmp_path / "out" / "labels.json").read_text())
    assert lm.names == ["background", "grape", "leaf", "trunk"] and lm.ignore_id == 255
    ids = {n: i for i, n in enumerate(lm.names)}
    # later regions are drawn over earlier ones: grape over leaf in a, leaf over grape in b
    assert (read_mask(tmp_path / "out" / "trainannot" / "vine_a.png") == truth_a(ids, True)).all()
    assert (read_mask(tmp_path / "out" / "trainannot" / "vine_b.png") == truth_b(ids, False)).all()
    assert (tmp_path / "out" / "train" / "vine_a.jpg").read_bytes() == (src / "train" / "vine_a.jpg").read_bytes()


def test_priority_and_user_label_map_from_s3(tmp_path: Path, s3_prefix: str) -> None:
    local = tmp_path / "vines"
    doc = vineyard(local, np.random.default_rng(1))
    for name in ("vine_a.jpg", "vine_b.png"):
        storage.write_bytes(f"{s3_prefix}/src/val/{name}", (local / name).read_bytes())
    storage.write_bytes(f"{s3_prefix}/src/val/via_region_data.json", json.dumps(doc).encode())  # flat export
    labels = {
        "name": "vineyard",
        "classes": [
            {"id": 0, "name": "background", "color": [0, 0, 0]},
            {"id": 1, "name": "leaf", "color": [0, 255, 0]},
            {"id": 2, "name": "grape", "color": [128, 0, 128]},
            {"id": 3, "name": "trunk", "color": [139, 69, 19]},
        ],
        "ignore": {"id": 255, "name": "void", "color": [255, 255, 255]},
    }
    storage.write_bytes(f"{s3_prefix}/labels-in.json", json.dumps(labels).encode())
    opts = ConvertOptions(attribute="type", priority=("grape", "leaf"), labels=f"{s3_prefix}/labels-in.json")
    report = convert("via", f"{s3_prefix}/src", f"{s3_prefix}/out", opts)
    assert report.frames == {"val": 2} and report.notes == {"attribute": "type", "priority": ["grape", "leaf"]}
    ids = {"background": 0, "leaf": 1, "grape": 2, "trunk": 3}
    for stem, want in (("vine_a", truth_a(ids, True)), ("vine_b", truth_b(ids, True))):  # grape wins both times
        data = storage.read_bytes(f"{s3_prefix}/out/valannot/{stem}.png")
        assert (cv2.imdecode(np.frombuffer(data, np.uint8), -1) == want).all(), stem


def test_priority_puts_listed_classes_over_unlisted(tmp_path: Path) -> None:
    src = tmp_path / "v"
    doc = vineyard(src, np.random.default_rng(2))
    doc["b"]["regions"].append(rect(45, 5, 10, 5, "leaf"))  # leaf drawn last, over the trunk's x 50..54, y 5..9
    (src / "via.json").write_text(json.dumps(doc))
    convert("via", str(src / "via.json"), str(tmp_path / "o"), ConvertOptions(attribute="type", priority=("Trunk",)))
    lm = LabelMap.from_json((tmp_path / "o" / "labels.json").read_text())
    ids = {n: i for i, n in enumerate(lm.names)}
    mask = read_mask(tmp_path / "o" / "trainannot" / "vine_b.png")
    assert (mask[5:10, 45:50] == ids["leaf"]).all() and (mask[5:10, 50:55] == ids["trunk"]).all()


def test_circle_and_ellipse(tmp_path: Path) -> None:
    src = tmp_path / "v"
    src.mkdir()
    cv2.imwrite(str(src / "c.png"), np.zeros((H, W, 3), np.uint8))
    circle = {
        "shape_attributes": {"name": "circle", "cx": 20, "cy": 20, "r": 8},
        "region_attributes": {"type": "grape"},
    }
    ellipse = {
        "shape_attributes": {"name": "ellipse", "cx": 48, "cy": 24, "rx": 10, "ry": 4, "theta": 0},
        "region_attributes": {"type": "leaf"},
    }
    (src / "via.json").write_text(json.dumps({"c": entry("c.png", [circle, ellipse])}))
    convert("via", str(src), str(tmp_path / "o"), ConvertOptions(attribute="type"))
    mask = read_mask(tmp_path / "o" / "trainannot" / "c.png")
    yy, xx = np.mgrid[:H, :W]
    d_circle = np.hypot(xx - 20, yy - 20)
    assert (mask[d_circle <= 7] == 1).all() and (mask[(d_circle > 9) & (xx < 36)] == 0).all()
    d_ellipse = ((xx - 48) / 10) ** 2 + ((yy - 24) / 4) ** 2
    assert (mask[d_ellipse <= 0.7] == 2).all() and (mask[(d_ellipse > 1.4) & (xx > 36)] == 0).all()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda d: d["a"]["regions"][0]["region_attributes"].clear(),
            r"vine_a.jpg region 0: no region attribute 'type'",
        ),
        (
            lambda d: d["a"]["regions"][1]["shape_attributes"].update(name="point"),
            r"region 1: shape 'point' has no area",
        ),
        (lambda d: d["b"]["regions"][2]["shape_attributes"].pop("all_points_y"), r"region 2: malformed polygon shape"),
        (lambda d: d["b"].update(filename="missing.png"), r"missing.png: image named in the VIA JSON does not exist"),
        (
            lambda d: d["a"]["regions"][2]["region_attributes"].update(type={"grape": True, "leaf": True}),
            r"region 2: attribute 'type' must have exactly one value",
        ),
    ],
)
def test_refusals_name_the_file_and_region(tmp_path: Path, change, error: str) -> None:  # noqa: ANN001
    src = tmp_path / "v"
    doc = vineyard(src, np.random.default_rng(3))
    change(doc)
    (src / "via.json").write_text(json.dumps(doc))
    with pytest.raises(ConvertError, match=error) as ei:
        convert("via", str(src), str(tmp_path / "o"), ConvertOptions(attribute="type"))
    assert str(src) in str(ei.value)


def test_attribute_required_and_unknown_class(tmp_path: Path) -> None:
    src = tmp_path / "v"
    (src).mkdir()
    (src / "via.json").write_text(json.dumps(vineyard(src, np.random.default_rng(4))))
    with pytest.raises(ConvertError, match="--attribute is required"):
        convert("via", str(src), str(tmp_path / "o"))
    lm = tmp_path / "lm.json"
    lm.write_text(json.dumps({"name": "x", "classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}]}))
    with pytest.raises(ConvertError, match=r"attribute values \['grape', 'leaf', 'trunk'\] are not classes"):
        convert("via", str(src), str(tmp_path / "o"), ConvertOptions(attribute="type", labels=str(lm)))
    (src / "via.json").write_text("[1, 2]")
    with pytest.raises(ConvertError, match="not a VIA 2 export"):
        convert("via", str(src), str(tmp_path / "o"), ConvertOptions(attribute="type"))
