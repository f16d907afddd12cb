"""An exponential moving average of the weights (``optim.ema_decay``), on torch's ``AveragedModel``.

Why: the CPU recipes step at batch 4, so the weights at the end of an epoch carry the last few
steps' noise, and BatchNorm's running statistics (momentum 0.1) cover only about the last 10
batches; consecutive checkpoints of one run swing by a point or more of val mIoU. An average over
a few hundred steps of both (``use_buffers``) smooths that without changing what training does:
the optimiser keeps stepping the raw weights, and the average is what is validated, kept as the
checkpoint's ``model.safetensors`` and exported.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

#: The raw weights the optimiser steps, beside the average (``model.safetensors``) in a checkpoint.
TRAINING_WEIGHTS = "training_weights.safetensors"


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """A copy of ``model`` that ``update_parameters(model)`` moves towards it after each step."""
    return AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True)


def ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """``AveragedModel``'s update for one group of tensors: the first update copies (torch does
    that), update n >= 1 keeps ``min(decay, (1 + n) / (10 + n))`` of the average, so early on
    the average follows the fast-changing weights of a from-scratch start (timm's warm-up)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        k = float(n)
        d = min(decay, (1.0 + k) / (10.0 + k))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (BatchNorm's num_batches_tracked): the model's own count
            torch._foreach_copy_(averaged, current)

    return update
