"""The per-worker Mask R-CNN training function (``model.arch: maskrcnn``) that ``TorchTrainer`` runs.

The same shape as the semantic loop (:mod:`segray.training.loop`): each worker trains on its shard
of the frames under DDP, validation scores this worker's share of the val split, the shares are
gathered and scored once with the COCO protocol (mask AP, AP50, AP75, per-frame counts, see
:mod:`segray.instance_metrics`), and rank 0 reports a checkpoint. Checkpoints, resume (Ray Train
finds the latest checkpoint of ``<storage>/<name>``), ``run.max_epochs_this_run`` and the fault
drill work as there. AMP (``run.amp``) applies on a GPU only. Mask R-CNN sums its own losses (RPN
objectness and boxes, box classification and regression, mask); ``loss:`` terms do not apply.
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

from segray.datasets.instances import InstanceFrame
from segray.instance_metrics import InstanceScorer
from segray.labels import LabelMap
from segray.models.precision import amp_dtype as amp_dtype_for
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.curves import write_curves
from segray.training.epoch import Stepper, epochs_this_run, report_epoch, seed_epoch, start_worker
from segray.training.session import CHECKPOINT_SCORE, RaySession, Session, checkpoint_score
from segray.training.validate import all_reduce, is_validation_epoch

log = logging.getLogger("segray.train")

#: What each epoch leaves in the checkpoint's history (curves, summaries, a resumed run's record).
HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_mask_ap", "val_mask_ap50", "val_exact_count_fraction",
                "epoch_seconds")  # fmt: skip
#: The checkpoint score is val mask AP50 (see :data:`segray.training.session.CHECKPOINT_SCORE`).
SCORE = CHECKPOINT_SCORE


def build(cfg: TrainConfig, num_classes: int, weights: bool = True) -> torch.nn.Module:
    """The recipe's Mask R-CNN: its transform works at model.height x model.width (as labelling resizes)."""
    from segray.models.maskrcnn import build_instance_model

    h, w = cfg.model.height, cfg.model.width
    return build_instance_model(
        cfg.model.encoder,
        num_classes,
        min_size=min(h, w),
        max_size=max(h, w),
        backbone_weights=cfg.model.encoder_weights if weights else None,
        **cfg.model.kwargs,
    )


def gather(obj: Any) -> list[Any]:
    """``obj`` from every worker (a one-item list without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


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


def instance_train_loop(config: dict[str, Any], session: Session | None = None) -> None:
    """Ray Train worker entry point; ``config`` holds the recipe, label map and frame lists as plain data."""
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
        loss_sum = _train_epoch(w, epoch)
        train_seconds = time.monotonic() - t0
        all_reduce(loss_sum)
        s = _validate_epoch(w, epoch)
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": w.stepper.step,
            "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            "val_loss": float("nan"),  # Mask R-CNN has no loss in eval mode
            "val_mask_ap": s["ap"],
            "val_mask_ap50": s["ap50"],
            "val_mask_ap75": s["ap75"],
            "val_exact_count_fraction": s["exact_count_fraction"],
            "val_count_mae": s["count_mae"],
            "lr": w.stepper.lr,
            "train_seconds": train_seconds,
            "epoch_seconds": time.monotonic() - t0,
            SCORE: checkpoint_score(s["ap50"]),
            **{f"val_ap_{n}": v["ap"] for n, v in s["per_class"].items()},
            **{f"val_ap50_{n}": v["ap50"] for n, v in s["per_class"].items()},
        }
        w.history.append({k: metrics[k] for k in HISTORY_KEYS})
        rank0 = session.rank == 0
        if rank0:
            log.info("epoch %d/%d: train loss %.4f, val mask AP %.4f AP50 %.4f AP75 %.4f, exact counts %.3f (%.0f s)",
                     epoch + 1, w.cfg.run.epochs, metrics["train_loss"], s["ap"], s["ap50"], s["ap75"],
                     s["exact_count_fraction"], metrics["epoch_seconds"])  # fmt: skip
        state = _checkpoint_state(w, epoch, metrics) if rank0 else None
        report_epoch(session, w.model, w.stepper.opt, metrics, state, epoch + 1)
        if rank0:
            write_curves(w.cfg.run_uri, w.history, w.cfg.name, (SCORE, "val mask AP50 (%)"))


@dataclass
class _Worker:
    """A worker's training set-up, built once and carried through the epochs."""

    cfg: TrainConfig
    label_map: LabelMap
    session: Session
    #: The bare module (validated and checkpointed) and what trains (DDP-wrapped under Ray Train).
    model: Any
    ddp_model: Any
    train_ds: Any
    sampler: Any
    loader: Any
    val_loader: Any
    stepper: Stepper
    amp_dtype: torch.dtype | None
    history: list[dict[str, Any]]
    #: Epochs done before this run, and the epoch this run stops after.
    start: int
    stop: int


def _set_up(config: dict[str, Any], session: Session, scratch: list[str]) -> _Worker:
    """Model, loaders and optimiser, from the latest checkpoint if there is one."""
    cfg, label_map = TrainConfig.from_dict(config["cfg"]), LabelMap.from_dict(config["label_map"])
    train_frames = [InstanceFrame(*f) for f in config["train_frames"]]
    val_frames = [InstanceFrame(*f) for f in config["val_frames"]]
    rank, device = session.rank, session.device
    start_worker(cfg)
    model, state, ckpt_dir = _load_start(cfg, label_map.num_classes, session, scratch)
    model.to(device)
    ddp_model = session.prepare_model(model)
    train_ds, sampler, loader, val_loader = _make_loaders(cfg, label_map.num_classes, train_frames, val_frames, session)
    start = int(state.get("epoch", 0))
    steps_per_epoch = max(1, len(loader))
    amp_dtype = amp_dtype_for(device, cfg.run.amp)
    stepper = Stepper.create(model, cfg, steps_per_epoch, amp_dtype, ckpt_dir, state)
    history: list[dict[str, Any]] = list(state.get("history", []))
    stop = epochs_this_run(cfg, start)
    if rank == 0:
        what = f"resuming from epoch {start}'s checkpoint" if state else "starting"
        log.info("rank 0 of %d: %s; epochs %d-%d of %d; %d train / %d val frames, %d steps/epoch, device %s, amp %s",
                 session.world, what, start + 1, stop, cfg.run.epochs, len(train_frames), len(val_frames),
                 steps_per_epoch, device, amp_dtype)  # fmt: skip
    return _Worker(
        cfg, label_map, session, model, ddp_model, train_ds, sampler, loader, val_loader, stepper, amp_dtype,
        history, start, stop,
    )  # fmt: skip


def _load_start(
    cfg: TrainConfig, num_classes: int, session: Session, scratch: list[str]
) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """(model, checkpoint state, checkpoint folder): the latest checkpoint's, or a new model (with the
    encoder's pretrained weights) and no state."""
    checkpoint = session.checkpoint()
    state: dict[str, Any] = {}
    ckpt_dir = None
    model = build(cfg, num_classes, weights=checkpoint is None)
    if checkpoint is not None:
        ckpt_dir = tempfile.mkdtemp(prefix="segray-resume-")
        scratch.append(ckpt_dir)
        checkpoint.to_directory(ckpt_dir)
        model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir))
        state = ckpt_io.load_state(ckpt_dir)
    return model, state, ckpt_dir


def _make_loaders(
    cfg: TrainConfig,
    num_classes: int,
    train_frames: list[InstanceFrame],
    val_frames: list[InstanceFrame],
    session: Session,
) -> tuple[Any, Any, Any, Any]:
    """(training dataset, its sampler, its loader, the val loader) of this worker's share of the frames."""
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from segray.training.instance_data import InstanceDataset, collate

    rank, world = session.rank, session.world
    size = (cfg.model.height, cfg.model.width)
    train_ds = InstanceDataset(train_frames, num_classes, size, cfg.augment, cfg.data.cache)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.run.seed
    )
    per_worker = math.ceil(len(train_ds) / world)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.run.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.loader_workers,
        persistent_workers=cfg.data.loader_workers > 0,
        drop_last=per_worker > cfg.run.batch_size,  # BatchNorm refuses a final batch of one
    )
    val_ds = Subset(
        InstanceDataset(val_frames, num_classes, size, None, cfg.data.cache), range(rank, len(val_frames), world)
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.run.val_batch_size, collate_fn=collate, num_workers=0)
    return train_ds, sampler, loader, val_loader


def _train_epoch(w: _Worker, epoch: int) -> torch.Tensor:
    """One pass over this worker's shard: the summed loss and frame count, to be all-reduced."""
    from segray.training.instance_data import to_target

    rank, device = w.session.rank, w.session.device
    w.sampler.set_epoch(epoch)
    seed_epoch(w.cfg, rank, epoch)
    w.ddp_model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for images, instances in w.loader:
        targets = [{k: v.to(device) for k, v in to_target(inst).items()} for inst in instances]
        with torch.autocast(device.type, dtype=w.amp_dtype or torch.float32, enabled=w.amp_dtype is not None):
            losses = w.ddp_model([im.to(device, non_blocking=True) for im in images], targets)
        loss = sum(losses.values())
        w.stepper.backward(loss, epoch + 1, rank)
        loss_sum += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64, device=device)
        if w.stepper.should_log(rank):
            parts = ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
            log.info("epoch %d step %d loss %.4f (%s) lr %.2e", epoch + 1, w.stepper.step, loss.item(), parts,
                     w.stepper.lr)  # fmt: skip
    return loss_sum


def _validate_epoch(w: _Worker, epoch: int) -> dict[str, Any]:
    """COCO scores on a validation epoch; NaN scores on the others."""
    if is_validation_epoch(epoch + 1, w.cfg.run.epochs, w.cfg.run.val_every):
        device = w.session.device
        precise_bn(w.model, w.train_ds, w.cfg.run.batch_size, device)  # the checkpoint keeps these statistics
        return validate_instances(w.model, w.val_loader, w.label_map.names, device, w.amp_dtype)
    nan = float("nan")  # NaN ranks below every score in the checkpoint manager: never kept as the best
    return {"ap": nan, "ap50": nan, "ap75": nan, "exact_count_fraction": nan, "count_mae": nan,
            "per_class": {n: {"ap": nan, "ap50": nan, "ap75": nan} for n in w.label_map.names}}  # fmt: skip


def _checkpoint_state(w: _Worker, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """What rank 0's checkpoint records beside the weights and optimiser (checkpoint.py's ``state.json``)."""
    return {"epoch": epoch + 1, **w.stepper.state(), "history": w.history, "metrics": metrics,
            "task": "instance", "arch": w.cfg.model.arch, "encoder": w.cfg.model.encoder,
            "label_map": w.label_map.to_dict()}  # fmt: skip
