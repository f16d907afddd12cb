"""The optimiser and its learning-rate schedule: AdamW with a slower encoder, warm-up, poly or cosine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segray.recipe import OptimConfig

#: The poly schedule's power (DeepLab's), as every recipe has trained with.
POLY_POWER = 0.9


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; the encoder's parameters form a second group at ``encoder_lr_factor`` times ``lr``
    (a pretrained encoder wants smaller steps than a fresh decoder)."""
    enc: list[nn.Parameter] = []
    rest: list[nn.Parameter] = []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (enc if n.startswith("encoder.") else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * cfg.encoder_lr_factor})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> Any:
    """Linear warm-up, then poly or cosine decay, stepped per iteration (torch's own schedulers)."""
    from torch.optim import lr_scheduler as sch

    total = max(1, epochs * steps_per_epoch)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    rest = total - warmup
    main: sch.LRScheduler
    if cfg.schedule == "cosine":
        main = sch.CosineAnnealingLR(opt, T_max=rest, eta_min=0.0)
    else:
        main = sch.PolynomialLR(opt, total_iters=rest, power=POLY_POWER)
    if warmup <= 0:
        return main
    warm = sch.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return sch.SequentialLR(opt, [warm, main], milestones=[warmup])
