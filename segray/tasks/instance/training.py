"""A Mask R-CNN training worker: loaders, the summed Mask R-CNN losses, COCO validation.

Validation scores this worker's share of the val split, gathers the shares and scores them once
with the COCO protocol (mask AP, AP50, AP75, per-frame counts; see :mod:`segray.instance_metrics`).
AMP (``run.amp``) applies on a GPU only. Mask R-CNN sums its own losses (RPN objectness and
boxes, box classification and regression, mask); ``loss:`` terms do not apply.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from segray.datasets.instances import InstanceFrame
from segray.instance_metrics import InstanceScorer
from segray.labels import LabelMap
from segray.tasks.base import TaskWorker
from segray.tasks.distributed import gather

if TYPE_CHECKING:
    from torch import nn

    from segray.recipe import TrainConfig


#: Training frames whose batch statistics replace the BatchNorm running statistics before validation.
PRECISE_BN_FRAMES = 64


@torch.no_grad()
def precise_bn(model: torch.nn.Module, dataset: Any, batch_size: int, device: torch.device) -> None:
    """Recompute BatchNorm running statistics as the plain average over the first training frames
    (detectron2's PreciseBN). A backbone trained from scratch changes faster than torchvision's
    BatchNorm momentum (0.01 in MobileNetV3) follows, and eval-mode features built on those lagging
    statistics score every object as background. Every worker uses the same frames."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [b.momentum for b in bns]
    was_training = model.training
    model.eval()
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average
        b.train()
    rcnn: Any = model  # torchvision's Mask R-CNN: its own transform, then the backbone
    n = min(PRECISE_BN_FRAMES, len(dataset))
    for i in range(0, n, batch_size):
        images, _ = rcnn.transform([dataset[j][0].to(device) for j in range(i, min(n, i + batch_size))])
        rcnn.backbone(images.tensors)
    for b, m in zip(bns, momenta, strict=True):
        b.momentum = m
    model.train(was_training)


@torch.inference_mode()
def validate_instances(
    model: torch.nn.Module, loader: Any, names: list[str], device: torch.device, amp_dtype: torch.dtype | None
) -> dict[str, Any]:
    """COCO mask AP over the whole val split (every worker's share gathered), at the model size."""
    from segray.models.maskrcnn import to_class_index

    model.eval()
    scorer = InstanceScorer(names)
    for images, targets in loader:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = model([im.to(device) for im in images])
        for inst, out in zip(targets, outputs, strict=True):
            scorer.add(
                inst.masks,
                inst.classes,
                inst.crowd,
                (out["masks"][:, 0] > 0.5).cpu().numpy(),
                to_class_index(out["labels"]).cpu().numpy(),
                out["scores"].float().cpu().numpy(),
            )
    model.train()
    return InstanceScorer.merged(names, gather(scorer.state())).result()


class InstanceWorker(TaskWorker):
    """A worker's training shard and val share of instance frames."""

    def __init__(
        self, cfg: TrainConfig, label_map: LabelMap, plan: dict[str, Any], model: nn.Module, rank: int, world: int,
        device: torch.device,
    ) -> None:  # fmt: skip
        from torch.utils.data import DataLoader, DistributedSampler, Subset

        from segray.tasks.instance.data import InstanceDataset, collate

        self.cfg, self.label_map, self.device = cfg, label_map, device
        train = [InstanceFrame(*f) for f in plan["train"]]
        val = [InstanceFrame(*f) for f in plan["val"]]
        size = (cfg.model.height, cfg.model.width)
        n = label_map.num_classes
        self.train_ds = InstanceDataset(train, n, size, cfg.augment, cfg.data.cache)
        self.sampler: DistributedSampler[Any] = DistributedSampler(
            self.train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed
        )
        self.loader = DataLoader(
            self.train_ds,
            batch_size=cfg.run.batch_size,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=cfg.data.loader_workers,
            persistent_workers=cfg.data.loader_workers > 0,
            drop_last=math.ceil(len(self.train_ds) / world) > cfg.run.batch_size,  # BatchNorm refuses a batch of one
        )
        val_ds = Subset(InstanceDataset(val, n, size, None, cfg.data.cache), range(rank, len(val), world))
        self.val_loader = DataLoader(val_ds, batch_size=cfg.run.val_batch_size, collate_fn=collate, num_workers=0)

    def loader_for(self, epoch: int) -> Any:
        self.sampler.set_epoch(epoch)
        return self.loader

    def step(self, model: nn.Module, batch: Any, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, int, str]:
        from segray.tasks.instance.data import to_target

        images, instances = batch
        targets = [{k: v.to(self.device) for k, v in to_target(inst).items()} for inst in instances]
        with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            losses = model([im.to(self.device, non_blocking=True) for im in images], targets)
        loss: torch.Tensor = sum(losses.values())  # type: ignore[assignment]
        parts = ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
        return loss, len(images), f"({parts})"

    def validate(self, model: nn.Module, amp_dtype: torch.dtype | None) -> tuple[dict[str, Any], dict[str, Any]]:
        precise_bn(model, self.train_ds, self.cfg.run.batch_size, self.device)  # the checkpoint keeps these
        s = validate_instances(model, self.val_loader, self.label_map.names, self.device, amp_dtype)
        return _val_metrics(s), {}

    def not_validated(self) -> dict[str, Any]:
        nan = float("nan")
        per_class = {n: {"ap": nan, "ap50": nan, "ap75": nan} for n in self.label_map.names}
        return _val_metrics(
            {"ap": nan, "ap50": nan, "ap75": nan, "exact_count_fraction": nan, "count_mae": nan, "per_class": per_class}
        )


def _val_metrics(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "val_loss": float("nan"),  # Mask R-CNN has no loss in eval mode
        "val_mask_ap": s["ap"],
        "val_mask_ap50": s["ap50"],
        "val_mask_ap75": s["ap75"],
        "val_exact_count_fraction": s["exact_count_fraction"],
        "val_count_mae": s["count_mae"],
        **{f"val_ap_{n}": v["ap"] for n, v in s["per_class"].items()},
        **{f"val_ap50_{n}": v["ap50"] for n, v in s["per_class"].items()},
    }
