"""The embedded default: ``segray demo`` trains a small model and labels frames it has not seen.

Needs no cloud account, no dataset and no download. It synthesises street-like frames with their
ground truth, trains a UNet on some of them through the training code on Ray Train (a short
recipe, :data:`DEMO_RECIPE`), labels the others with the labelling job, scores the masks the job
wrote against the ground truth, and writes a picture of frame | ground truth | predicted mask.
Every step is the code a real run uses; only the frames are made up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from segray.labels import LabelClass, LabelMap

if TYPE_CHECKING:
    from segray.labelling.report import AreaRow

#: The demo's classes, in CamVid's colours.
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

#: The demo's training recipe (``segray train`` keys): UNet-ResNet18 with a slim decoder at
#: 128x160, from scratch, one worker with both cores.
DEMO_RECIPE: dict[str, Any] = {
    "name": "demo-unet",
    "model": {
        "arch": "unet",
        "encoder": "resnet18",
        "height": 128,
        "width": 160,
        "kwargs": {"decoder_channels": [64, 32, 16, 16, 16]},
    },
    "augment": {"scale_min": 0.8, "scale_max": 1.25, "brightness": 0.2, "contrast": 0.2, "saturation": 0.2},
    "optim": {"lr": 3.0e-3, "warmup_epochs": 1},
    "loss": [{"type": "ce", "class_weights": "auto"}, {"type": "dice", "weight": 0.5}],
    "run": {
        "epochs": 16,
        "val_every": 4,
        "batch_size": 8,
        "val_batch_size": 8,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "torch_threads": 2,
        "max_failures": 0,
        "keep_checkpoints": 1,
        "log_every": 1000,
    },
}


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
    fill("sky", yy < horizon, (1 - t) * np.float32([110, 160, 225]) + t * np.float32([200, 215, 235]))
    top = horizon - int(rng.integers(20, horizon))
    left, right = width * rng.uniform(0.2, 0.35), width * rng.uniform(0.65, 0.8)
    facade = np.broadcast_to(rng.uniform(90, 170) * np.float32([1.0, 0.85, 0.7]), img.shape).copy()
    facade[((xx.astype(int) // 6) % 3 == 0) & ((yy.astype(int) // 8) % 3 == 0)] *= 0.45  # windows
    fill("building", (yy < horizon + 10) & (yy > top) & ((xx < left) | (xx > right)), facade)
    vx = width * rng.uniform(0.4, 0.6)
    road = (yy >= horizon) & (np.abs(xx - vx) < (yy - horizon) * rng.uniform(1.2, 2.0) + 4)
    fill("sidewalk", (yy >= horizon) & ~road, np.float32([175, 170, 160]))
    fill("road", road, np.float32([80, 80, 85]))
    img[road & (np.abs(xx - vx) < 1.5) & ((yy.astype(int) // 10) % 2 == 0)] = (230, 230, 220)  # lane marks
    for _ in range(rng.integers(1, 4)):
        cx, cy, r = rng.integers(0, width), rng.integers(horizon - 30, horizon + 10), rng.integers(10, 30)
        leaves = np.stack([lo + span * rng.random(mask.shape) for lo, span in ((30, 40), (90, 60), (30, 30))], -1)
        fill("tree", (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, leaves.astype(np.float32))
    paints = np.float32([[200, 30, 30], [30, 60, 180], [230, 230, 230], [30, 30, 30], [200, 180, 40]])
    for _ in range(rng.integers(1, 3)):
        x0, y0 = rng.integers(20, width - 60), rng.integers(horizon + 10, height - 30)
        body = (xx >= x0) & (xx < x0 + 50) & (yy >= y0) & (yy < y0 + 25)
        fill("car", body, paints[rng.integers(len(paints))])
        img[body & (yy < y0 + 9) & (xx > x0 + 8) & (xx < x0 + 42)] = (60, 80, 100)  # windows
    x0 = rng.integers(0, width - 6)
    fill("pole", (xx >= x0) & (xx < x0 + 6) & (yy > horizon - 40) & (yy < horizon + 30), np.float32([70, 70, 60]))
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8), mask


def _png(arr: np.ndarray) -> bytes:
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
        p.write_bytes(_png(img))
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
                p.write_bytes(_png(arr))
    (root / "labels.json").write_text(STREET.to_json())
    return root


@dataclass
class DemoResult:
    folder: Path
    model: str
    labels: str
    overlay: Path
    miou: float
    iou: dict[str, float]
    areas: list[AreaRow]
    labelled: int
    failed: int
    best_val_miou: float | None
    seconds: dict[str, float] = field(default_factory=dict)


def score_masks(data: Path, split: str, labels: str, overlays: int = 3) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Scores of the masks a labelling output holds for ``data/<split>`` against the ground truth
    (the job's own files, not a second prediction), and the first frames' overlay strips (RGB)."""
    from segray.datasets.masks import read_mask
    from segray.evaluation.figures import overlay_strip
    from segray.labelling.write import mask_key
    from segray.metrics import confusion_matrix, scores

    k = STREET.num_classes
    cm = np.zeros((k, k), np.int64)
    strips = []
    for i, frame in enumerate(sorted((data / split).rglob("*.png"))):
        rel = frame.relative_to(data / split).as_posix()
        truth = read_mask(str(data / f"{split}annot" / rel))
        pred = read_mask(str(Path(labels, mask_key(rel))))
        cm += confusion_matrix(pred, truth, k)
        if i < overlays:
            rgb = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
            strips.append(overlay_strip(rgb, truth, pred, STREET))
    return scores(cm, [c.name for c in STREET.classes]), strips


def run_demo(
    folder: str | Path,
    n_train: int = 64,
    n_val: int = 8,
    n_test: int = 16,
    epochs: int | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Synthesise, train, label the held-out frames, score the job's masks; needs Ray initialised."""
    from segray.labelling.job import LabelOptions, run_label_job
    from segray.labelling.report import area_table
    from segray.training.config import TrainConfig
    from segray.training.job import run_training

    folder = Path(folder).absolute()
    seconds: dict[str, float] = {}
    t = time.time()
    # val picks the best epoch; test is labelled and scored, so the figure is on frames no choice saw.
    data = write_street_dataset(folder / "data", {"train": n_train, "val": n_val, "test": n_test})
    seconds["synthesise"] = time.time() - t
    say(f"1/3 wrote {n_train} training, {n_val} validation and {n_test} test street frames with masks to {data}")

    recipe = {
        **DEMO_RECIPE,
        "data": {"root": str(data)},
        "run": {**DEMO_RECIPE["run"], "storage": str(folder / "runs")},
    }
    if epochs is not None:
        recipe["run"]["epochs"] = epochs
    cfg = TrainConfig.from_dict(recipe)
    say(f"2/3 training {cfg.model.arch}-{cfg.model.encoder} for {cfg.run.epochs} epochs on Ray Train ...")
    t = time.time()
    trained = run_training(cfg)
    seconds["train"] = time.time() - t
    if not trained.artifact:
        raise RuntimeError(f"demo training stopped after epoch {trained.epochs_done}; see {trained.run_uri}")
    say(f"    trained in {seconds['train']:.0f} s; model artifact {trained.model_id} -> {trained.artifact}")

    labels = str(folder / "labels")
    say(f"3/3 labelling the {n_test} test frames with the labelling job ...")
    t = time.time()
    run = run_label_job(LabelOptions(model=trained.artifact, input=str(data / "test"), output=labels))
    seconds["label"] = time.time() - t

    s, strips = score_masks(data, "test", labels)
    overlay = folder / "overlay.png"
    overlay.write_bytes(_png(np.concatenate(strips, axis=0)))
    return DemoResult(
        folder=folder,
        model=trained.artifact,
        labels=labels,
        overlay=overlay,
        miou=s["miou"],
        iou=s["iou"],
        areas=area_table(labels, run.model_id),
        labelled=run.labelled,
        failed=run.failed,
        best_val_miou=trained.best_val_miou,
        seconds=seconds,
    )
