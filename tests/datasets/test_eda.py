"""`segray data stats` on a canonical root with hand-made masks, and the `segray data` commands."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segray import cli, storage
from segray.datasets.eda import compute_stats, splits_of, write_stats
from segray.labels import LabelMap

LM = LabelMap.from_dict(
    {
        "name": "tiny",
        "classes": [
            {"id": 0, "name": "road", "color": [128, 64, 128]},
            {"id": 1, "name": "car", "color": [0, 0, 142]},
            {"id": 2, "name": "tree", "color": [107, 142, 35]},
        ],
        "ignore": {"id": 255, "name": "void", "color": [0, 0, 0]},
    }
)


def canonical(root: Path) -> dict[str, np.ndarray]:
    """train: two 16x24 frames, val: one 20x20 frame (a JPEG), with masks built region by region."""
    a = np.zeros((16, 24), np.uint8)  # 384 px: road 384 - 40 - 16 = 328, car 40, void 16
    a[0:5, 0:8] = 1
    a[15, 8:24] = 255
    b = np.full((16, 24), 2, np.uint8)  # tree 384 - 24, road 24
    b[0:2, 0:12] = 0
    c = np.zeros((20, 20), np.uint8)  # val: road 400 - 100, car 100
    c[10:20, 10:20] = 1
    masks = {"train/a": a, "train/b": b, "val/c": c}
    for key, mask in masks.items():
        split, stem = key.split("/")
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        ext = ".jpg" if split == "val" else ".png"
        cv2.imwrite(str(root / split / f"{stem}{ext}"), np.full((*mask.shape, 3), 90, np.uint8))
        cv2.imwrite(str(root / f"{split}annot" / f"{stem}.png"), mask)
    (root / "labels.json").write_text(LM.to_json())
    return masks


def test_counts_frequencies_and_weights(tmp_path: Path) -> None:
    canonical(tmp_path / "ds")
    assert splits_of(str(tmp_path / "ds")) == ["train", "val"]
    stats, pairs = compute_stats(str(tmp_path / "ds"))
    assert stats.frames == {"train": 2, "val": 1} and len(pairs) == 3
    assert stats.sizes == {"24x16": 2, "20x20": 1}
    rows = {r["class"]: r for r in stats.class_rows()}
    assert [rows[c]["pixels"] for c in ("road", "car", "tree")] == [328 + 24 + 300, 40 + 100, 360]
    assert rows["void (ignored)"]["pixels"] == 16
    labelled = 652 + 140 + 360
    assert rows["car"]["pixel_share"] == pytest.approx(140 / labelled)
    assert [rows[c]["frames"] for c in ("road", "car", "tree")] == [3, 2, 1]
    # median frequency balancing (SegNet): freq(c) = pixels of c / pixels of frames containing c
    freq = {"road": 652 / (384 + 384 + 400), "car": 140 / (384 + 400), "tree": 360 / 384}
    median = float(np.median(list(freq.values())))
    for c, f in freq.items():
        assert rows[c]["median_freq_weight"] == pytest.approx(median / f)
    assert stats.to_dict()["total_pixels"] == 384 * 2 + 400


def test_only_some_splits_and_bad_ids(tmp_path: Path) -> None:
    canonical(tmp_path / "ds")
    stats, _ = compute_stats(str(tmp_path / "ds"), splits=["val"])
    assert stats.frames == {"val": 1} and int(stats.pixels[1]) == 100
    cv2.imwrite(str(tmp_path / "ds" / "trainannot" / "b.png"), np.full((16, 24), 9, np.uint8))
    with pytest.raises(ValueError, match=r"masks hold ids \[9\] that label map 'tiny' does not define"):
        compute_stats(str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="not a canonical dataset root"):
        compute_stats(str(tmp_path / "ds" / "train"))


def test_figures_written_to_s3(tmp_path: Path, s3_prefix: str) -> None:
    canonical(tmp_path / "ds")
    stats, out = write_stats(str(tmp_path / "ds"), out=f"{s3_prefix}/eda", previews=2)
    assert out == f"{s3_prefix}/eda"
    summary = json.loads(storage.read_bytes(f"{out}/summary.json"))
    assert summary["frames"] == {"train": 2, "val": 1} and summary["label_map"] == "tiny"
    table = list(csv.DictReader(io.StringIO(storage.read_bytes(f"{out}/class_stats.csv").decode())))
    assert [r["class"] for r in table] == ["road", "car", "tree", "void (ignored)"]
    assert [int(r["pixels"]) for r in table] == [652, 140, 360, 16]
    for name in ("class_frequency.png", "previews.png"):
        img = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{out}/{name}"), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 300, name
    # the chart draws each class's bar in its colour (BGR in OpenCV)
    chart = cv2.imdecode(np.frombuffer(storage.read_bytes(f"{out}/class_frequency.png"), np.uint8), 1)
    for c in LM.classes:
        assert (np.abs(chart.astype(int) - c.color[::-1]).sum(axis=2) < 10).sum() > 50, c.name


def test_cli_stats_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    canonical(tmp_path / "ds")
    assert cli.main(["data", "stats", str(tmp_path / "ds"), "--previews", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 frames (train 2, val 1)" in out and "car" in out and "24x16 (2)" in out
    assert (tmp_path / "ds" / "_eda" / "class_frequency.png").is_file()
    assert not (tmp_path / "ds" / "_eda" / "previews.png").exists()
    # convert the canonical root again as CamVid-style input, with its own labels.json
    assert cli.main(["data", "convert", "--format", "camvid", str(tmp_path / "ds"), str(tmp_path / "copy")]) == 0
    assert "converted 3 frames (train: 2, val: 1)" in capsys.readouterr().out
    assert LabelMap.from_json((tmp_path / "copy" / "labels.json").read_text()) == LM
    rc = cli.main(
        ["data", "convert", "--format", "camvid", "--attribute", "x", str(tmp_path / "ds"), str(tmp_path / "o")]
    )
    assert rc == 2
    assert "--format camvid does not use --attribute" in capsys.readouterr().err
    rc = cli.main(["data", "convert", "--format", "via", str(tmp_path / "ds"), str(tmp_path / "o")])
    assert rc == 2 and "--attribute is required" in capsys.readouterr().err
