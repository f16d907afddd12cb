"""Post-hoc logit adjustment for class-weighted training.

Cross-entropy with class weights ``w`` trains the logits toward ``log p(c|x) + log w_c``: the
up-weighted thin classes (sign, pedestrian) are then over-predicted, and their IoU pays for the
false positives. Subtracting ``alpha * log w_c`` afterwards undoes part of that bias (Menon et al.
2021, "Long-tail learning via logit adjustment"); ``alpha`` = 1 is the exact correction for a
calibrated model, smaller values keep some of the recall the weights bought. Validation applies the
offsets to the logits, and the export folds them into the segmentation head's bias, so the artifact
format is unchanged and labelling pays nothing for them.
"""

from __future__ import annotations

import torch
from torch import nn


def logit_offsets(class_weights: list[float] | None, alpha: float) -> torch.Tensor | None:
    """``-alpha * log(w)`` per class, or None when there is nothing to adjust."""
    if not alpha or not class_weights:
        return None
    w = torch.tensor(class_weights, dtype=torch.float32)
    if (w <= 0).any():
        raise ValueError("export.logit_adjustment needs positive class weights on the loss's ce term")
    return -alpha * w.log()


def head_conv(model: nn.Module, num_classes: int) -> nn.Conv2d:
    """The model's last convolution with one output per class and a bias (smp's segmentation head,
    torchvision FCN's classifier). Only resizing follows it, which commutes with a per-class offset."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes]
    if not convs or convs[-1].bias is None:
        raise ValueError(f"{type(model).__name__}: no final {num_classes}-class convolution with a bias to adjust")
    return convs[-1]


@torch.no_grad()
def fold_offsets(model: nn.Module, offsets: torch.Tensor) -> None:
    """Add per-class ``offsets`` to the head's bias: the model then outputs ``logits + offsets``."""
    bias = head_conv(model, offsets.numel()).bias
    assert bias is not None  # head_conv returns only a convolution with a bias
    bias.add_(offsets.to(bias))


#: Offset steps tried for each class in each sweep of :func:`fit_offsets`.
FIT_GRID = (-0.8, -0.4, -0.2, -0.1, 0.1, 0.2, 0.4, 0.8)


def _miou(target: torch.Tensor, pred: torch.Tensor, c: int) -> float:
    """Validation's own figure: one confusion matrix, :func:`scores` over it."""
    from segray.metrics import confusion_matrix, scores

    return float(scores(confusion_matrix(pred, target, c).numpy())["miou"])


@torch.no_grad()
def fit_offsets(
    logits: torch.Tensor, target: torch.Tensor, sweeps: int = 2, grid: tuple[float, ...] = FIT_GRID
) -> tuple[torch.Tensor, float, float]:
    """Per-class offsets that raise the mIoU of ``argmax(logits + offsets)`` against ``target``.

    ``logits``: (pixels, C) of labelled pixels only; ``target``: (pixels,) class ids. Coordinate
    ascent: each sweep tries every ``grid`` step on each class in turn and keeps a step only when the
    mIoU (one confusion matrix, as validation computes it) rises. Moving one class's offset only
    decides between that class and the best of the others, so each try is one comparison, not an
    argmax over all classes. Returns (offsets, mIoU before, mIoU after).
    """
    c = logits.shape[1]
    logits = logits.float()
    off = torch.zeros(c)
    before = best = _miou(target, logits.argmax(1), c)
    for _ in range(sweeps):
        moved = False
        for k in range(c):
            others = logits + off
            lk = others[:, k].clone()
            others[:, k] = float("-inf")
            rival, rival_id = others.max(1)
            del others
            step = 0.0
            for d in grid:
                s = _miou(target, torch.where(lk + d > rival, k, rival_id), c)
                if s > best + 1e-7:
                    best, step = s, d
            if step:
                off[k] += step
                moved = True
        if not moved:
            break
    return off, before, best
