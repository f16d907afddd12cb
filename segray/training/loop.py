"""The per-worker training function that Ray Train's ``TorchTrainer`` runs on every worker.

Each epoch: train on this worker's shard, validate on this worker's share of the val split (one
confusion matrix, summed over workers), report metrics through the session with a checkpoint from
rank 0 (the best by val mIoU plus the latest are kept), redraw the curves. A restarted worker
group (``FailureConfig``) or a rerun of the same command finds the latest checkpoint through the
session and continues at the next epoch. The same loop runs as one worker without Ray through
``session.LocalSession`` (``segray train --no-ray``). The parts live beside it: the loss in
``losses.py``, the optimiser in ``optim.py``, validation in ``validate.py``, the steps both training loops
share (worker set-up, optimiser steps, checkpoint reports) in ``epoch.py``.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.metrics import scores
from segray.models.precision import amp_dtype as amp_dtype_for
from segray.models.preprocessing import normalise, pixel_stats
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.curves import write_curves
from segray.training.epoch import Stepper, epochs_this_run, report_epoch, seed_epoch, start_worker
from segray.training.logit_adjust import head_conv, logit_offsets
from segray.training.losses import SegLoss
from segray.training.session import CHECKPOINT_SCORE, RaySession, Session, checkpoint_score
from segray.training.validate import all_reduce, is_validation_epoch, validate

log = logging.getLogger("segray.train")

#: What each epoch leaves in the checkpoint's history (curves, summaries, a resumed run's record).
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_miou", "epoch_seconds", "train_height", "train_width")


@dataclass
class Data:
    """A worker's loaders: the training shard (rebuilt when progressive resizing changes scale) and val."""

    cfg: TrainConfig
    train_ds: Any
    sampler: Any
    transforms: dict[float, Any]
    val_loader: Any
    loader: Any = None

    def loader_for(self, epoch: int) -> Any:
        from torch.utils.data import DataLoader

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


def make_data(
    cfg: TrainConfig, label_map: LabelMap, pairs: tuple[list[Pair], list[Pair]], rank: int, world: int
) -> Data:
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from segray.training.augment import train_transform
    from segray.training.data import PairDataset, collate_val

    h, w = cfg.model.height, cfg.model.width
    scales = {1.0, *(scale for _, scale in cfg.augment.stages())}
    transforms = {s: train_transform(cfg.augment, h, w, label_map.ignore_index, factor=s) for s in scales}
    train_ds = PairDataset(pairs[0], label_map, h, w, train=True, cache=cfg.data.cache)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed
    )
    # Validation: a plain slice per worker (no padding, unlike DistributedSampler), so every val
    # frame enters the summed confusion matrix exactly once.
    val_ds = Subset(
        PairDataset(pairs[1], label_map, h, w, train=False, cache=cfg.data.cache), range(rank, len(pairs[1]), world)
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.run.val_batch_size, collate_fn=collate_val, num_workers=0)
    return Data(cfg, train_ds, sampler, transforms, val_loader)


def load_start(
    cfg: TrainConfig, label_map: LabelMap, session: Session, scratch: list[str]
) -> tuple[Any, dict[str, Any], str | None]:
    """(model, checkpoint state, checkpoint folder): the latest checkpoint's, or the recipe's start."""
    from segray.training.init import initial_model, model_kwargs

    checkpoint = session.checkpoint()
    if checkpoint is None:
        return initial_model(cfg.model, label_map, seed=cfg.run.seed), {}, None
    from segray.models import build_model

    folder = tempfile.mkdtemp(prefix="segray-resume-")
    scratch.append(folder)  # removed however the loop ends
    checkpoint.to_directory(folder)
    model = build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **model_kwargs(cfg.model))
    model.load_state_dict(ckpt_io.load_model_weights(folder))
    return model, ckpt_io.load_state(folder), folder


def train_loop(config: dict[str, Any], session: Session | None = None) -> None:
    """Ray Train worker entry point; ``config`` holds the recipe, label map and pair lists as plain data.

    ``session``: where the loop runs; Ray Train's worker when None (``TorchTrainer`` passes only
    ``config``), a ``LocalSession`` for one worker in this process without Ray.
    """
    scratch: list[str] = []
    try:
        _train(config, session or RaySession(), scratch)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _train(config: dict[str, Any], session: Session, scratch: list[str]) -> None:
    """Set up, then per epoch: train, validate, report with a checkpoint, redraw the curves."""
    w = _set_up(config, session, scratch)
    for epoch in range(w.start, w.stop):
        t0 = time.monotonic()
        loss_sum, train_hw = _train_epoch(w, epoch)
        train_seconds = time.monotonic() - t0
        all_reduce(loss_sum)
        cm, val_loss, s = _validate_epoch(w, epoch)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": w.stepper.step,
            "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            "val_loss": val_loss,
            "val_miou": s["miou"],
            CHECKPOINT_SCORE: checkpoint_score(s["miou"]),
            "val_pixel_accuracy": s["pixel_accuracy"],
            "val_mean_dice": s["mean_dice"],
            "lr": w.stepper.lr,
            "train_seconds": train_seconds,
            "train_height": train_hw[0],  # the crops' size: smaller in progressive resizing's early epochs
            "train_width": train_hw[1],
            "epoch_seconds": time.monotonic() - t0,
            **{f"val_iou_{n}": v for n, v in s["iou"].items()},
        }
        w.history.append({k: metrics[k] for k in HISTORY_KEYS})
        rank0 = session.rank == 0
        if rank0:
            log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f (%.0f s)", epoch + 1, w.cfg.run.epochs,
                     metrics["train_loss"], val_loss, s["miou"], metrics["epoch_seconds"])  # fmt: skip
        state = _checkpoint_state(w, epoch, metrics, cm) if rank0 else None
        report_epoch(session, w.model, w.stepper.opt, metrics, state, epoch + 1)
        if rank0:
            write_curves(w.cfg.run_uri, w.history, w.cfg.name)


@dataclass
class _Worker:
    """A worker's training set-up, built once and carried through the epochs."""

    cfg: TrainConfig
    label_map: LabelMap
    session: Session
    #: The bare module (validated and checkpointed) and what trains (DDP-wrapped under Ray Train).
    model: Any
    ddp_model: Any
    data: Data
    stepper: Stepper
    loss_fn: SegLoss
    #: Logit adjustment's per-class offsets, applied in validation only; None without it.
    offsets: torch.Tensor | None
    mean: torch.Tensor
    std: torch.Tensor
    amp_dtype: torch.dtype | None
    history: list[dict[str, Any]]
    #: Epochs done before this run, and the epoch this run stops after.
    start: int
    stop: int


def _set_up(config: dict[str, Any], session: Session, scratch: list[str]) -> _Worker:
    """Model, loaders, optimiser and loss, from the latest checkpoint if there is one."""
    from segray.training.init import freeze_unused

    cfg, label_map = TrainConfig.from_dict(config["cfg"]), LabelMap.from_dict(config["label_map"])
    pairs = ([Pair(*p) for p in config["train_pairs"]], [Pair(*p) for p in config["val_pairs"]])
    rank, device = session.rank, session.device
    start_worker(cfg)
    model, state, ckpt_dir = load_start(cfg, label_map, session, scratch)
    model.to(device)
    crop = (cfg.augment.crop_height or cfg.model.height, cfg.augment.crop_width or cfg.model.width)
    unused = freeze_unused(model, *crop, device)
    if rank == 0 and unused:
        log.info("froze %d parameters no forward pass reaches (e.g. %s)", len(unused), unused[0])
    ddp_model = session.prepare_model(model.to(memory_format=torch.channels_last))  # type: ignore[call-overload]
    data = make_data(cfg, label_map, pairs, rank, session.world)
    start = int(state.get("epoch", 0))
    steps_per_epoch = max(1, len(data.loader_for(start)))
    # Fixed crop and val sizes: the fastest kernels are found once.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    amp_dtype = amp_dtype_for(device, cfg.run.amp)
    stepper = Stepper.create(model, cfg, steps_per_epoch, amp_dtype, ckpt_dir, state)
    loss_fn = SegLoss(cfg.loss, label_map).to(device)
    offsets = logit_offsets(cfg.class_weights, cfg.export.logit_adjustment)
    if offsets is not None:
        head_conv(model, label_map.num_classes)  # the export will fold the offsets there: fail now, not then
        offsets = offsets.to(device)
    mean, std = pixel_stats(config["mean"], config["std"], device)
    history: list[dict[str, Any]] = list(state.get("history", []))
    stop = epochs_this_run(cfg, start)
    if rank == 0:
        what = f"resuming from epoch {start}'s checkpoint" if state else "starting"
        log.info("rank 0 of %d: %s; epochs %d-%d of %d; %d train / %d val pairs, %d steps/epoch, device %s, amp %s",
                 session.world, what, start + 1, stop, cfg.run.epochs, len(pairs[0]), len(pairs[1]),
                 steps_per_epoch, device, amp_dtype)  # fmt: skip
        if cfg.augment.small_epochs > start:
            log.info("epochs 1-%d train at %s of the model size", cfg.augment.small_epochs, cfg.augment.small_scale)
    return _Worker(
        cfg, label_map, session, model, ddp_model, data, stepper, loss_fn, offsets, mean, std, amp_dtype, history,
        start, stop,
    )  # fmt: skip


def _train_epoch(w: _Worker, epoch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """One pass over this worker's shard: (summed loss and frame count, to be all-reduced; the crops' size)."""
    rank, device = w.session.rank, w.session.device
    w.data.sampler.set_epoch(epoch)
    loader = w.data.loader_for(epoch)
    seed_epoch(w.cfg, rank, epoch)
    w.ddp_model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    train_hw = (0, 0)
    for images, masks in loader:
        train_hw = (int(images.shape[-2]), int(images.shape[-1]))
        x = normalise(images.to(device, non_blocking=True), w.mean, w.std)
        with torch.autocast(device.type, dtype=w.amp_dtype or torch.float32, enabled=w.amp_dtype is not None):
            logits = w.ddp_model(x)
        loss = w.loss_fn(logits, masks.to(device, non_blocking=True))
        w.stepper.backward(loss, epoch + 1, rank)
        loss_sum += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64, device=device)
        if w.stepper.should_log(rank):
            log.info("epoch %d step %d loss %.4f lr %.2e", epoch + 1, w.stepper.step, loss.item(), w.stepper.lr)
    return loss_sum, train_hw


def _validate_epoch(w: _Worker, epoch: int) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """(summed confusion matrix, val loss, scores) on a validation epoch; NaN scores on the others."""
    if is_validation_epoch(epoch + 1, w.cfg.run.epochs, w.cfg.run.val_every):
        # The bare module: val shards may differ by a batch, and DDP forward must not wait on a collective.
        device, names = w.session.device, w.label_map.names
        cm, val_loss = validate(w.model, w.data.val_loader, w.label_map, w.mean, w.std, device, w.amp_dtype, w.offsets)
        return cm, val_loss, scores(cm.cpu().numpy(), names)
    nan = float("nan")  # not scored: never kept as the best (checkpoint_score -1)
    s = {"miou": nan, "pixel_accuracy": nan, "mean_dice": nan, "iou": dict.fromkeys(w.label_map.names, nan)}
    return torch.zeros(0), nan, s


def _checkpoint_state(w: _Worker, epoch: int, metrics: dict[str, Any], cm: torch.Tensor) -> dict[str, Any]:
    """What rank 0's checkpoint records beside the weights and optimiser (checkpoint.py's ``state.json``)."""
    return {"epoch": epoch + 1, **w.stepper.state(), "history": w.history, "metrics": metrics,
            "val_confusion": cm.cpu().tolist(), "arch": w.cfg.model.arch, "encoder": w.cfg.model.encoder,
            "label_map": w.label_map.to_dict()}  # fmt: skip
