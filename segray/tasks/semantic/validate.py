"""Validation: one confusion matrix over the val split at each mask's own size, summed over workers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segray.labels import LabelMap
from segray.metrics import confusion_matrix
from segray.models.preprocessing import normalise
from segray.tasks.distributed import all_reduce


@torch.inference_mode()
def validate(
    model: nn.Module,
    loader: Any,
    label_map: LabelMap,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """Confusion matrix and mean cross-entropy over non-ignored pixels, at each mask's own size,
    summed over all workers. ``offsets``: per-class logit adjustment, as the export folds it in."""
    c = label_map.num_classes
    model.eval()
    cm = torch.zeros(c, c, dtype=torch.int64, device=device)
    loss = torch.zeros(2, dtype=torch.float64, device=device)
    for images, masks in loader:
        x = normalise(images.to(device), mean, std)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        if offsets is not None:
            logits = logits.float() + offsets.view(1, -1, 1, 1)
        for i, m in enumerate(masks):
            m = m.to(device)
            up = F.interpolate(logits[i : i + 1].float(), size=m.shape, mode="bilinear", align_corners=False)
            cm += confusion_matrix(up.argmax(dim=1)[0], m, c)
            valid = int(((m >= 0) & (m < c)).sum())
            if valid:
                loss[0] += F.cross_entropy(up, m[None], ignore_index=label_map.ignore_index, reduction="sum").double()
                loss[1] += valid
    all_reduce(cm)
    all_reduce(loss)
    model.train()
    return cm, float(loss[0] / loss[1]) if loss[1] > 0 else float("nan")
