"""The per-worker training function that Ray Train's ``TorchTrainer`` runs on every worker, for every task.

Each epoch: train on this worker's shard, validate on this worker's share of the val split (the
task sums or gathers the shares), report metrics through the session with a checkpoint from rank 0
(the best by the task's val score plus the latest are kept), redraw the curves. A restarted worker
group (``FailureConfig``) or a rerun of the same command finds the latest checkpoint through the
session and continues at the next epoch. The same loop runs as one worker without Ray through
``session.LocalSession`` (``segray train --no-ray``). What differs between tasks (loaders, the
loss of a batch, validation) is the task's (:mod:`segray.tasks`); the steps around each epoch
(worker set-up, optimiser steps, checkpoint reports) are in ``epoch.py``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from segray import progress
from segray.labels import LabelMap
from segray.models.precision import amp_dtype as amp_dtype_for
from segray.recipe import TrainConfig
from segray.tasks import Task, TaskWorker, task_named
from segray.tasks.distributed import all_reduce
from segray.training import checkpoint as ckpt_io
from segray.training.curves import write_curves
from segray.training.epoch import (
    Stepper,
    epochs_this_run,
    is_validation_epoch,
    report_epoch,
    seed_epoch,
    start_worker,
)
from segray.training.session import CHECKPOINT_SCORE, RaySession, Session, checkpoint_score

log = logging.getLogger("segray.train")


def load_start(
    task: Task, cfg: TrainConfig, label_map: LabelMap, session: Session, scratch: list[str]
) -> tuple[Any, dict[str, Any], str | None]:
    """(model, checkpoint state, checkpoint folder): the latest checkpoint's, or the recipe's start."""
    checkpoint = session.checkpoint()
    if checkpoint is None:
        return task.start_model(cfg, label_map), {}, None
    folder = tempfile.mkdtemp(prefix="segray-resume-")
    scratch.append(folder)  # removed however the loop ends
    checkpoint.to_directory(folder)
    model = task.build_model(cfg, label_map)
    model.load_state_dict(ckpt_io.load_model_weights(folder))
    return model, ckpt_io.load_state(folder), folder


def train_loop(config: dict[str, Any], session: Session | None = None) -> None:
    """Ray Train worker entry point; ``config`` holds the task, recipe, label map and data as plain data.

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
        loss_sum = _train_epoch(w, epoch)
        train_seconds = time.monotonic() - t0
        all_reduce(loss_sum)
        validated = is_validation_epoch(epoch + 1, w.cfg.run.epochs, w.cfg.run.val_every)
        # The bare module: val shards may differ by a batch, and DDP forward must not wait on a collective.
        val, extras = w.part.validate(w.model, w.amp_dtype) if validated else (w.part.not_validated(), {})
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": w.stepper.step,
            "train_loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            **val,
            # not scored: never kept as the best (checkpoint_score -1)
            CHECKPOINT_SCORE: checkpoint_score(float(val[w.task.score_key])),
            "lr": w.stepper.lr,
            "train_seconds": train_seconds,
            **w.part.train_metrics(),
            "epoch_seconds": time.monotonic() - t0,
        }
        w.history.append({k: metrics[k] for k in w.task.history_keys})
        rank0 = session.rank == 0
        if rank0:
            if validated:
                w.validated = (epoch + 1, float(metrics[w.task.score_key]))
            _post(w, epoch, w.epoch_steps, metrics["train_loss"])
            what = w.task.describe_val(metrics) if validated else "not validated"
            log.info("epoch %d/%d: train loss %.4f, %s (%.0f s)", epoch + 1, w.cfg.run.epochs, metrics["train_loss"],
                     what, metrics["epoch_seconds"])  # fmt: skip
        state = _checkpoint_state(w, epoch, metrics, extras) if rank0 else None
        report_epoch(session, w.model, w.stepper.opt, metrics, state, epoch + 1)
        if rank0:
            write_curves(w.cfg.run_uri, w.history, w.cfg.name, (w.task.score_key, f"{w.task.score_label} (%)"))


@dataclass
class _Worker:
    """A worker's training set-up, built once and carried through the epochs."""

    task: Task
    cfg: TrainConfig
    label_map: LabelMap
    session: Session
    #: The bare module (validated and checkpointed) and what trains (DDP-wrapped under Ray Train).
    model: Any
    ddp_model: Any
    #: The task's part: loaders, the loss of a batch, validation.
    part: TaskWorker
    stepper: Stepper
    amp_dtype: torch.dtype | None
    history: list[dict[str, Any]]
    #: Epochs done before this run, and the epoch this run stops after.
    start: int
    stop: int
    #: Where rank 0 posts its progress for the driver's display (:mod:`segray.progress`), or None.
    board: Any = None
    #: The last validated epoch (1-based) and its val score, for the progress display.
    validated: tuple[int, float] | None = None
    #: When rank 0 last posted its progress (monotonic seconds), and the steps of the current epoch.
    posted: float = 0.0
    epoch_steps: int = 0


def _set_up(config: dict[str, Any], session: Session, scratch: list[str]) -> _Worker:
    """Model, loaders, optimiser and loss, from the latest checkpoint if there is one."""
    task = task_named(config["task"])
    cfg, label_map = TrainConfig.from_dict(config["cfg"]), LabelMap.from_dict(config["label_map"])
    rank, device = session.rank, session.device
    start_worker(cfg)
    model, state, ckpt_dir = load_start(task, cfg, label_map, session, scratch)
    model.to(device)
    start = int(state.get("epoch", 0))
    part = task.worker(cfg, label_map, {**config, "start": start}, model, rank, session.world, device)
    ddp_model = session.prepare_model(model)
    steps_per_epoch = max(1, len(part.loader_for(start)))
    amp_dtype = amp_dtype_for(device, cfg.run.amp)
    stepper = Stepper.create(model, cfg, steps_per_epoch, amp_dtype, ckpt_dir, state, config.get("fault_drill_epoch"))
    history: list[dict[str, Any]] = list(state.get("history", []))
    stop = epochs_this_run(cfg, start)
    if rank == 0:
        what = f"resuming from epoch {start}'s checkpoint" if state else "starting"
        log.info("rank 0 of %d: %s; epochs %d-%d of %d; %d train / %d val %s, %d steps/epoch, device %s, amp %s",
                 session.world, what, start + 1, stop, cfg.run.epochs, len(config["train"]), len(config["val"]),
                 config["noun"], steps_per_epoch, device, amp_dtype)  # fmt: skip
    return _Worker(task, cfg, label_map, session, model, ddp_model, part, stepper, amp_dtype, history, start, stop,
                   config.get("progress") if rank == 0 else None)  # fmt: skip


def _train_epoch(w: _Worker, epoch: int) -> torch.Tensor:
    """One pass over this worker's shard: the summed loss and frame count, to be all-reduced."""
    rank, device = w.session.rank, w.session.device
    loader = w.part.loader_for(epoch)
    w.epoch_steps = len(loader)
    seed_epoch(w.cfg, rank, epoch)
    w.ddp_model.train()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        loss, n, detail = w.part.step(w.ddp_model, batch, w.amp_dtype)
        w.stepper.backward(loss, epoch + 1, rank)
        loss_sum += torch.tensor([loss.item() * n, n], dtype=torch.float64, device=device)
        if w.board is not None and time.monotonic() - w.posted >= 1.0:
            _post(w, epoch, i + 1, float(loss_sum[0] / max(1.0, float(loss_sum[1]))))
        if w.stepper.should_log(rank):
            log.info("epoch %d step %d loss %.4f%s lr %.2e", epoch + 1, w.stepper.step, loss.item(),
                     f" {detail}" if detail else "", w.stepper.lr)  # fmt: skip
    return loss_sum


def _post(w: _Worker, epoch: int, step: int, loss: float) -> None:
    """Rank 0's progress for the driver's display: the epoch (0-based here, 1-based posted), the step
    within it, the epoch's mean loss so far and the last validated epoch's score."""
    if w.board is None:
        return
    w.posted = time.monotonic()
    progress.post(w.board, {"epoch": epoch + 1, "epochs": w.cfg.run.epochs, "start": w.start, "stop": w.stop,
                            "step": step, "steps": w.epoch_steps, "loss": loss, "score_label": w.task.score_label,
                            "validated": w.validated})  # fmt: skip


def _checkpoint_state(w: _Worker, epoch: int, metrics: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """What rank 0's checkpoint records beside the weights and optimiser (checkpoint.py's ``state.json``)."""
    return {"epoch": epoch + 1, **w.stepper.state(), "history": w.history, "metrics": metrics, "task": w.task.name,
            "arch": w.cfg.model.arch, "encoder": w.cfg.model.encoder, "label_map": w.label_map.to_dict(),
            **extras}  # fmt: skip
