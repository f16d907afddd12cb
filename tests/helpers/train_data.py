"""Tiny synthetic segmentation datasets in the canonical layout, written to a folder or S3."""

from __future__ import annotations

import cv2
import numpy as np

from segray import storage
from segray.labels import LabelMap

SHAPES = LabelMap.from_dict(
    {
        "name": "shapes",
        "classes": [
            {"id": 0, "name": "background", "color": [40, 40, 40]},
            {"id": 1, "name": "box", "color": [220, 60, 60]},
            {"id": 2, "name": "disc", "color": [60, 60, 220]},
        ],
        "ignore": {"id": 255, "name": "void", "color": [0, 0, 0]},
    }
)


def shape_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy frame with a reddish box and a bluish disc; the disc's rim is ignore (255)."""
    img = rng.integers(20, 90, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    x1, y1 = x0 + int(rng.integers(w // 5, w // 2)), y0 + int(rng.integers(h // 5, h // 2))
    img[y0:y1, x0:x1] = (200, 50, 50) + rng.integers(-20, 20, (y1 - y0, x1 - x0, 3))
    mask[y0:y1, x0:x1] = 1
    cx, cy, r = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4)), int(min(h, w) // 6)
    cv2.circle(img, (cx, cy), r, (50, 60, 210), -1)
    cv2.circle(mask, (cx, cy), r, 2, -1)
    cv2.circle(mask, (cx, cy), r, 255, 1)
    return img, mask


def png(arr: np.ndarray) -> bytes:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def write_shapes_dataset(
    root: str, splits: dict[str, int], size: tuple[int, int] = (64, 64), seed: int = 0, labels: bool = True
) -> str:
    """``<root>/<split>/sNNNN_<i>.png`` + ``<root>/<split>annot/...`` + ``labels.json``; returns root."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            img, mask = shape_pair(rng, *size)
            name = f"seq{i % 2}_{i:04d}.png"
            storage.write_bytes(storage.join(root, split, name), png(img))
            storage.write_bytes(storage.join(root, f"{split}annot", name), png(mask))
    if labels:
        storage.write_bytes(storage.join(root, "labels.json"), SHAPES.to_json().encode())
    return root
