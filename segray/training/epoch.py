"""What the training loop does around each epoch, whatever the task: set up the worker, step the
optimiser, decide which epochs validate, and report an epoch with rank 0's checkpoint."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from segray.recipe import TrainConfig
from segray.training import checkpoint as ckpt_io
from segray.training.optim import make_optimizer, make_scheduler
from segray.training.session import Session, maybe_inject_failure


def start_worker(cfg: TrainConfig) -> None:
    """Logging, torch's thread count and the run's seed, as every worker starts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(cfg.run.torch_threads or max(1, int(cfg.run.cpus_per_worker)))
    torch.manual_seed(cfg.run.seed)


def epochs_this_run(cfg: TrainConfig, start: int) -> int:
    """The epoch this run stops after: the recipe's last, or sooner with ``run.max_epochs_this_run``."""
    return min(cfg.run.epochs, start + (cfg.run.max_epochs_this_run or cfg.run.epochs))


def is_validation_epoch(epoch: int, epochs: int, every: int) -> bool:
    """1-based ``epoch``: every ``every``-th epoch and always the last, so the export has a score."""
    return epoch % every == 0 or epoch == epochs


def seed_epoch(cfg: TrainConfig, rank: int, epoch: int) -> None:
    """Augmentation randomness per worker and epoch: a resumed run draws what an uninterrupted one would."""
    torch.manual_seed(cfg.run.seed + 1009 * rank + 7919 * epoch)


@dataclass
class Stepper:
    """The optimiser, its LR schedule and the AMP gradient scaler, stepped together once per batch."""

    cfg: TrainConfig
    opt: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    #: Optimiser steps taken since the run's first epoch (a resumed run goes on counting).
    step: int = 0
    #: The test suite's fault drill: rank 0 dies once in this epoch (1-based); None: no drill.
    drill_epoch: int | None = None

    @classmethod
    def create(
        cls,
        model: torch.nn.Module,
        cfg: TrainConfig,
        steps_per_epoch: int,
        amp_dtype: torch.dtype | None,
        ckpt_dir: str | None,
        state: dict[str, Any],
        drill_epoch: int | None = None,
    ) -> Stepper:
        """A fresh optimiser, or the checkpoint's in ``ckpt_dir`` (removed once read)."""
        opt = make_optimizer(model, cfg.optim)
        scheduler = make_scheduler(opt, cfg.optim, cfg.run.epochs, steps_per_epoch)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        if ckpt_dir is not None:
            ckpt_io.restore_optimizer(ckpt_dir, opt, state)
            scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return cls(cfg, opt, scheduler, scaler, int(state.get("step", 0)), drill_epoch)

    def backward(self, loss: torch.Tensor, epoch: int, rank: int) -> None:
        """One optimiser step on ``loss``; then the fault drill's chance to kill rank 0 (1-based ``epoch``)."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        maybe_inject_failure(self.drill_epoch, self.cfg.run_uri, epoch, rank)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def should_log(self, rank: int) -> bool:
        """Rank 0 logs every ``run.log_every`` steps."""
        return rank == 0 and bool(self.cfg.run.log_every) and self.step % self.cfg.run.log_every == 0

    def state(self) -> dict[str, Any]:
        """The checkpoint's record of the step count, the LR schedule and the scaler."""
        return {
            "step": self.step,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }


def report_epoch(
    session: Session,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    metrics: dict[str, Any],
    state: dict[str, Any] | None,
    epoch: int,
) -> None:
    """Reports epoch ``epoch`` (1-based) with, from rank 0, its checkpoint: ``model``, ``opt`` and ``state``."""
    with tempfile.TemporaryDirectory(prefix="segray-ckpt-") as tmp:
        if session.rank == 0:
            if state is None:
                raise ValueError("rank 0 reports each epoch with its checkpoint state")
            ckpt_io.save_checkpoint(tmp, model, opt, state)
        session.report(metrics, tmp if session.rank == 0 else None, f"epoch-{epoch:04d}")
