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
from typing import Any

import torch

from segray.datasets.instances import InstanceFrame
from segray.instance_metrics import InstanceScorer
from segray.labels import LabelMap
from segray.models.precision import amp_dtype as amp_dtype_for
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.curves import write_curves
from segray.training.optim import make_optimizer, make_scheduler
from segray.training.session import CHECKPOINT_SCORE, RaySession, Session, checkpoint_score, maybe_inject_failure
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
    n = min(PRECISE_BN_FRAMES, len(dataset))
    for i in range(0, n, batch_size):
        images, _ = model.transform([dataset[j][0].to(device) for j in range(i, min(n, i + batch_size))])
        model.backbone(images.tensors)
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
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    from segray.training.instance_data import InstanceDataset, collate, to_target

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg, label_map = TrainConfig.from_dict(config["cfg"]), LabelMap.from_dict(config["label_map"])
    train_frames = [InstanceFrame(*f) for f in config["train_frames"]]
    val_frames = [InstanceFrame(*f) for f in config["val_frames"]]
    rank, device, c = session.rank, session.device, label_map.num_classes
    torch.set_num_threads(cfg.run.torch_threads or max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.run.seed)
    checkpoint = session.checkpoint()
    state: dict[str, Any] = {}
    ckpt_dir = None
    model = build(cfg, c, weights=checkpoint is None)
    if checkpoint is not None:
        ckpt_dir = tempfile.mkdtemp(prefix="segray-resume-")
        scratch.append(ckpt_dir)
        checkpoint.to_directory(ckpt_dir)
        model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir))
        state = ckpt_io.load_state(ckpt_dir)
    model.to(device)
    ddp_model = session.prepare_model(model)
    size = (cfg.model.height, cfg.model.width)
    train_ds = InstanceDataset(train_frames, c, size, cfg.augment, cfg.data.cache)
    sampler = DistributedSampler(train_ds, num_replicas=session.world, rank=rank, shuffle=True, seed=cfg.run.seed)
    per_worker = math.ceil(len(train_ds) / session.world)
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
        InstanceDataset(val_frames, c, size, None, cfg.data.cache), range(rank, len(val_frames), session.world)
    )
    val_loader = DataLoader(val_ds, batch_size=cfg.run.val_batch_size, collate_fn=collate, num_workers=0)
    start = int(state.get("epoch", 0))
    opt = make_optimizer(model, cfg.optim)
    steps_per_epoch = max(1, len(loader))
    scheduler = make_scheduler(opt, cfg.optim, cfg.run.epochs, steps_per_epoch)
    amp_dtype = amp_dtype_for(device, cfg.run.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if ckpt_dir is not None:
        ckpt_io.restore_optimizer(ckpt_dir, opt, state)
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    history: list[dict[str, Any]] = list(state.get("history", []))
    step = int(state.get("step", 0))
    stop = min(cfg.run.epochs, start + (cfg.run.max_epochs_this_run or cfg.run.epochs))
    if rank == 0:
        what = f"resuming from epoch {start}'s checkpoint" if state else "starting"
        log.info("rank 0 of %d: %s; epochs %d-%d of %d; %d train / %d val frames, %d steps/epoch, device %s, amp %s",
                 session.world, what, start + 1, stop, cfg.run.epochs, len(train_frames), len(val_frames),
                 steps_per_epoch, device, amp_dtype)  # fmt: skip

    for epoch in range(start, stop):
        t0 = time.monotonic()
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.run.seed + 1009 * rank + 7919 * epoch)
        ddp_model.train()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        for images, instances in loader:
            targets = [{k: v.to(device) for k, v in to_target(inst).items()} for inst in instances]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                losses = ddp_model([im.to(device, non_blocking=True) for im in images], targets)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scheduler.step()
            step += 1
            maybe_inject_failure(cfg.run.inject_failure_at_epoch, cfg.run_uri, epoch + 1, rank)
            loss_sum += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64, device=device)
            if rank == 0 and cfg.run.log_every and step % cfg.run.log_every == 0:
                parts = ", ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
                log.info("epoch %d step %d loss %.4f (%s) lr %.2e", epoch + 1, step, loss.item(), parts,
                         opt.param_groups[0]["lr"])  # fmt: skip
        train_seconds = time.monotonic() - t0
        all_reduce(loss_sum)
        nan = float("nan")
        if is_validation_epoch(epoch + 1, cfg.run.epochs, cfg.run.val_every):
            precise_bn(model, train_ds, cfg.run.batch_size, device)  # the checkpoint keeps these statistics
            s = validate_instances(model, val_loader, label_map.names, device, amp_dtype)
        else:  # NaN ranks below every score in the checkpoint manager: never kept as the best
            s = {"ap": nan, "ap50": nan, "ap75": nan, "exact_count_fraction": nan, "count_mae": nan,
                 "per_class": {n: {"ap": nan, "ap50": nan, "ap75": nan} for n in label_map.names}}  # fmt: skip
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            "val_loss": nan,  # Mask R-CNN has no loss in eval mode
            "val_mask_ap": s["ap"],
            "val_mask_ap50": s["ap50"],
            "val_mask_ap75": s["ap75"],
            "val_exact_count_fraction": s["exact_count_fraction"],
            "val_count_mae": s["count_mae"],
            "lr": opt.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            "epoch_seconds": time.monotonic() - t0,
            SCORE: checkpoint_score(s["ap50"]),
            **{f"val_ap_{n}": v["ap"] for n, v in s["per_class"].items()},
            **{f"val_ap50_{n}": v["ap50"] for n, v in s["per_class"].items()},
        }
        history.append({k: metrics[k] for k in HISTORY_KEYS})
        if rank == 0:
            log.info("epoch %d/%d: train loss %.4f, val mask AP %.4f AP50 %.4f AP75 %.4f, exact counts %.3f (%.0f s)",
                     epoch + 1, cfg.run.epochs, metrics["train_loss"], s["ap"], s["ap50"], s["ap75"],
                     s["exact_count_fraction"], metrics["epoch_seconds"])  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="segray-ckpt-") as tmp:
            if rank == 0:
                state = {"epoch": epoch + 1, "step": step, "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict() if scaler.is_enabled() else None, "history": history,
                         "metrics": metrics, "task": "instance", "arch": cfg.model.arch,
                         "encoder": cfg.model.encoder, "label_map": label_map.to_dict()}  # fmt: skip
                ckpt_io.save_checkpoint(tmp, model, opt, state)
            session.report(metrics, tmp if rank == 0 else None, f"epoch-{epoch + 1:04d}")
        if rank == 0:
            write_curves(cfg.run_uri, history, cfg.name, (SCORE, "val mask AP50 (%)"))
