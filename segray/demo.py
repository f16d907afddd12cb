"""The embedded default: ``segray demo`` trains a small model and labels frames it has not seen.

Needs no cloud account, no dataset and no download. It synthesises street-like frames with their
ground truth (:mod:`segray.datasets.synthetic`), trains a UNet on some of them through the training
code on Ray Train (a short recipe, :data:`DEMO_RECIPE`), labels the others with the labelling job,
scores the masks the job wrote against the ground truth, and writes a picture of frame | ground
truth | predicted mask.
Every step is the code a real run uses; only the frames are made up.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from segray import progress
from segray.datasets.synthetic import STREET, png_bytes, write_street_dataset

if TYPE_CHECKING:
    from segray.outputs.report import AreaRow

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
    from segray.metrics import confusion_matrix, scores
    from segray.outputs.masks import mask_key

    k = STREET.num_classes
    cm = np.zeros((k, k), np.int64)
    strips = []
    for i, frame in enumerate(sorted((data / split).rglob("*.png"))):
        rel = frame.relative_to(data / split).as_posix()
        truth = read_mask(str(data / f"{split}annot" / rel))
        pred = read_mask(str(Path(labels, mask_key(rel))))
        cm += confusion_matrix(pred, truth, k)
        if i < overlays:
            bgr = cv2.imread(str(frame))
            if bgr is None:
                raise ValueError(f"could not read {frame}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            strips.append(overlay_strip(rgb, truth, pred, STREET))
    return scores(cm, [c.name for c in STREET.classes]), strips


@contextlib.contextmanager
def _quiet_segray_logs() -> Iterator[None]:
    """segray's INFO logs held back while the demo runs (unless ``-v``): the demo says what each step
    does itself and each long step shows its progress, so the whole output fits on one screen."""
    logger = logging.getLogger("segray")
    before = logger.level
    if progress.SETTINGS.verbose <= 0:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


def run_demo(
    folder: str | Path,
    n_train: int = 64,
    n_val: int = 8,
    n_test: int = 16,
    epochs: int | None = None,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Synthesise, train, label the held-out frames, score the job's masks; needs Ray initialised."""
    with _quiet_segray_logs():
        return _run_demo(folder, n_train, n_val, n_test, epochs, say)


def _run_demo(
    folder: str | Path, n_train: int, n_val: int, n_test: int, epochs: int | None, say: Callable[[str], None]
) -> DemoResult:
    from segray.labelling.job import LabelOptions, run_label_job
    from segray.outputs.report import area_table
    from segray.recipe import TrainConfig
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
    overlay.write_bytes(png_bytes(np.concatenate(strips, axis=0)))
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
        best_val_miou=trained.best_score,
        seconds=seconds,
    )
