"""KITTI road: magenta road / red not road / black outside the ROI -> 1 / 0 / ignore, pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.format_samples import write_kitti

from segray import storage
from segray.datasets.formats import ConvertError, ConvertOptions, convert
from segray.labels import KITTI_ROAD, LabelMap


def test_kitti_road_to_s3(tmp_path: Path, s3_prefix: str) -> None:
    truth = write_kitti(tmp_path / "data_road", np.random.default_rng(0))
    report = convert("kitti-road", str(tmp_path / "data_road"), s3_prefix)
    assert report.frames == {"train": 3}
    assert report.notes == {"skipped_without_ground_truth": 1}
    assert LabelMap.from_json(storage.read_bytes(f"{s3_prefix}/labels.json").decode()) == KITTI_ROAD
    assert KITTI_ROAD.names == ["not_road", "road"] and KITTI_ROAD.ignore_id == 255
    for name, ids in truth.items():
        mask = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{s3_prefix}/trainannot/{name}.png"), np.uint8), -1)
        assert (mask == ids).all(), name
        src = tmp_path / "data_road" / "training" / "image_2" / f"{name}.png"
        assert storage.read_bytes(f"{s3_prefix}/train/{name}.png") == src.read_bytes()


def test_training_folder_itself_goes_to_split(tmp_path: Path) -> None:
    truth = write_kitti(tmp_path / "data_road", np.random.default_rng(1))
    report = convert(
        "kitti-road", str(tmp_path / "data_road" / "training"), str(tmp_path / "o"), ConvertOptions(split="val")
    )
    assert report.frames == {"val": 3}
    mask = cv2.imread(str(tmp_path / "o" / "valannot" / "uu_000010.png"), cv2.IMREAD_UNCHANGED)
    assert (mask == truth["uu_000010"]).all()


def test_unknown_colour_names_the_file(tmp_path: Path) -> None:
    write_kitti(tmp_path / "data_road", np.random.default_rng(2))
    gt = tmp_path / "data_road" / "training" / "gt_image_2" / "umm_road_000003.png"
    img = cv2.imread(str(gt))
    img[3, 4] = (0, 255, 0)
    cv2.imwrite(str(gt), img)
    with pytest.raises(ConvertError, match=r"1 pixels are neither road .* e\.g\. \[\(0, 255, 0\)\]") as ei:
        convert("kitti-road", str(tmp_path / "data_road"), str(tmp_path / "o"))
    assert str(gt) in str(ei.value)


def test_missing_ground_truth_names_the_frame(tmp_path: Path) -> None:
    write_kitti(tmp_path / "data_road", np.random.default_rng(3))
    (tmp_path / "data_road" / "training" / "gt_image_2" / "uu_road_000010.png").unlink()
    with pytest.raises(ConvertError, match="uu_000010.png: no ground truth training/gt_image_2/uu_road_000010.png"):
        convert("kitti-road", str(tmp_path / "data_road"), str(tmp_path / "o"))
