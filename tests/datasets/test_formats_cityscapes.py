"""Cityscapes: the label tables against the official cityscapesScripts package, the official layout
(label ids -> train ids / categories, on a folder and on S3), and the Kaggle/pix2pix JPEG pairs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers import labels as official
from helpers.format_samples import PAIR_H, PAIR_W, write_official, write_pairs

from segray import storage
from segray.datasets.formats import ConvertError, ConvertOptions, convert
from segray.datasets.formats.cityscapes import label_id_lut
from segray.datasets.formats.cityscapes_pairs import DEFAULT_TOLERANCE
from segray.labels import CITYSCAPES, CITYSCAPES_CATEGORIES, CITYSCAPES_LABELS, KITTI_ROAD, LabelMap, load_label_map


def test_label_table_is_the_official_one() -> None:
    ours = [(lab.name, lab.id, lab.train_id, lab.category, lab.category_id, lab.color) for lab in CITYSCAPES_LABELS]
    theirs = [(lab.name, lab.id, lab.trainId, lab.category, lab.categoryId, lab.color) for lab in official.labels]
    assert ours == theirs
    assert sorted(lab.id for lab in CITYSCAPES_LABELS) == [-1, *range(34)]


def test_lookup_tables_equal_official_id2label() -> None:
    train, cats = label_id_lut("trainids"), label_id_lut("categories")
    for label_id, lab in official.id2label.items():
        if label_id < 0:  # license plate: -1 cannot be stored in a uint8 labelIds PNG
            assert lab.trainId == -1
            continue
        assert train[label_id] == (lab.trainId if lab.trainId not in (-1, 255) else 255), lab.name
        assert cats[label_id] == lab.categoryId, lab.name
    assert (train[34:] == -1).all() and (cats[34:] == -1).all()  # unknown ids are refused


def test_label_maps_use_official_names_and_colours() -> None:
    for lab in official.labels:
        if 0 <= lab.trainId < 255:
            cls = CITYSCAPES.classes[lab.trainId]
            assert (cls.name, cls.color) == (lab.name.replace(" ", "_"), lab.color)
    assert CITYSCAPES.num_classes == 19 and CITYSCAPES.ignore_id == 255
    cats = {lab.categoryId: lab.category for lab in official.labels}
    assert CITYSCAPES_CATEGORIES.names == [cats[i] for i in range(8)]
    assert CITYSCAPES_CATEGORIES.names == [
        "void", "flat", "construction", "object", "nature", "sky", "human", "vehicle",
    ]  # fmt: skip
    trained_colours = {lab.color for lab in official.labels if 0 <= lab.trainId < 255}
    assert all(c.color in trained_colours for c in CITYSCAPES_CATEGORIES.classes[1:])
    assert load_label_map("cityscapes_trainids") is CITYSCAPES
    assert load_label_map("cityscapes_categories") is CITYSCAPES_CATEGORIES
    assert load_label_map("kitti_road") is KITTI_ROAD


def read_mask(uri: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(storage.read_bytes(uri), np.uint8), cv2.IMREAD_UNCHANGED)


def test_official_layout_to_train_ids_on_s3(tmp_path: Path, s3_prefix: str) -> None:
    truth = write_official(tmp_path / "cs", np.random.default_rng(0))
    report = convert("cityscapes", str(tmp_path / "cs"), s3_prefix, ConvertOptions(target="trainids"))
    assert report.frames == {"train": 2, "val": 1}
    lm = LabelMap.from_json(storage.read_bytes(f"{s3_prefix}/labels.json").decode())
    assert lm == CITYSCAPES
    by_id = {lab.id: lab for lab in official.labels}
    for key, ids in truth.items():
        split, stem = key.split("/")
        mask = read_mask(f"{s3_prefix}/{split}annot/{stem}.png")
        want = np.vectorize(lambda i: by_id[i].trainId if by_id[i].trainId not in (-1, 255) else 255)(ids)
        assert mask.dtype == np.uint8 and (mask == want).all(), key
        src_img = tmp_path / "cs" / "leftImg8bit" / split / key.split("/")[1].split("_")[0] / f"{stem}_leftImg8bit.png"
        assert storage.read_bytes(f"{s3_prefix}/{split}/{stem}.png") == src_img.read_bytes()  # copied as is
    meta = json.loads(storage.read_bytes(f"{s3_prefix}/_convert.json"))
    assert meta["notes"] == {"target": "trainids"} and meta["frames"] == {"train": 2, "val": 1}


def test_official_layout_to_categories(tmp_path: Path) -> None:
    truth = write_official(tmp_path / "cs", np.random.default_rng(1))
    convert("cityscapes", str(tmp_path / "cs"), str(tmp_path / "out"), ConvertOptions(target="categories"))
    assert LabelMap.from_json((tmp_path / "out" / "labels.json").read_text()) == CITYSCAPES_CATEGORIES
    by_id = {lab.id: lab for lab in official.labels}
    for key, ids in truth.items():
        split, stem = key.split("/")
        want = np.vectorize(lambda i: by_id[i].categoryId)(ids)
        assert (read_mask(str(tmp_path / "out" / f"{split}annot" / f"{stem}.png")) == want).all(), key


def test_unknown_label_id_names_the_file(tmp_path: Path) -> None:
    write_official(tmp_path / "cs", np.random.default_rng(2))
    bad = next((tmp_path / "cs" / "gtFine" / "val").rglob("*_labelIds.png"))
    ids = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    ids[0, 0] = 40
    cv2.imwrite(str(bad), ids)
    with pytest.raises(ConvertError, match=r"label ids \[40\] are not Cityscapes label ids") as ei:
        convert("cityscapes", str(tmp_path / "cs"), str(tmp_path / "out"))
    assert str(bad) in str(ei.value)


def test_missing_ground_truth_and_bad_target(tmp_path: Path) -> None:
    write_official(tmp_path / "cs", np.random.default_rng(3))
    gt = next((tmp_path / "cs" / "gtFine" / "train").rglob("*_labelIds.png"))
    gt.unlink()
    with pytest.raises(ConvertError, match="no ground truth gtFine/train/aachen/.*_gtFine_labelIds.png"):
        convert("cityscapes", str(tmp_path / "cs"), str(tmp_path / "out"))
    with pytest.raises(ConvertError, match="unknown Cityscapes target 'colours'"):
        convert("cityscapes", str(tmp_path / "cs"), str(tmp_path / "out"), ConvertOptions(target="colours"))


def test_not_a_cityscapes_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "empty" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConvertError, match="not a Cityscapes root"):
        convert("cityscapes", str(tmp_path / "empty"), str(tmp_path / "out"))


# --- image pairs (Kaggle / pix2pix) -----------------------------------------------------------------


def test_jpeg_pairs_nearest_colour_within_tolerance(tmp_path: Path) -> None:
    truth = write_pairs(tmp_path / "pairs", np.random.default_rng(4))
    report = convert("cityscapes-pairs", str(tmp_path / "pairs"), str(tmp_path / "out"))
    assert report.frames == {"train": 2, "val": 1}
    assert report.notes == {"target": "trainids", "tolerance": DEFAULT_TOLERANCE}
    palette = np.array(sorted({lab.color for lab in official.labels}), dtype=np.int64)
    ambiguous = 0
    for key, (photo, want) in truth.items():
        split, stem = key.split("/")
        mask = read_mask(str(tmp_path / "out" / f"{split}annot" / f"{stem}.png"))
        assert mask.shape == (PAIR_H, PAIR_W // 2)
        # What the JPEG made of the label colours, decoded here independently of the converter:
        decoded = cv2.cvtColor(cv2.imread(str(tmp_path / "pairs" / split / f"{stem}.jpg")), cv2.COLOR_BGR2RGB)
        labels = decoded[:, PAIR_W // 2 :].astype(np.int64)
        far = np.sqrt(((labels[:, :, None, :] - palette[None, None]) ** 2).sum(-1)).min(-1) > DEFAULT_TOLERANCE
        assert (mask[far] == 255).all(), key  # ignored where no official colour is near (and counted below)
        ambiguous += int(far.sum())
        # Off the class borders the labels are exact; at borders a pixel is its class or ignore,
        # and about 1% (border pixels blurred towards a third colour) land on another class.
        edge = (cv2.Laplacian(want.astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8)
        inner = cv2.distanceTransform(1 - edge, cv2.DIST_C, 3) >= 2
        assert (mask[inner] == want[inner]).mean() > 0.995, key
        assert ((mask == want) | (mask == 255)).mean() > 0.98, key
        # the photo half, decoded from the composite, is written losslessly as PNG
        got = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / split / f"{stem}.png")), cv2.COLOR_BGR2RGB)
        assert (got == decoded[:, : PAIR_W // 2]).all()
        assert np.abs(got.astype(int) - photo).mean() < 8
    assert report.ambiguous_pixels == ambiguous > 0  # JPEG really blurred some border pixels away
    assert report.mask_pixels == 3 * PAIR_H * PAIR_W // 2


def test_pairs_tolerance_zero_ignores_every_blurred_pixel(tmp_path: Path) -> None:
    write_pairs(tmp_path / "pairs", np.random.default_rng(5), quality=75)
    loose = convert("cityscapes-pairs", str(tmp_path / "pairs"), str(tmp_path / "a"), ConvertOptions(tolerance=60))
    strict = convert("cityscapes-pairs", str(tmp_path / "pairs"), str(tmp_path / "b"), ConvertOptions(tolerance=0))
    assert strict.ambiguous_pixels > loose.ambiguous_pixels
    assert strict.ambiguous_pixels > 0.3 * strict.mask_pixels  # JPEG moves most colours off the palette


def test_pairs_categories_and_odd_width(tmp_path: Path) -> None:
    truth = write_pairs(tmp_path / "pairs", np.random.default_rng(6), quality=95)
    convert("cityscapes-pairs", str(tmp_path / "pairs"), str(tmp_path / "out"), ConvertOptions(target="categories"))
    to_cat = np.full(256, 255, np.uint8)
    for lab in official.labels:
        if 0 <= lab.trainId < 255:
            to_cat[lab.trainId] = lab.categoryId
    photo, train_ids = truth["val/1"]
    mask = read_mask(str(tmp_path / "out" / "valannot" / "1.png"))
    assert ((mask == to_cat[train_ids]) | (mask == 255)).mean() > 0.99
    odd = tmp_path / "odd" / "train" / "x.png"
    odd.parent.mkdir(parents=True)
    cv2.imwrite(str(odd), np.zeros((8, 15, 3), np.uint8))
    with pytest.raises(ConvertError, match="even width") as ei:
        convert("cityscapes-pairs", str(tmp_path / "odd"), str(tmp_path / "out2"))
    assert str(odd) in str(ei.value)
