"""Instance data: the synthetic set's two forms (VIA, COCO) convert to identical canonical data,
RLE and polygons give the same pixels, overlaps keep the later annotation, and every bad input
fails with a message naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.instance_data import ATTRIBUTE, CLASSES, write_synthetic_instances

from segray import storage
from segray.cli import main
from segray.datasets.formats import ConvertError, ConvertOptions, convert
from segray.datasets.instances import InstanceDataError, list_frames, read_frame

SPLITS = {"train": 5, "val": 3}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_synthetic_instances(str(tmp_path_factory.mktemp("syn")), SPLITS, (64, 64), seed=3)


def canonical_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name[0] != "_"
    }


def test_via_and_coco_forms_convert_to_identical_canonical_data(sources: dict[str, str], tmp_path: Path) -> None:
    via = convert("via-instances", sources["via"], str(tmp_path / "a"), ConvertOptions(attribute=ATTRIBUTE))
    coco = convert("coco", sources["coco"], str(tmp_path / "b"))
    assert via.frames == coco.frames == SPLITS
    assert via.instances == coco.instances and sum(via.instances.values()) > len(SPLITS) * 2
    a, b = canonical_files(tmp_path / "a"), canonical_files(tmp_path / "b")
    assert sorted(a) == sorted(b) and a == b  # frames, 16-bit id maps, instance lists, labels.json
    assert sorted(a)[:3] == ["labels.json", "train/train_0000.png", "train/train_0001.png"]
    assert json.loads(a["labels.json"])["classes"][1]["name"] == CLASSES[1]
    # What the VIA file says is what the canonical frame holds: one instance per region, same classes.
    regions = json.loads(Path(sources["via"], "val", "via_regions.json").read_text())
    frames = list_frames(str(tmp_path / "a"), "val")
    for frame, entry in zip(frames, regions.values(), strict=True):
        rgb, inst = read_frame(frame, len(CLASSES))
        assert rgb.shape == (64, 64, 3) and inst.masks.shape[1:] == (64, 64)
        assert [CLASSES[c] for c in inst.classes] == [r["region_attributes"][ATTRIBUTE] for r in entry["regions"]]
        # Each mask is its polygon filled (objects never overlap in this set).
        for m, r in zip(inst.masks, entry["regions"], strict=True):
            s = r["shape_attributes"]
            want = np.zeros((64, 64), np.uint8)
            cv2.fillPoly(want, [np.stack([s["all_points_x"], s["all_points_y"]], 1).astype(np.int32)], 1)
            assert np.array_equal(m, want.astype(bool))
        assert not inst.crowd.any()


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with zeros."""
    flat = mask.ravel(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def coco_doc(h: int, w: int, anns: list[dict], file_name: str = "f.png") -> dict:
    return {
        "images": [{"id": 1, "file_name": file_name, "height": h, "width": w}],
        "annotations": [{"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(anns)],
        "categories": [{"id": 1, "name": "Grape Bunch"}, {"id": 7, "name": "box"}],
    }


def write_coco(folder: Path, doc: dict, size: tuple[int, int] = (32, 40)) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "f.png"), np.full((*size, 3), 90, np.uint8))
    (folder / "instances.json").write_text(json.dumps(doc))
    return str(folder / "instances.json")


def test_coco_rle_and_polygons_overlap_in_file_order_and_crowds_are_kept(tmp_path: Path) -> None:
    h, w = 32, 40
    block = np.zeros((h, w), np.uint8)
    block[5:20, 10:30] = 1
    anns = [
        {"category_id": 7, "segmentation": uncompressed_rle(block)},  # RLE, uncompressed
        {"category_id": 1, "segmentation": [[14, 9, 16, 9, 16, 11]]},  # hidden by the next one
        {"category_id": 1, "segmentation": [[12.0, 8.0, 25.4, 8.0, 25.4, 14.0, 12.0, 14.0]]},  # over the block
        {"category_id": 7, "segmentation": [[30, 25, 39, 25, 39, 31, 30, 31]], "iscrowd": 1},
    ]
    src = write_coco(tmp_path / "src", coco_doc(h, w, anns))
    r = convert("coco", src, str(tmp_path / "out"), ConvertOptions(split="val"))
    assert r.frames == {"val": 1} and r.hidden_instances == 1
    assert r.instances == {"grape_bunch": 1, "box": 2}  # names cleaned, categories in id order
    (frame,) = list_frames(str(tmp_path / "out"), "val")
    _, inst = read_frame(frame, 2)
    assert inst.classes.tolist() == [1, 0, 1] and inst.crowd.tolist() == [False, False, True]
    poly = np.zeros((h, w), np.uint8)
    cv2.fillPoly(poly, [np.array([[12, 8], [25, 8], [25, 14], [12, 14]], np.int32)], 1)
    assert np.array_equal(inst.masks[1], poly.astype(bool))
    assert np.array_equal(inst.masks[0], block.astype(bool) & ~poly.astype(bool))  # the later one on top
    assert inst.counts(2).tolist() == [1, 1]  # the crowd region is not counted


def test_convert_cli_writes_instances_and_refuses_options_a_format_does_not_use(
    sources: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    dst = str(tmp_path / "cli")
    assert main(["data", "convert", "--format", "via-instances", "--attribute", ATTRIBUTE, sources["via"], dst]) == 0
    assert "instances: box" in capsys.readouterr().out
    assert storage.exists(storage.join(dst, "valinst", "val_0000.json"))
    assert main(["data", "convert", "--format", "coco", "--attribute", "x", sources["coco"], dst]) != 0
    assert "--format coco does not use --attribute" in capsys.readouterr().err


def test_data_stats_reads_the_instance_layout(sources: dict[str, str], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    root = tmp_path / "set"
    convert("coco", sources["coco"], str(root))
    # One region marked crowd: it is reported apart, as training and counts leave it out.
    meta = root / "valinst" / "val_0001.json"
    doc = json.loads(meta.read_text())
    doc["instances"][0]["crowd"] = True
    meta.write_text(json.dumps(doc))
    # What the stats must say, from the files themselves.
    areas: dict[int, list[int]] = {0: [], 1: []}
    per_frame = []
    for split in SPLITS:
        for frame in list_frames(str(root), split):
            ids = cv2.imread(frame.ids, cv2.IMREAD_UNCHANGED)
            listed = [d for d in json.loads(Path(frame.meta).read_text())["instances"] if not d.get("crowd")]
            per_frame.append(len(listed))
            for d in listed:
                areas[d["class"]].append(int((ids == d["id"]).sum()))

    assert main(["data", "stats", str(root)]) == 0
    text = capsys.readouterr().out
    assert f"{sum(SPLITS.values())} frames (train 5, val 3); sizes 64x64 (8)" in text
    assert f"{sum(per_frame)} instances" in text and "1 crowd regions" in text
    summary = json.loads((root / "_eda" / "summary.json").read_text())
    assert summary["layout"] == "instances" and summary["crowd_regions"] == 1
    assert summary["instances_per_frame"] == {
        "mean": pytest.approx(np.mean(per_frame)),
        "max": max(per_frame),
        "frames_with_none": per_frame.count(0),
    }
    for c, row in enumerate(summary["classes"]):
        assert row["class"] == CLASSES[c] and row["instances"] == len(areas[c]) > 0
        assert row["median_px"] == pytest.approx(np.median(areas[c]))
        assert row["small_share"] == pytest.approx(np.mean(np.array(areas[c]) < 32 * 32))
        (line,) = [ln.split() for ln in text.splitlines() if ln.split()[:1] == [CLASSES[c]]]
        assert line[1] == f"{len(areas[c]):,}"
    assert (root / "_eda" / "class_stats.csv").read_text().splitlines()[0].startswith("class,instances,")
    # A broken id map is named, as training would name it.
    (root / "traininst" / "train_0002.png").write_bytes(b"not a png")
    assert main(["data", "stats", str(root)]) != 0
    assert "traininst/train_0002.png: not a readable PNG of instance ids" in capsys.readouterr().err


def via_project(folder: Path, regions: list[dict], image: bool = True) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    if image:
        cv2.imwrite(str(folder / "f.png"), np.full((32, 40, 3), 90, np.uint8))
    doc = {"f.png123": {"filename": "f.png", "size": 123, "regions": regions, "file_attributes": {}}}
    (folder / "via.json").write_text(json.dumps(doc))
    return str(folder / "via.json")


def region(xs: list[int], ys: list[int], cls: str | None = "box") -> dict:
    attrs = {} if cls is None else {"class": cls}
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys}, "region_attributes": attrs}


OK_REGION = region([2, 10, 10], [2, 2, 9])


@pytest.mark.parametrize(
    ("regions", "image", "labels", "message"),
    [
        ([OK_REGION], False, None, "f.png: image named in the VIA JSON does not exist"),
        (
            [region([2, 40, 10], [2, 2, 9])],
            True,
            None,
            "via.json: f.png region 0: polygon reaches (2, 2)-(40, 9), outside",
        ),
        ([region([2, 10, 10], [2, 2, 9], None)], True, None, "via.json: f.png region 0: no region attribute 'class'"),
        ([region([2, 10, 10], [2, 2, 9], "bunch")], True, "labels.json", "attribute values ['bunch'] are not classes"),
    ],
    ids=["missing-image", "out-of-bounds", "no-attribute", "unknown-class"],
)
def test_via_instances_bad_input_names_the_file(
    tmp_path: Path, regions: list[dict], image: bool, labels: str | None, message: str
) -> None:
    src = via_project(tmp_path / "src", regions, image)
    if labels:
        (tmp_path / labels).write_text(
            json.dumps({"name": "only-box", "classes": [{"id": 0, "name": "box", "color": [1, 2, 3]}]})
        )
        labels = str(tmp_path / labels)
    with pytest.raises(ConvertError, match=None) as e:
        convert("via-instances", src, str(tmp_path / "out"), ConvertOptions(attribute="class", labels=labels))
    assert message in str(e.value)


SQUARE = [[2, 2, 10, 2, 10, 9, 2, 9]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][0].update(category_id=3), "instances.json: annotation 1: category_id 3 is not in"),
        (
            lambda d: d["annotations"][0].update(image_id=9),
            "instances.json: annotation 1: image_id 9 is not in 'images'",
        ),
        (lambda d: d["images"][0].update(width=64), "f.png: image is 40x32 but the JSON says 64x32"),
        (
            lambda d: d["images"][0].update(file_name="gone.png"),
            "gone.png: image named in the COCO JSON does not exist",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation=[[2, 2, 41, 2, 10, 9]]),
            "annotation 1: polygon reaches (2, 2)-(41, 9), outside the 40x32 frame",
        ),
        (
            lambda d: d["annotations"][0].update(segmentation={"size": [30, 40], "counts": [5, 10]}),
            "annotation 1: RLE size [30, 40] but the image is 32x40",
        ),
        (lambda d: d.pop("annotations"), "instances.json: not a COCO instances file"),
    ],
    ids=[
        "unknown-category",
        "unknown-image",
        "size-mismatch",
        "missing-image",
        "out-of-bounds",
        "rle-size",
        "not-coco",
    ],
)
def test_coco_bad_input_names_the_file(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    doc = coco_doc(32, 40, [{"category_id": 1, "segmentation": SQUARE}])
    change(doc)
    src = write_coco(tmp_path / "src", doc)
    with pytest.raises(ConvertError) as e:
        convert("coco", src, str(tmp_path / "out"))
    assert message in str(e.value)


def test_canonical_reader_refuses_missing_and_inconsistent_files(sources: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "data"
    convert("coco", sources["coco"], str(root))
    (root / "valinst" / "val_0001.json").unlink()
    with pytest.raises(InstanceDataError, match=r"val_0001.png: no valinst/val_0001.json for this frame"):
        list_frames(str(root), "val")
    meta = root / "traininst" / "train_0000.json"
    listed = json.loads(meta.read_text())["instances"]
    meta.write_text(json.dumps({"instances": listed[1:]}))
    frame = list_frames(str(root), "train")[0]
    with pytest.raises(
        InstanceDataError, match=r"train_0000.png: instance ids \[1\] are not listed in .*train_0000.json"
    ):
        read_frame(frame, 2)
    meta.write_text(json.dumps({"instances": [{**d, "class": 5} for d in listed]}))
    with pytest.raises(InstanceDataError, match=r"train_0000.json: classes \[5(, 5)*\] outside the label map's 0..1"):
        read_frame(frame, 2)
