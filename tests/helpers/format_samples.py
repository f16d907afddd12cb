"""Tiny synthetic sources of every convertible format, one maker per format name in :data:`SAMPLES`.

The per-format tests use the writers below to check each converter's pixels; the format contract
(``tests/datasets/test_format_contract.py``) converts each :data:`SAMPLES` entry and checks the
canonical layout, so a format added to ``FORMATS`` without a maker here fails that test by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers import labels as official

from segray.datasets.formats import ConvertOptions
from segray.datasets.synthetic import ATTRIBUTE, write_synthetic_instances
from segray.labels import LabelMap

CITYSCAPES_H, CITYSCAPES_W = 32, 64
FOLDERS_H, FOLDERS_W = 20, 28
KITTI_H, KITTI_W = 24, 80
VIA_H, VIA_W = 48, 64


# --- Cityscapes: official layout and Kaggle/pix2pix pairs ----------------------------------------


def block_ids(rng: np.random.Generator, values: list[int], block: int = 8) -> np.ndarray:
    """A (CITYSCAPES_H, CITYSCAPES_W) uint8 map of random ``values`` in ``block``-pixel squares."""
    small = rng.choice(values, size=(CITYSCAPES_H // block, CITYSCAPES_W // block)).astype(np.uint8)
    return np.kron(small, np.ones((block, block), dtype=np.uint8))


def write_official(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic Cityscapes in the official layout; returns label ids by '<split>/<stem>'."""
    truth = {}
    for split, city, n in (("train", "aachen", 2), ("val", "lindau", 1)):
        for i in range(n):
            base = f"{city}_{i:06d}_000019"
            img = rng.integers(0, 256, (CITYSCAPES_H, CITYSCAPES_W, 3), dtype=np.uint8)
            ids = block_ids(rng, list(range(34)))
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"), img)
            cv2.imwrite(str(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png"), ids)
            # files the converter must leave alone
            cv2.imwrite(str(root / "gtFine" / split / city / f"{base}_gtFine_color.png"), img)
            truth[f"{split}/{base}"] = ids
    return truth


PAIR_H, PAIR_W = 256, 512  # the usual copy's size: two 256x256 halves


def write_pairs(root: Path, rng: np.random.Generator, quality: int = 90) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """JPEG composites (photo | colour labels); returns (photo, train ids) by '<split>/<stem>'."""
    trained = [lab for lab in official.labels if 0 <= lab.trainId < 255]
    truth = {}
    for split, n in (("train", 2), ("val", 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            small = rng.integers(0, len(trained), (PAIR_H // 32, PAIR_W // 2 // 32))
            idx = np.kron(small, np.ones((32, 32), dtype=np.int64))
            colours = np.array([lab.color for lab in trained], dtype=np.uint8)[idx]
            train_ids = np.array([lab.trainId for lab in trained], dtype=np.uint8)[idx]
            photo = cv2.GaussianBlur(rng.integers(0, 256, (PAIR_H, PAIR_W // 2, 3), dtype=np.uint8), (5, 5), 0)
            composite = np.concatenate([photo, colours], axis=1)
            ok, buf = cv2.imencode(
                ".jpg", cv2.cvtColor(composite, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
            assert ok
            (root / split / f"{i + 1}.jpg").write_bytes(buf.tobytes())
            truth[f"{split}/{i + 1}"] = (photo, train_ids)
    return truth


# --- generic folders and CamVid --------------------------------------------------------------


ROADS = LabelMap.from_dict(
    {
        "name": "roads",
        "classes": [
            {"id": 0, "name": "road", "color": [128, 64, 128]},
            {"id": 1, "name": "car", "color": [0, 0, 142]},
            {"id": 2, "name": "sky", "color": [70, 130, 180]},
        ],
        "ignore": {"id": 255, "name": "void", "color": [0, 0, 0]},
    }
)


def write_folders(root: Path, rng: np.random.Generator, colour: bool = False) -> dict[str, np.ndarray]:
    truth = {}
    for rel in ("a", "sub/b", "c"):
        ids = rng.choice([0, 1, 2, 255], size=(FOLDERS_H, FOLDERS_W)).astype(np.uint8)
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "masks" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / f"{rel}.jpg"), rng.integers(0, 256, (FOLDERS_H, FOLDERS_W, 3), np.uint8))
        mask = cv2.cvtColor(ROADS.colorize(ids), cv2.COLOR_RGB2BGR) if colour else ids
        cv2.imwrite(str(root / "masks" / f"{rel}.png"), mask)
        truth[rel.rsplit("/", 1)[-1]] = ids
    return truth


def write_camvid(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    truth = {}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            ids = rng.integers(0, 12, (FOLDERS_H, FOLDERS_W), dtype=np.uint8)
            cv2.imwrite(
                str(root / split / f"0001TP_{i:06d}.png"), rng.integers(0, 256, (FOLDERS_H, FOLDERS_W, 3), np.uint8)
            )
            cv2.imwrite(str(root / f"{split}annot" / f"0001TP_{i:06d}.png"), ids)
            truth[f"{split}/0001TP_{i:06d}"] = ids
    return truth


# --- KITTI road --------------------------------------------------------------------------------


COLOURS = {1: (255, 0, 255), 0: (255, 0, 0), 255: (0, 0, 0)}


def write_kitti(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``data_road`` with 3 training frames (um, umm, uu), lane files, and a testing/ without ground truth."""
    truth = {}
    for name in ("um_000000", "umm_000003", "uu_000010"):
        ids = rng.choice([0, 1, 255], size=(KITTI_H, KITTI_W)).astype(np.uint8)
        gt = np.zeros((KITTI_H, KITTI_W, 3), np.uint8)
        for cid, colour in COLOURS.items():
            gt[ids == cid] = colour
        cat, num = name.rsplit("_", 1)
        for folder in ("image_2", "gt_image_2"):
            (root / "training" / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(
            str(root / "training" / "image_2" / f"{name}.png"), rng.integers(0, 256, (KITTI_H, KITTI_W, 3), np.uint8)
        )
        cv2.imwrite(
            str(root / "training" / "gt_image_2" / f"{cat}_road_{num}.png"), cv2.cvtColor(gt, cv2.COLOR_RGB2BGR)
        )
        if cat == "um":  # um also has lane ground truth, which the road converter must not use
            cv2.imwrite(
                str(root / "training" / "gt_image_2" / f"{cat}_lane_{num}.png"),
                np.zeros((KITTI_H, KITTI_W, 3), np.uint8),
            )
        truth[name] = ids
    (root / "testing" / "image_2").mkdir(parents=True)
    cv2.imwrite(str(root / "testing" / "image_2" / "um_000099.png"), np.zeros((KITTI_H, KITTI_W, 3), np.uint8))
    return truth


# --- VIA polygons ------------------------------------------------------------------------------


def rect(x: int, y: int, w: int, h: int, cls: object) -> dict:
    return {
        "shape_attributes": {"name": "rect", "x": x, "y": y, "width": w, "height": h},
        "region_attributes": {"type": cls},
    }


def poly(xs: list[float], ys: list[float], cls: object) -> dict:
    return {
        "shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
        "region_attributes": {"type": cls},
    }


def entry(filename: str, regions: list[dict]) -> dict:
    return {"filename": filename, "size": 123, "regions": regions, "file_attributes": {}}


def vineyard(folder: Path, rng: np.random.Generator) -> dict:
    """Two images whose regions overlap: an L-shaped 'leaf' polygon, a 'grape' polygon over it, a
    'Grape' rect written as a checkbox dict, and a float-coordinate 'trunk' polygon."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vine_a.jpg", "vine_b.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (VIA_H, VIA_W, 3), np.uint8))
    leaf_l = poly([2, 30, 30, 12, 12, 2], [2, 2, 12, 12, 30, 30], "leaf")  # L: x 2..30 rows 2..12, x 2..12 rows 2..30
    grape = poly([8, 17, 17, 8], [8, 8, 13, 13], "grape")  # x 8..17, y 8..13: overlaps both arms of the L
    grape2 = {
        "shape_attributes": {"name": "rect", "x": 40, "y": 30, "width": 5, "height": 5},
        "region_attributes": {"type": {"Grape": True, "leaf": False}},
    }
    trunk = poly([49.6, 60.4, 60.4, 49.6], [0.4, 0.4, 20.2, 20.2], "trunk")  # rounds to x 50..60, y 0..20
    return {"a": entry("vine_a.jpg", [leaf_l, grape, grape2]), "b": entry("vine_b.png", [grape, leaf_l, trunk])}


# --- one tiny sample per format name -------------------------------------------------------------


@dataclass(frozen=True)
class FormatSample:
    """A written source: what to pass to ``convert`` and the frame files it holds (images only)."""

    src: Path
    frames: list[Path]
    options: ConvertOptions = field(default_factory=ConvertOptions)


def _frames(folder: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in folder.rglob(pattern) if p.suffix in (".png", ".jpg"))


def camvid_sample(root: Path) -> FormatSample:
    write_camvid(root, np.random.default_rng(0))
    return FormatSample(root, _frames(root / "train") + _frames(root / "val") + _frames(root / "test"))


def cityscapes_sample(root: Path) -> FormatSample:
    write_official(root, np.random.default_rng(0))
    return FormatSample(root, _frames(root / "leftImg8bit"))


def cityscapes_pairs_sample(root: Path) -> FormatSample:
    write_pairs(root, np.random.default_rng(0))
    return FormatSample(root, _frames(root))


def kitti_road_sample(root: Path) -> FormatSample:
    write_kitti(root, np.random.default_rng(0))
    return FormatSample(root, _frames(root / "training" / "image_2"))


def via_sample(root: Path) -> FormatSample:
    doc = vineyard(root / "train", np.random.default_rng(0))
    (root / "train" / "project.json").write_text(json.dumps({"_via_settings": {}, "_via_img_metadata": doc}))
    return FormatSample(root, _frames(root), ConvertOptions(attribute="type"))


def folders_sample(root: Path) -> FormatSample:
    write_folders(root, np.random.default_rng(0))
    (root / "labels.json").write_text(ROADS.to_json())
    return FormatSample(root, _frames(root / "images"))


def via_instances_sample(root: Path) -> FormatSample:
    src = Path(write_synthetic_instances(str(root), {"train": 2, "val": 1}, (32, 32), seed=0)["via"])
    return FormatSample(src, _frames(src), ConvertOptions(attribute=ATTRIBUTE))


def coco_sample(root: Path) -> FormatSample:
    src = Path(write_synthetic_instances(str(root), {"train": 2, "val": 1}, (32, 32), seed=0)["coco"])
    return FormatSample(src, _frames(src))


#: Format name (``segray.datasets.formats.FORMATS``) -> a maker writing a tiny source into a folder.
SAMPLES: dict[str, Callable[[Path], FormatSample]] = {
    "camvid": camvid_sample,
    "cityscapes": cityscapes_sample,
    "cityscapes-pairs": cityscapes_pairs_sample,
    "kitti-road": kitti_road_sample,
    "via": via_sample,
    "via-instances": via_instances_sample,
    "coco": coco_sample,
    "folders": folders_sample,
}
