"""The embedded default: synthetic street-like frames, a fresh model, a local Ray, local folders.

Needs no cloud account and no dataset: ``segray demo`` proves the whole labelling path on a new
machine. The model is untrained (training is ``segray train``), so the area table shows what the
pipeline measures, not what a good model would see.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segray.labels import CAMVID


def street_frame(rng: np.random.Generator, height: int = 240, width: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic dash-camera-like frame (RGB) and its true CamVid class mask."""
    color = {c.name: c.color for c in CAMVID.classes}
    ids = {c.name: c.id for c in CAMVID.classes}
    img = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)

    def fill(name: str, region: np.ndarray) -> None:
        img[region] = color[name]
        mask[region] = ids[name]

    yy, xx = np.mgrid[0:height, 0:width]
    horizon = int(height * rng.uniform(0.35, 0.5))
    fill("sky", yy < horizon)
    fill(
        "building",
        (yy < horizon + 10) & (yy > horizon - rng.integers(20, horizon)) & ((xx < width * 0.3) | (xx > width * 0.7)),
    )
    vx = width * rng.uniform(0.4, 0.6)
    road = (yy >= horizon) & (np.abs(xx - vx) < (yy - horizon) * rng.uniform(1.2, 2.0) + 4)
    fill("sidewalk", (yy >= horizon) & ~road)
    fill("road", road)
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.integers(0, width), rng.integers(horizon - 30, horizon + 10), rng.integers(10, 30)
        fill("tree", (xx - cx) ** 2 + (yy - cy) ** 2 < r * r)
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(20, width - 60), rng.integers(horizon + 10, height - 30)
        fill("car", (xx >= x0) & (xx < x0 + 50) & (yy >= y0) & (yy < y0 + 25))
    x0 = rng.integers(0, width - 4)
    fill("pole", (xx >= x0) & (xx < x0 + 3) & (yy > horizon - 40) & (yy < horizon + 30))
    noisy = img.astype(np.int16) + rng.normal(0, 8, img.shape).astype(np.int16)
    return noisy.clip(0, 255).astype(np.uint8), mask


def write_street_frames(
    folder: str | Path, n: int = 36, seed: int = 0, height: int = 240, width: int = 320
) -> list[Path]:
    """``n`` PNG frames in two 'drive' sub-folders (so relative paths have depth)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, _ = street_frame(rng, height, width)
        p = Path(folder, f"drive{i % 2}", f"frame{i:05d}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out.append(p)
    return out
