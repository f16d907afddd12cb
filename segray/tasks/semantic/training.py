"""A semantic model's training worker: loaders (with progressive resizing), the loss, validation.

Validation sums one confusion matrix over every worker's share of the val split and scores it
(mIoU, pixel accuracy, mean Dice, IoU per class); logit adjustment's offsets apply there, as the
export folds them into the head.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import torch

from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.losses import SegLoss
from segray.metrics import scores
from segray.models.preprocessing import normalise, pixel_stats
from segray.tasks.base import TaskWorker
from segray.tasks.semantic.logit_adjust import head_conv, logit_offsets
from segray.tasks.semantic.validate import validate

if TYPE_CHECKING:
    from torch import nn

    from segray.recipe import TrainConfig

log = logging.getLogger("segray.train")


class SemanticWorker(TaskWorker):
    """A worker's training shard (rebuilt when progressive resizing changes scale), val share and loss."""

    def __init__(
        self, cfg: TrainConfig, label_map: LabelMap, plan: dict[str, Any], model: nn.Module, rank: int, world: int,
        device: torch.device,
    ) -> None:  # fmt: skip
        from torch.utils.data import DataLoader, Subset

        from segray.tasks.semantic.data import collate_val
        from segray.tasks.semantic.init import freeze_unused

        self.cfg, self.label_map, self.device = cfg, label_map, device
        self.rank, self.world = rank, world
        scenes = cfg.data.from_scenes
        crop = (cfg.augment.crop_height or cfg.model.height, cfg.augment.crop_width or cfg.model.width)
        if scenes:
            crop = (cfg.model.height, cfg.model.width)  # scene chips are of the model size
        unused = freeze_unused(model, *crop, device, channels=len(cfg.data.bands or []) if scenes else 3)
        if rank == 0 and unused:
            log.info("froze %d parameters no forward pass reaches (e.g. %s)", len(unused), unused[0])
        model.to(memory_format=torch.channels_last)  # in place: the module DDP then wraps
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop and val sizes: kernels found once
        val_ds = self._scene_data(plan) if scenes else self._pair_data(plan)
        # Validation: a plain slice per worker (no padding, unlike DistributedSampler), so every val
        # frame enters the summed confusion matrix exactly once.
        val_share = Subset(val_ds, range(rank, len(val_ds), world))
        self.val_loader = DataLoader(
            val_share, batch_size=cfg.run.val_batch_size, collate_fn=collate_val, num_workers=0
        )
        self.loader: Any = None
        self.loss_fn = SegLoss(cfg.loss, label_map).to(device)
        offsets = logit_offsets(cfg.class_weights, cfg.export.logit_adjustment)
        if offsets is not None:
            head_conv(model, label_map.num_classes)  # the export will fold the offsets there: fail now, not then
            offsets = offsets.to(device)
        #: Logit adjustment's per-class offsets, applied in validation only; None without it.
        self.offsets = offsets
        if scenes:  # band statistics in the scenes' raw units (resolved by the plan)
            stats = cfg.data.band_stats
            if not isinstance(stats, dict):
                raise ValueError(f"data.band_stats {stats!r} was not resolved to mean and std before training")
            self.mean, self.std = pixel_stats(stats["mean"], stats["std"], device, scale=1.0)
        else:
            self.mean, self.std = pixel_stats(plan["mean"], plan["std"], device)
        self.train_hw = (0, 0)
        if rank == 0 and cfg.augment.small_epochs > int(plan.get("start", 0)):
            log.info("epochs 1-%d train at %s of the model size", cfg.augment.small_epochs, cfg.augment.small_scale)

    def _pair_data(self, plan: dict[str, Any]) -> Any:
        """Image/mask pairs: the training set (sharded by a DistributedSampler); returns the val set."""
        from torch.utils.data import DistributedSampler

        from segray.tasks.augment import train_transform
        from segray.tasks.semantic.data import PairDataset

        cfg, ignore = self.cfg, self.label_map.ignore_index
        h, w = cfg.model.height, cfg.model.width
        scales = {1.0, *(scale for _, scale in cfg.augment.stages())}
        self.transforms = {s: train_transform(cfg.augment, h, w, ignore, factor=s) for s in scales}
        train, val = [Pair(*p) for p in plan["train"]], [Pair(*p) for p in plan["val"]]
        self.train_ds: Any = PairDataset(train, self.label_map, h, w, train=True, cache=cfg.data.cache)
        self.sampler: DistributedSampler[Any] | None = DistributedSampler(
            self.train_ds, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.run.seed
        )
        return PairDataset(val, self.label_map, h, w, train=False, cache=cfg.data.cache)

    def _scene_data(self, plan: dict[str, Any]) -> Any:
        """Scene chips: the scenes read into this worker's memory; returns the val chips."""
        from segray.tasks.semantic.scenes import worker_datasets

        self.train_ds, val = worker_datasets(self.cfg, plan)
        self.sampler = None
        return val

    def loader_for(self, epoch: int) -> Any:
        from torch.utils.data import DataLoader

        if self.sampler is None:  # scene chips: this epoch's draw, this worker's share
            self.train_ds.set_epoch(epoch, self.rank, self.world)
            return DataLoader(
                self.train_ds,
                batch_size=self.cfg.run.batch_size,
                num_workers=self.cfg.data.loader_workers,
                drop_last=len(self.train_ds) > self.cfg.run.batch_size,  # BatchNorm refuses a final batch of one
                pin_memory=torch.cuda.is_available(),
            )
        self.sampler.set_epoch(epoch)
        transform = self.transforms[self.cfg.augment.scale_at(epoch)]
        if self.loader is None or self.train_ds.transform is not transform:
            self.train_ds.transform = transform  # loader processes hold a copy: a new loader then
            per_worker = math.ceil(len(self.train_ds) / self.sampler.num_replicas)
            self.loader = DataLoader(
                self.train_ds,
                batch_size=self.cfg.run.batch_size,
                sampler=self.sampler,
                num_workers=self.cfg.data.loader_workers,
                persistent_workers=self.cfg.data.loader_workers > 0,
                drop_last=per_worker > self.cfg.run.batch_size,  # BatchNorm refuses a final batch of one
                pin_memory=torch.cuda.is_available(),
            )
        return self.loader

    def step(self, model: nn.Module, batch: Any, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, int, str]:
        images, masks = batch
        self.train_hw = (int(images.shape[-2]), int(images.shape[-1]))
        x = normalise(images.to(self.device, non_blocking=True), self.mean, self.std)
        with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        return self.loss_fn(logits, masks.to(self.device, non_blocking=True)), len(images), ""

    def train_metrics(self) -> dict[str, Any]:
        # The crops' size: smaller in progressive resizing's early epochs.
        return {"train_height": self.train_hw[0], "train_width": self.train_hw[1]}

    def validate(self, model: nn.Module, amp_dtype: torch.dtype | None) -> tuple[dict[str, Any], dict[str, Any]]:
        cm, val_loss = validate(
            model, self.val_loader, self.label_map, self.mean, self.std, self.device, amp_dtype, self.offsets
        )
        return _val_metrics(val_loss, scores(cm.cpu().numpy(), self.label_map.names)), {
            "val_confusion": cm.cpu().tolist()
        }

    def not_validated(self) -> dict[str, Any]:
        nan = float("nan")
        iou = dict.fromkeys(self.label_map.names, nan)
        return _val_metrics(nan, {"miou": nan, "pixel_accuracy": nan, "mean_dice": nan, "iou": iou})


def _val_metrics(val_loss: float, s: dict[str, Any]) -> dict[str, Any]:
    return {
        "val_loss": val_loss,
        "val_miou": s["miou"],
        "val_pixel_accuracy": s["pixel_accuracy"],
        "val_mean_dice": s["mean_dice"],
        **{f"val_iou_{n}": v for n, v in s["iou"].items()},
    }
