"""Synthetic frames with their ground truth, for the demo, the tests and the benchmarks: no download,
no dataset, the same frames from the same seed.

Two sets:

- **Street frames** (semantic): dash-camera-like scenes of the :data:`STREET` classes, written as
  frames alone (:func:`write_street_frames`) or as a dataset in segray's folder layout with masks
  (:func:`write_street_dataset`). ``segray demo`` trains and labels on them.
- **An instance set**: grape-like "bunches" and boxes on textured backgrounds. Each frame holds a
  few non-overlapping objects of two classes: a ``bunch`` (a cluster of shaded berries, outlined by
  one convex polygon as an annotator would draw it) and a ``box`` (a textured rectangle, drawn as a
  4-point polygon). :func:`write_synthetic_instances` writes the same frames in two annotation
  forms, so a reader can check that both converters produce the same canonical data:

  - ``<out>/via/<split>/*.png`` + ``<out>/via/<split>/via_regions.json`` (VIA 2 polygons, the class
    in the region attribute ``class``);
  - ``<out>/coco/<split>/*.png`` + ``<out>/coco/annotations/instances_<split>.json`` (COCO
    instances: bunches as polygons, boxes as compressed RLE of the same polygon's filled mask).

  Used by the tests (tiny frames) and by ``bench/instance_check.py`` (512x512).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segray import storage
from segray.labels import LabelClass, LabelMap

#: The street frames' classes (the demo's), in CamVid's colours.
STREET = LabelMap(
    "street-demo",
    tuple(
        LabelClass(i, name, colour)
        for i, (name, colour) in enumerate(
            [
                ("sky", (128, 128, 128)),
                ("building", (128, 0, 0)),
                ("road", (128, 64, 128)),
                ("sidewalk", (60, 40, 222)),
                ("tree", (128, 128, 0)),
                ("car", (64, 0, 128)),
                ("pole", (192, 192, 128)),
            ]
        )
    ),
)


def street_frame(rng: np.random.Generator, height: int = 240, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic dash-camera-like frame (RGB, uint8) and its true :data:`STREET` class mask.

    Sky gradient, facades with windows, a road with lane marks running to the horizon, sidewalks,
    textured trees, cars of several colours, a pole, and sensor noise: each class has its own look,
    none is painted in its label colour.
    """
    ids = {c.name: c.id for c in STREET.classes}
    img = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def fill(name: str, region: np.ndarray, look: np.ndarray) -> None:
        img[region] = look[region] if look.ndim == 3 else look
        mask[region] = ids[name]

    horizon = int(height * rng.uniform(0.35, 0.5))
    t = (yy / max(horizon, 1))[..., None]
    zenith, haze = np.array([110, 160, 225], np.float32), np.array([200, 215, 235], np.float32)
    fill("sky", yy < horizon, (1 - t) * zenith + t * haze)
    top = horizon - int(rng.integers(20, horizon))
    left, right = width * rng.uniform(0.2, 0.35), width * rng.uniform(0.65, 0.8)
    facade = np.broadcast_to(rng.uniform(90, 170) * np.array([1.0, 0.85, 0.7], np.float32), img.shape).copy()
    facade[((xx.astype(int) // 6) % 3 == 0) & ((yy.astype(int) // 8) % 3 == 0)] *= 0.45  # windows
    fill("building", (yy < horizon + 10) & (yy > top) & ((xx < left) | (xx > right)), facade)
    vx = width * rng.uniform(0.4, 0.6)
    road = (yy >= horizon) & (np.abs(xx - vx) < (yy - horizon) * rng.uniform(1.2, 2.0) + 4)
    fill("sidewalk", (yy >= horizon) & ~road, np.array([175, 170, 160], np.float32))
    fill("road", road, np.array([80, 80, 85], np.float32))
    img[road & (np.abs(xx - vx) < 1.5) & ((yy.astype(int) // 10) % 2 == 0)] = (230, 230, 220)  # lane marks
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.integers(0, width), rng.integers(horizon - 30, horizon + 10), rng.integers(10, 30)
        leaves = np.stack([lo + span * rng.random(mask.shape) for lo, span in ((30, 40), (90, 60), (30, 30))], -1)
        fill("tree", (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, leaves.astype(np.float32))
    paints = np.array([[200, 30, 30], [30, 60, 180], [230, 230, 230], [30, 30, 30], [200, 180, 40]], np.float32)
    for _ in range(rng.integers(1, 3)):
        x0, y0 = rng.integers(20, width - 60), rng.integers(horizon + 10, height - 30)
        body = (xx >= x0) & (xx < x0 + 50) & (yy >= y0) & (yy < y0 + 25)
        fill("car", body, paints[rng.integers(len(paints))])
        img[body & (yy < y0 + 9) & (xx > x0 + 8) & (xx < x0 + 42)] = (60, 80, 100)  # windows
    x0 = rng.integers(0, width - 6)
    pole = (xx >= x0) & (xx < x0 + 6) & (yy > horizon - 40) & (yy < horizon + 30)
    fill("pole", pole, np.array([70, 70, 60], np.float32))
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8), mask


def png_bytes(arr: np.ndarray) -> bytes:
    """An RGB (H, W, 3) or single-channel (H, W) uint8 array as PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if arr.ndim == 3 else arr)
    if not ok:
        raise ValueError("could not encode PNG")
    return buf.tobytes()


def write_street_frames(
    folder: str | Path, n: int = 36, seed: int = 0, height: int = 240, width: int = 320
) -> list[Path]:
    """``n`` PNG frames in two 'drive' sub-folders (so relative paths have depth), without masks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, _ = street_frame(rng, height, width)
        p = Path(folder, f"drive{i % 2}", f"frame{i:05d}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(png_bytes(img))
        out.append(p)
    return out


def write_street_dataset(root: str | Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A dataset in segray's folder layout: ``<split>/`` frames, ``<split>annot/`` masks, ``labels.json``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            img, mask = street_frame(rng)
            for folder, arr in ((split, img), (f"{split}annot", mask)):
                p = root / folder / f"drive{i % 2}_{split}_{i:04d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(png_bytes(arr))
    (root / "labels.json").write_text(STREET.to_json())
    return root


#: The instance set's object classes, in the order the converters' label map has them (sorted names).
CLASSES = ("box", "bunch")
#: The region attribute naming a VIA region's class.
ATTRIBUTE = "class"


@dataclass
class Instance:
    cls: str
    #: (K, 2) int32 polygon vertices, x then y, inside the frame.
    polygon: np.ndarray


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour noise plus faint stripes: no flat colour a model could threshold."""
    small = rng.integers(40, 200, (max(2, h // 32), max(2, w // 32), 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = 18 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += stripes[..., None] + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _bunch(rng: np.random.Generator, img: np.ndarray, cx: int, cy: int, rx: int, ry: int) -> np.ndarray:
    """Draw berries inside an ellipse; return the convex outline around them all (as an annotator
    draws a bunch: one polygon, gaps between berries included)."""
    h, w = img.shape[:2]
    cover = np.zeros((h, w), np.uint8)
    berry = max(2, min(rx, ry) // 3)
    base = np.array(rng.choice([(70, 30, 110), (60, 120, 40), (120, 40, 60)]), np.float32)
    for _ in range(int(rng.integers(8, 16))):
        a, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
        x = int(cx + r * (rx - berry) * np.cos(a))
        y = int(cy + r * (ry - berry) * np.sin(a))
        cv2.circle(cover, (x, y), berry, 1, -1)
        colour = np.clip(base + rng.normal(0, 15, 3), 0, 255)
        cv2.circle(img, (x, y), berry, colour.tolist(), -1)
        cv2.circle(img, (x - berry // 3, y - berry // 3), max(1, berry // 3), (colour + 60).clip(0, 255).tolist(), -1)
    ys, xs = np.nonzero(cover)
    return cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32)).reshape(-1, 2)


def _box(rng: np.random.Generator, img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """A rectangle with a bright rim and a hatched face; return its 4 corners (inclusive pixels)."""
    face = rng.integers(150, 240, 3).astype(np.float32)
    img[y0 : y1 + 1, x0 : x1 + 1] = np.clip(face + rng.normal(0, 8, (y1 - y0 + 1, x1 - x0 + 1, 3)), 0, 255)
    for x in range(x0, x1 + 1, max(3, (x1 - x0) // 6)):
        cv2.line(img, (x, y0), (x, y1), (face * 0.6).tolist(), 1)
    cv2.rectangle(img, (x0, y0), (x1, y1), (250, 250, 250), max(1, (x1 - x0) // 20))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.int32)


def make_frame(rng: np.random.Generator, h: int, w: int, max_objects: int = 5) -> tuple[np.ndarray, list[Instance]]:
    """One RGB frame and its instances (1..max_objects, bounding boxes 2 px apart at least)."""
    img = _background(rng, h, w)
    taken: list[tuple[int, int, int, int]] = []
    out: list[Instance] = []
    lo, hi = max(6, min(h, w) // 10), max(8, min(h, w) // 4)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            bw, bh = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            x0, y0 = int(rng.integers(1, w - bw - 1)), int(rng.integers(1, h - bh - 1))
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(box[2] + 2 < t[0] or t[2] + 2 < box[0] or box[3] + 2 < t[1] or t[3] + 2 < box[1] for t in taken):
                break
        else:
            continue
        taken.append(box)
        if rng.random() < 0.5:
            poly = _bunch(rng, img, (box[0] + box[2]) // 2, (box[1] + box[3]) // 2, bw // 2, bh // 2)
            out.append(Instance("bunch", poly))
        else:
            out.append(Instance("box", _box(rng, img, *box)))
    return img, out


def _rle(poly: np.ndarray, h: int, w: int) -> dict:
    """The polygon's filled mask (as the converters rasterise it) as compressed COCO RLE."""
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [poly.reshape(-1, 1, 2)], 1)
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def write_synthetic_instances(
    out: str, splits: dict[str, int], size: tuple[int, int] = (64, 64), seed: int = 0, max_objects: int = 5
) -> dict[str, str]:
    """Write the set in both forms under ``out``; returns ``{"via": <src>, "coco": <src>}``."""
    rng = np.random.default_rng(seed)
    h, w = size
    via_root, coco_root = storage.join(out, "via"), storage.join(out, "coco")
    categories = [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    for split, n in splits.items():
        via: dict[str, dict] = {}
        coco: dict = {"images": [], "annotations": [], "categories": categories}
        for i in range(n):
            img, instances = make_frame(rng, h, w, max_objects)
            name = f"{split}_{i:04d}.png"
            data = png_bytes(img)
            storage.write_bytes(storage.join(via_root, split, name), data)
            storage.write_bytes(storage.join(coco_root, split, name), data)
            regions = [
                {
                    "shape_attributes": {
                        "name": "polygon",
                        "all_points_x": inst.polygon[:, 0].tolist(),
                        "all_points_y": inst.polygon[:, 1].tolist(),
                    },
                    "region_attributes": {ATTRIBUTE: inst.cls},
                }
                for inst in instances
            ]
            via[f"{name}{len(data)}"] = {"filename": name, "size": len(data), "regions": regions, "file_attributes": {}}
            image_id = i + 1
            coco["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
            for inst in instances:
                x0, y0 = inst.polygon.min(axis=0).tolist()
                x1, y1 = inst.polygon.max(axis=0).tolist()
                seg = _rle(inst.polygon, h, w) if inst.cls == "box" else [inst.polygon.astype(float).ravel().tolist()]
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": cat_id[inst.cls],
                        "segmentation": seg,
                        "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
                        "area": float(cv2.contourArea(inst.polygon)),
                        "iscrowd": 0,
                    }
                )
        storage.write_bytes(storage.join(via_root, split, "via_regions.json"), json.dumps(via).encode())
        storage.write_bytes(
            storage.join(coco_root, "annotations", f"instances_{split}.json"), json.dumps(coco).encode()
        )
    return {"via": via_root, "coco": coco_root}
