"""The per-worker training function that Ray Train's ``TorchTrainer`` runs on every worker.

Each epoch: train on this worker's shard, validate on this worker's share of the val split (one
confusion matrix, summed over workers), report metrics through ``ray.train.report`` with a
checkpoint from rank 0 (Ray keeps the best by val mIoU plus the latest), redraw the curves. A
restarted worker group (``FailureConfig``) or a rerun of the same command finds the latest
checkpoint through ``ray.train.get_checkpoint()`` and continues at the next epoch. The same loop
runs as one worker without Ray through ``session.LocalSession`` (``segray train --no-ray``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segray import storage
from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.deep_supervision import AUX_FILE, DeepSupervision
from segray.training.ema import TRAINING_WEIGHTS, ema_model
from segray.training.logit_adjust import head_conv, logit_offsets
from segray.training.metrics import scores
from segray.training.session import RaySession, Session

log = logging.getLogger("segray.train")

CURVES = "curves.png"
#: What each epoch leaves in the checkpoint's history (curves, summaries, a resumed run's record).
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_miou", "epoch_seconds", "train_height", "train_width")


def freeze_unused(model: nn.Module, height: int, width: int, device: torch.device) -> list[str]:
    """Freeze parameters that one forward/backward pass does not reach, and name them.

    smp's PSPNet builds all encoder stages but uses only the first ``encoder_depth``; DDP then
    waits forever for their gradients ("Expected to have finished reduction"). Freezing them is
    cheaper than ``find_unused_parameters=True`` (no graph walk each step) and works for any
    architecture the registry gains. The pass runs in eval mode, so BatchNorm statistics are untouched.
    """
    was_training = model.training
    model.eval()
    out = model(torch.zeros(2, 3, height, width, device=device))
    out.float().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, extra: list[nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    """AdamW; the encoder's group runs at ``encoder_lr_factor``. ``extra`` (training-only heads)
    join the decoder's group, after the model's parameters, so a resumed optimizer lines up."""
    enc, rest = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (enc if n.startswith("encoder.") else rest).append(p)
    rest += list(extra or [])
    groups = [{"params": rest, "lr": cfg.optim.lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.optim.lr * cfg.optim.encoder_lr_factor})
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """Linear warm-up, then poly or cosine decay, stepped per iteration (torch's own schedulers)."""
    from torch.optim import lr_scheduler as sch

    total = max(1, cfg.run.epochs * steps_per_epoch)
    warmup = min(total - 1, round(cfg.optim.warmup_epochs * steps_per_epoch))
    rest = total - warmup
    if cfg.optim.schedule == "cosine":
        base = min(g["lr"] for g in opt.param_groups)
        main = sch.CosineAnnealingLR(opt, T_max=rest, eta_min=base * cfg.optim.min_lr_factor)
    else:
        main = sch.PolynomialLR(opt, total_iters=rest, power=cfg.optim.poly_power)
    if warmup <= 0:
        return main
    warm = sch.LinearLR(opt, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return sch.SequentialLR(opt, [warm, main], milestones=[warmup])


class SegLoss(nn.Module):
    """Cross-entropy with the ignore id (optionally class-weighted, optionally over the hard pixels
    only), plus optional Dice and Lovasz-softmax terms. ``epoch`` (1-based, set by the loop) turns
    the Lovasz term on at ``loss.lovasz_from_epoch``."""

    def __init__(self, cfg: TrainConfig, label_map: LabelMap) -> None:
        super().__init__()
        self.ignore = label_map.ignore_id if label_map.ignore_id is not None else -100
        weights = cfg.loss.class_weights
        if weights is not None and len(weights) != label_map.num_classes:
            raise ValueError(f"loss.class_weights has {len(weights)} values for {label_map.num_classes} classes")
        self.register_buffer("weight", torch.tensor(weights, dtype=torch.float32) if weights else None)
        self.opts = cfg.loss
        from segmentation_models_pytorch.losses import DiceLoss, LovaszLoss

        self.dice = DiceLoss("multiclass", ignore_index=self.ignore) if self.opts.dice_weight > 0 else None
        self.lovasz = LovaszLoss("multiclass", ignore_index=self.ignore) if self.opts.lovasz_weight > 0 else None
        self.epoch = 1

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # once: under AMP each term would otherwise copy the half logits
        if target.dim() == 4:  # soft targets: config validation has refused the other terms
            return self._soft_cross_entropy(logits, target)
        if self.opts.ohem_thresh is None:
            loss = F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore)
        else:
            loss = self._ohem(logits, target)
        if self.dice is not None:
            loss = loss + self.opts.dice_weight * self.dice(logits, target)
        if self.lovasz is not None and self.epoch >= self.opts.lovasz_from_epoch:
            loss = loss + self.opts.lovasz_weight * self.lovasz(*self._sample(logits, target))
        return loss

    def _soft_cross_entropy(self, logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against per-class shares (uint8, 255 = the whole pixel): each pixel counts
        by its labelled share, weighted per class, and the sum is divided by the total weight, so
        one-hot shares give exactly ``F.cross_entropy`` with ``weight`` and ``ignore_index``."""
        q = shares.float().div_(255.0)
        if self.weight is not None:
            q = q * self.weight.view(1, -1, 1, 1)
        # No labelled pixel in the batch: 0 / eps, a zero that keeps the graph (and no GPU sync).
        return -(q * F.log_softmax(logits, dim=1)).sum() / q.sum().clamp_min(1e-6)

    def _sample(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A random ``lovasz_pixels`` fraction of the batch's pixels, as a (1, C, k, 1) batch."""
        if self.opts.lovasz_pixels >= 1:
            return logits, target
        c = logits.shape[1]
        flat, labels = logits.permute(1, 0, 2, 3).reshape(c, -1), target.reshape(-1)
        k = max(1, int(self.opts.lovasz_pixels * labels.numel()))
        keep = torch.randperm(labels.numel(), device=labels.device)[:k]
        return flat[:, keep].view(1, c, -1, 1), labels[keep].view(1, -1, 1)

    def _ohem(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the hard pixels only: the easy ones become ignored, so
        ``F.cross_entropy`` normalises by the kept pixels' class weights as usual."""
        valid = (target >= 0) & (target < logits.shape[1])
        n_valid = int(valid.sum())
        if not n_valid:  # no labelled pixel in the batch: a zero that keeps the graph
            return logits.sum() * 0.0
        with torch.no_grad():
            p_true = logits.softmax(1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
            p_true = torch.where(valid, p_true, 2.0)  # ignored pixels are never kept
            kept = p_true < self.opts.ohem_thresh
            n_min = max(1, int(self.opts.ohem_min_kept * n_valid))
            if int(kept.sum()) < n_min:  # too few hard pixels: keep the n_min hardest
                kept = p_true <= p_true.flatten().kthvalue(n_min).values
            hard = torch.where(kept, target, self.ignore)
        return F.cross_entropy(logits, hard, weight=self.weight, ignore_index=self.ignore)


def _require_same_option(option: str, trained_with: bool, on: bool) -> None:
    """A resumed run must keep an option whose state its checkpoints hold (or lack) in their own file."""
    if trained_with != on:
        how, then = ("with", "with it set") if trained_with else ("without", "without it")
        raise ValueError(f"the run's checkpoints were trained {how} {option}: resume {then}")


def _require_same_value(option: str, trained_with: Any, value: Any) -> None:
    """A resumed run must keep a value its checkpoints' state depends on (None: not recorded, older runs)."""
    if trained_with is not None and trained_with != value:
        raise ValueError(
            f"the run's checkpoints were trained with {option}={trained_with}: resume with it (not {value})"
        )


def _deep_supervision(
    cfg: TrainConfig, model: nn.Module, num_classes: int, crop: tuple[int, int], resume_dir: str | None
) -> Any:
    """The deep-supervision wrapper (None when off), with its heads restored on a resumed run."""
    saved = Path(resume_dir, AUX_FILE) if resume_dir else None
    if saved is not None:
        _require_same_option("loss.deep_supervision", saved.exists(), bool(cfg.loss.deep_supervision))
    if not cfg.loss.deep_supervision:
        return None
    aux = DeepSupervision(model, num_classes, cfg.loss.deep_supervision, crop)
    aux.heads.to(next(model.parameters()).device)
    if saved is not None:
        from safetensors.torch import load_file

        aux.heads.load_state_dict(load_file(str(saved)))
    return aux


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return images.float().sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def train_loop(config: dict[str, Any], session: Session | None = None) -> None:
    """Ray Train worker entry point; ``config`` holds the recipe, label map and pair lists as plain data.

    ``session``: where the loop runs; Ray Train's worker when None (``TorchTrainer`` passes only
    ``config``), a ``LocalSession`` for one worker in this process without Ray.
    """
    scratch: list[str] = []  # the resumed checkpoint's local copy: removed however the loop ends
    try:
        _train_loop(config, session, scratch)
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _train_loop(config: dict[str, Any], session: Session | None, scratch: list[str]) -> None:
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from segray.training.augment import train_transform
    from segray.training.data import PairDataset, collate_val
    from segray.training.init import initial_model, model_kwargs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = TrainConfig.from_dict(config["cfg"])
    label_map = LabelMap.from_dict(config["label_map"])
    train_pairs = [Pair(*p) for p in config["train_pairs"]]
    val_pairs = [Pair(*p) for p in config["val_pairs"]]
    if session is None:
        session = RaySession()
    rank, world = session.rank, session.world
    threads = cfg.run.torch_threads or max(1, int(cfg.run.cpus_per_worker))
    torch.set_num_threads(threads)
    device = session.device
    torch.manual_seed(cfg.run.seed)
    h, w = cfg.model.height, cfg.model.width
    ignore = label_map.ignore_id if label_map.ignore_id is not None else 255
    crop = (cfg.augment.crop_height or h, cfg.augment.crop_width or w)

    checkpoint = session.checkpoint()
    state: dict[str, Any] = {}
    ckpt_dir = None
    saved_ema: dict[str, torch.Tensor] | None = None
    if checkpoint is None:
        model = initial_model(cfg.model, label_map, seed=cfg.run.seed)
    else:  # resuming: the checkpoint has every weight, the initial weights' source is not read again
        from segray.models import build_model

        ckpt_dir = tempfile.mkdtemp(prefix="segray-resume-")
        scratch.append(ckpt_dir)
        checkpoint.to_directory(ckpt_dir)
        state = ckpt_io.load_state(ckpt_dir)
        model = build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **model_kwargs(cfg.model))
        weights = ckpt_io.load_model_weights(ckpt_dir)
        _require_same_option("optim.ema_decay", Path(ckpt_dir, TRAINING_WEIGHTS).exists(), cfg.optim.ema_decay > 0)
        _require_same_value("optim.ema_decay", state.get("ema_decay"), cfg.optim.ema_decay)
        if cfg.optim.ema_decay > 0:  # model.safetensors is the average; the optimiser steps these
            saved_ema, weights = weights, ckpt_io.load_model_weights(ckpt_dir, TRAINING_WEIGHTS)
        model.load_state_dict(weights)
    model.to(device)
    unused = freeze_unused(model, *crop, device)
    if rank == 0 and unused:
        log.info("froze %d parameters no forward pass reaches (e.g. %s)", len(unused), unused[0])
    aux = _deep_supervision(cfg, model, label_map.num_classes, crop, ckpt_dir if state else None)
    if rank == 0 and aux is not None:
        log.info("deep supervision: %d training-only heads, loss weights %s", len(aux.heads), aux.weights)
    # The heads train inside the same DDP module as the model, so their gradients are all-reduced too.
    train_module = model if aux is None else aux
    train_module = train_module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = ema_model(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    if ema is not None and saved_ema is not None:
        ema.module.load_state_dict(saved_ema)
        ema.n_averaged.fill_(int(state["ema_updates"]))
    if rank == 0 and ema is not None:
        log.info("validating, keeping and exporting the weights' average (optim.ema_decay %g)", cfg.optim.ema_decay)
    scored = model if ema is None else ema.module  # what validation scores and checkpoints hold as the model
    ddp_model = session.prepare_model(train_module)

    transforms = {
        scale: train_transform(cfg.augment, h, w, ignore, factor=scale)
        for scale in {1.0, *(scale for _, scale in cfg.augment.stages())}
    }

    def transform_for(epoch: int) -> Any:
        return transforms[cfg.augment.scale_at(epoch)]

    start = int(state.get("epoch", 0))
    train_ds = PairDataset(
        train_pairs,
        label_map,
        h,
        w,
        train=True,
        transform=transform_for(start),
        cache=cfg.data.cache,
        soft_targets=cfg.loss.soft_targets,
    )
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed)
    per_worker = math.ceil(len(train_ds) / world)
    drop_last = per_worker > cfg.run.batch_size  # BatchNorm refuses a final batch of one

    def make_loader() -> DataLoader:
        # Built again when the transform changes (progressive resizing): loader processes hold a copy.
        return DataLoader(
            train_ds,
            batch_size=cfg.run.batch_size,
            sampler=sampler,
            num_workers=cfg.data.loader_workers,
            persistent_workers=cfg.data.loader_workers > 0,
            drop_last=drop_last,
            pin_memory=device.type == "cuda",
        )

    loader = make_loader()
    # Validation: a plain slice per worker (no padding, unlike DistributedSampler), so every val
    # frame enters the summed confusion matrix exactly once.
    val_ds = Subset(
        PairDataset(val_pairs, label_map, h, w, train=False, cache=cfg.data.cache), range(rank, len(val_pairs), world)
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.run.val_batch_size, collate_fn=collate_val, num_workers=0)

    opt = make_optimizer(model, cfg, extra=list(aux.heads.parameters()) if aux is not None else [])
    steps_per_epoch = max(1, len(loader))
    scheduler = make_scheduler(opt, cfg, steps_per_epoch)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # fixed crop and val sizes: the fastest kernels are found once
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and cfg.run.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if state:
        ckpt_io.restore_optimizer(ckpt_dir, opt, state)  # type: ignore[arg-type]
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # type: ignore[arg-type]
    loss_fn = SegLoss(cfg, label_map).to(device)
    offsets = logit_offsets(cfg.loss.class_weights, cfg.loss.logit_adjustment)
    if offsets is not None:
        head_conv(model, label_map.num_classes)  # the export will fold the offsets there: fail now, not then
        offsets = offsets.to(device)
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1) * 255

    history: list[dict[str, Any]] = list(state.get("history", []))
    step = int(state.get("step", 0))
    stop = cfg.run.epochs
    if cfg.run.max_epochs_this_run is not None:
        stop = min(stop, start + cfg.run.max_epochs_this_run)
    if rank == 0 and start >= stop:
        log.info("all %d epochs are done already (checkpoint at epoch %d): nothing to train", cfg.run.epochs, start)
    elif rank == 0:
        log.info(
            "rank 0 of %d: %s at epoch %d, this run to epoch %d of %d; %d train / %d val pairs, %d steps/epoch, "
            "device %s, threads %d, amp %s",
            world,
            f"resuming from epoch {start}'s checkpoint," if state else "starting",
            start + 1,
            stop,
            cfg.run.epochs,
            len(train_pairs),
            len(val_pairs),
            steps_per_epoch,
            device,
            threads,
            amp_dtype,
        )

    if rank == 0:
        first = 1
        for epochs, scale in cfg.augment.stages():
            last = first + epochs - 1
            if last > start:  # a resumed run names only the stages still ahead
                log.info("epochs %d-%d train at %s of the model size (progressive resizing)", first, last, scale)
            first += epochs

    for epoch in range(start, stop):
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        loss_fn.epoch = epoch + 1
        transform = transform_for(epoch)
        if train_ds.transform is not transform:
            train_ds.transform = transform
            loader = make_loader()
        # Augmentation randomness per worker and epoch: different crops on each worker, and a resumed
        # run draws the same ones as an uninterrupted run would.
        torch.manual_seed(cfg.run.seed + 1009 * rank + 7919 * epoch)
        ddp_model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        train_hw = (0, 0)
        for images, masks in loader:
            train_hw = (int(images.shape[-2]), int(images.shape[-1]))
            x = _normalise(images.to(device, non_blocking=True), mean, std)
            y = masks.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = ddp_model(x)
            logits, aux_logits = out if aux is not None else (out, None)
            loss = loss_fn(logits, y)
            if aux is not None:
                loss = loss + aux.loss(aux_logits, y, loss_fn)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            _maybe_inject_failure(cfg, epoch + 1, rank)  # mid-epoch: after this epoch's first step
            loss_sum += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64, device=device)
            if rank == 0 and cfg.run.log_every and step % cfg.run.log_every == 0:
                log.info("epoch %d step %d loss %.4f lr %.2e", epoch + 1, step, loss.item(), opt.param_groups[0]["lr"])
        train_seconds = time.monotonic() - t0
        _all_reduce(loss_sum)
        validated = is_validation_epoch(epoch + 1, cfg.run.epochs, cfg.run.val_every)
        if validated:
            # The bare module: val shards may differ by a batch, and DDP forward must not wait on a collective.
            cm, val_loss = validate(scored, val_loader, label_map, mean, std, device, amp_dtype, offsets)
            s = scores(cm.cpu().numpy(), label_map.names)
        else:  # NaN ranks below every score in Ray's checkpoint manager: never kept as the best
            nan = float("nan")
            cm, val_loss = torch.zeros(0), nan
            s = {"miou": nan, "pixel_accuracy": nan, "mean_dice": nan, "iou": dict.fromkeys(label_map.names, nan)}
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            "val_loss": val_loss,
            "val_miou": s["miou"],
            "val_pixel_accuracy": s["pixel_accuracy"],
            "val_mean_dice": s["mean_dice"],
            "lr": opt.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            "train_height": train_hw[0],  # the crops' size: smaller in progressive resizing's early epochs
            "train_width": train_hw[1],
            "epoch_seconds": time.monotonic() - t0,
            **{f"val_iou_{n}": v for n, v in s["iou"].items()},
        }
        history.append({k: metrics[k] for k in HISTORY_KEYS})
        if rank == 0 and not validated:
            log.info(
                "epoch %d/%d: train loss %.4f (%.0f s; validated every %d epochs)",
                epoch + 1,
                cfg.run.epochs,
                metrics["train_loss"],
                metrics["epoch_seconds"],
                cfg.run.val_every,
            )
        elif rank == 0:
            log.info(
                "epoch %d/%d: train loss %.4f, val loss %.4f, val mIoU %.4f, pixel acc %.4f (%.0f s)",
                epoch + 1,
                cfg.run.epochs,
                metrics["train_loss"],
                val_loss,
                s["miou"],
                s["pixel_accuracy"],
                metrics["epoch_seconds"],
            )
        with tempfile.TemporaryDirectory(prefix="segray-ckpt-") as tmp:
            out = None
            if rank == 0:
                out = tmp
                extra = {AUX_FILE: aux.heads.state_dict()} if aux is not None else {}
                if ema is not None:
                    extra[TRAINING_WEIGHTS] = model.state_dict()
                ckpt_io.save_checkpoint(
                    tmp,
                    scored,
                    opt,
                    {
                        "epoch": epoch + 1,
                        "step": step,
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                        "history": history,
                        "metrics": metrics,
                        "val_confusion": cm.cpu().tolist(),
                        "arch": cfg.model.arch,
                        "encoder": cfg.model.encoder,
                        "label_map": label_map.to_dict(),
                        "ema_updates": int(ema.n_averaged) if ema is not None else None,
                        "ema_decay": cfg.optim.ema_decay if ema is not None else None,
                    },
                    extra=extra,
                )
            session.report(metrics, out, f"epoch-{epoch + 1:04d}")
        if rank == 0:
            _write_curves(cfg, history)


def is_validation_epoch(epoch: int, epochs: int, every: int) -> bool:
    """1-based ``epoch``: every ``every``-th epoch and always the last, so the export has a score."""
    return epoch % every == 0 or epoch == epochs


@torch.inference_mode()
def validate(
    model: nn.Module,
    loader: Any,
    label_map: LabelMap,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    offsets: torch.Tensor | None = None,
    hflip_average: bool = False,
) -> tuple[torch.Tensor, float]:
    """Confusion matrix and mean cross-entropy over non-ignored pixels, at each mask's own size,
    summed over all workers. ``offsets``: per-class logit adjustment, as the export folds it in;
    ``hflip_average``: flip-averaged logits (the export's scoring with ``model.hflip_average``)."""
    from segray.models.preprocessing import forward
    from segray.training.metrics import confusion_matrix

    c = label_map.num_classes
    ignore = label_map.ignore_id if label_map.ignore_id is not None else -100
    model.eval()
    cm = torch.zeros(c, c, dtype=torch.int64, device=device)
    loss = torch.zeros(2, dtype=torch.float64, device=device)
    for images, masks in loader:
        x = _normalise(images.to(device), mean, std)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = forward(model, x, hflip_average)
        if offsets is not None:
            logits = logits.float() + offsets.view(1, -1, 1, 1)
        for i, m in enumerate(masks):
            m = m.to(device)
            up = F.interpolate(logits[i : i + 1].float(), size=m.shape, mode="bilinear", align_corners=False)
            cm += confusion_matrix(up.argmax(dim=1)[0], m, c)
            valid = int(((m >= 0) & (m < c)).sum())
            if valid:
                loss[0] += F.cross_entropy(up, m[None], ignore_index=ignore, reduction="sum").double()
                loss[1] += valid
    _all_reduce(cm)
    _all_reduce(loss)
    model.train()
    return cm, float(loss[0] / loss[1]) if loss[1] > 0 else float("nan")


def _write_curves(cfg: TrainConfig, history: list[dict[str, Any]]) -> None:
    from segray.training.curves import curves_png

    try:
        storage.write_bytes(storage.join(cfg.run_uri, CURVES), curves_png(history, cfg.name))
    except Exception as e:  # noqa: BLE001 - a missing picture must not fail a training run
        log.warning("could not write %s: %s", CURVES, e)


def _maybe_inject_failure(cfg: TrainConfig, epoch: int, rank: int) -> None:
    """Testing aid for ``FailureConfig``: rank 0's process dies (SIGKILL, as a lost node would) once,
    mid-epoch ``run.inject_failure_at_epoch``, after a training step of that epoch."""
    if cfg.run.inject_failure_at_epoch != epoch or rank != 0:
        return
    marker = storage.join(cfg.run_uri, f"_injected_failure_epoch_{epoch}")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"")
    log.warning("injected failure: killing rank 0 mid-epoch %d (run.inject_failure_at_epoch)", epoch)
    os.kill(os.getpid(), signal.SIGKILL)
