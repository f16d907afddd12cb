"""Confusion-matrix metrics: one matrix accumulated over a whole split, figures derived from it.

Per-frame IoUs averaged would weight a frame with ten pole pixels like one with ten thousand; one
matrix over the split is the standard (Cityscapes, CamVid) way. Ignored pixels (the label map's
ignore id, or any id outside ``0..C-1``) never enter the matrix. A class with no ground-truth and
no predicted pixel has an undefined IoU (NaN) and is left out of the mean.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def confusion_matrix(pred: Any, target: Any, num_classes: int) -> Any:
    """(C, C) int64 counts, rows = ground truth, columns = prediction; numpy or torch in, same out.

    Target pixels outside ``0..C-1`` (the ignore id) are dropped.
    """
    torch = sys.modules.get("torch")  # numpy-only callers never import torch
    if torch is not None and isinstance(pred, torch.Tensor):  # stays on its device (bincount works on CUDA)
        t = target.reshape(-1).long()
        p = pred.reshape(-1).long()
        keep = (t >= 0) & (t < num_classes)
        idx = t[keep] * num_classes + p[keep]
        return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    t = np.asarray(target).reshape(-1).astype(np.int64)
    p = np.asarray(pred).reshape(-1).astype(np.int64)
    keep = (t >= 0) & (t < num_classes)
    idx = t[keep] * num_classes + p[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray, names: list[str] | None = None) -> dict[str, Any]:
    """Per-class IoU and Dice, mIoU and mean Dice (NaN classes excluded), pixel accuracy."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(gt + pr > 0, 2 * tp / (gt + pr), np.nan)
    total = cm.sum()
    names = names or [str(i) for i in range(len(tp))]
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
        "iou": {n: float(v) for n, v in zip(names, iou, strict=True)},
        "dice": {n: float(v) for n, v in zip(names, dice, strict=True)},
        "gt_pixels": {n: int(v) for n, v in zip(names, gt, strict=True)},
    }


def is_scored(metrics: dict[str, Any]) -> bool:
    """A report or history entry of a validated epoch (with ``run.val_every > 1`` the epochs between
    validations carry NaN, which Python's ``max`` cannot order; Ray Train's checkpoint record gives
    it back as None)."""
    v = metrics.get("val_miou")
    return isinstance(v, (int, float)) and bool(np.isfinite(v))
