"""A synthetic instance set: grape-like "bunches" and boxes on textured backgrounds.

Each frame holds a few non-overlapping objects of two classes: a ``bunch`` (a cluster of shaded
berries, outlined by one convex polygon as an annotator would draw it) and a ``box`` (a textured
rectangle, drawn as a 4-point polygon). The same frames are written in two annotation forms, so a
reader can check that both converters produce the same canonical data:

- ``<out>/via/<split>/*.png`` + ``<out>/via/<split>/via_regions.json`` (VIA 2 polygons, the class in
  the region attribute ``class``);
- ``<out>/coco/<split>/*.png`` + ``<out>/coco/annotations/instances_<split>.json`` (COCO instances:
  bunches as polygons, boxes as compressed RLE of the same polygon's filled mask).

Used by the tests (tiny frames) and by ``bench/instance_check.py`` (512x512).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import cv2
import numpy as np

from segray import storage

#: The object classes, in the order the converters' label map has them (sorted names).
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


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode a PNG")
    return buf.tobytes()


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
            data = _png(img)
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
