"""Generic folders (index masks and colour masks + palette) and CamVid's SegNet layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.common import DATA_DIR
from helpers.format_samples import FOLDERS_H as H
from helpers.format_samples import FOLDERS_W as W
from helpers.format_samples import ROADS, write_camvid, write_folders

from segray import storage
from segray.datasets.formats import ConvertError, ConvertOptions, convert
from segray.labels import CAMVID, LabelMap


def test_index_masks_with_label_map_json(tmp_path: Path) -> None:
    truth = write_folders(tmp_path / "src", np.random.default_rng(0))
    (tmp_path / "roads.json").write_text(ROADS.to_json())
    report = convert(
        "folders", str(tmp_path / "src"), str(tmp_path / "out"), ConvertOptions(labels=str(tmp_path / "roads.json"))
    )
    assert report.frames == {"train": 3} and report.ambiguous_pixels == 0
    assert LabelMap.from_json((tmp_path / "out" / "labels.json").read_text()) == ROADS
    for stem, ids in truth.items():
        assert (cv2.imread(str(tmp_path / "out" / "trainannot" / f"{stem}.png"), cv2.IMREAD_UNCHANGED) == ids).all()
    assert (tmp_path / "out" / "train" / "b.jpg").read_bytes() == (
        tmp_path / "src" / "images" / "sub" / "b.jpg"
    ).read_bytes()


def test_colour_masks_exact_and_with_tolerance_on_s3(tmp_path: Path, s3_prefix: str) -> None:
    truth = write_folders(tmp_path / "src", np.random.default_rng(1), colour=True)
    (tmp_path / "src" / "labels.json").write_text(ROADS.to_json())  # found in SRC without --labels
    report = convert("folders", str(tmp_path / "src"), s3_prefix, ConvertOptions(color_masks=True, split="val"))
    assert report.frames == {"val": 3}
    for stem, ids in truth.items():
        mask = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{s3_prefix}/valannot/{stem}.png"), np.uint8), -1)
        assert (mask == ids).all(), stem
    # an off-palette colour: refused by default, ignored and counted with --tolerance
    bad = tmp_path / "src" / "masks" / "c.png"
    img = cv2.imread(str(bad))
    img[0, 0], img[0, 1] = (0, 255, 0), (140, 0, 0)  # BGR: far from everything; 2 from car (0,0,142)
    cv2.imwrite(str(bad), img)
    with pytest.raises(ConvertError, match=r"2 pixels have colours not in label map 'roads'") as ei:
        convert("folders", str(tmp_path / "src"), str(tmp_path / "o1"), ConvertOptions(color_masks=True))
    assert str(bad) in str(ei.value)
    report = convert(
        "folders", str(tmp_path / "src"), str(tmp_path / "o2"), ConvertOptions(color_masks=True, tolerance=10)
    )
    assert report.ambiguous_pixels == 1
    mask = cv2.imread(str(tmp_path / "o2" / "trainannot" / "c.png"), cv2.IMREAD_UNCHANGED)
    want = truth["c"].copy()
    want[0, 0], want[0, 1] = 255, 1
    assert (mask == want).all()


def test_split_auto_and_refusals(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_folders(src, np.random.default_rng(2))
    (src / "labels.json").write_text(ROADS.to_json())
    with pytest.raises(ConvertError, match="--split auto needs images/<split>/"):
        convert("folders", str(src), str(tmp_path / "o"), ConvertOptions(split="auto"))
    for p in list((src / "images").glob("*.jpg")) + list((src / "masks").glob("*.png")):
        p.unlink()
    report = convert("folders", str(src), str(tmp_path / "o"), ConvertOptions(split="auto"))
    assert report.frames == {"sub": 1}
    # a frame without its mask, and a mask with an id the label map lacks: errors naming the file
    cv2.imwrite(str(src / "images" / "sub" / "lonely.png"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ConvertError, match=r"lonely.png: no mask masks/sub/lonely.png"):
        convert("folders", str(src), str(tmp_path / "o"))
    (src / "images" / "sub" / "lonely.png").unlink()
    cv2.imwrite(str(src / "masks" / "sub" / "b.png"), np.full((H, W), 7, np.uint8))
    with pytest.raises(ConvertError, match=r"b.png: mask holds ids \[7\] that label map 'roads' does not define"):
        convert("folders", str(src), str(tmp_path / "o"))
    cv2.imwrite(str(src / "masks" / "sub" / "b.png"), np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ConvertError, match=r"b.png: mask is 28x21 but its frame is 28x20"):
        convert("folders", str(src), str(tmp_path / "o"))
    (src / "labels.json").unlink()
    with pytest.raises(ConvertError, match="folders need a label map"):
        convert("folders", str(src), str(tmp_path / "o"))


def test_camvid_copies_and_checks(tmp_path: Path) -> None:
    truth = write_camvid(tmp_path / "camvid", np.random.default_rng(3))
    report = convert("camvid", str(tmp_path / "camvid"), str(tmp_path / "out"))
    assert report.frames == {"train": 2, "val": 1, "test": 1}
    assert LabelMap.from_json((tmp_path / "out" / "labels.json").read_text()) == CAMVID
    for key, ids in truth.items():
        split, stem = key.split("/")
        assert (cv2.imread(str(tmp_path / "out" / f"{split}annot" / f"{stem}.png"), cv2.IMREAD_UNCHANGED) == ids).all()
        assert (tmp_path / "out" / split / f"{stem}.png").read_bytes() == (
            tmp_path / "camvid" / split / f"{stem}.png"
        ).read_bytes()
    bad = tmp_path / "camvid" / "valannot" / "0001TP_000000.png"
    cv2.imwrite(str(bad), np.full((H, W), 12, np.uint8))
    with pytest.raises(ConvertError, match=r"mask holds ids \[12\] that label map 'camvid' does not define") as ei:
        convert("camvid", str(tmp_path / "camvid"), str(tmp_path / "out"))
    assert str(bad) in str(ei.value)
    bad.unlink()
    with pytest.raises(ConvertError, match="0001TP_000000.png: no mask valannot/0001TP_000000.png"):
        convert("camvid", str(tmp_path / "camvid"), str(tmp_path / "out"))


@pytest.mark.slow
def test_camvid_real_val_split(tmp_path: Path) -> None:
    src = DATA_DIR / "camvid"
    if not (src / "val").is_dir():
        pytest.skip(f"real CamVid not found at {src} (set SEGRAY_DATA_DIR)")
    local = tmp_path / "camvid"
    for folder in ("val", "valannot"):
        shutil.copytree(src / folder, local / folder)
    report = convert("camvid", str(local), str(tmp_path / "out"))
    assert report.frames == {"val": len(list((src / "val").glob("*.png")))}
    meta = json.loads((tmp_path / "out" / "_convert.json").read_text())
    assert meta["frames"] == report.frames


def test_unknown_format_and_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="unknown format 'pascal'"):
        convert("pascal", str(tmp_path), str(tmp_path / "o"))
    with pytest.raises(storage.StorageError, match="no such file or folder"):
        convert("camvid", str(tmp_path / "absent"), str(tmp_path / "o"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="no frames found for format camvid"):
        convert("camvid", str(tmp_path / "empty"), str(tmp_path / "o"))
