"""Where the training loop runs: a Ray Train worker, or one process with no Ray at all.

``train_loop`` talks to its surroundings through five things: its rank and world size, its
device, the checkpoint to resume from, wrapping the model for DDP, and reporting an epoch (metrics
plus a checkpoint folder). ``RaySession`` maps them onto ``ray.train``. ``LocalSession`` is the same
loop as one worker in the calling process, for a machine where Ray is not installed (a lone GPU
box): checkpoints go to the same ``<storage>/<name>/epoch-NNNN`` folders, the best by val mIoU and
the latest are kept, and rerunning the command continues from the latest, as with Ray. What it
does not have is Ray's restart of a lost worker (``run.max_failures``): a crash ends the command,
and rerunning it continues.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import shutil
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from segray import storage

INDEX = "segray-checkpoints.json"  # LocalSession's record of kept checkpoints and their metrics


class Session(Protocol):
    rank: int
    world: int
    device: torch.device

    def checkpoint(self) -> Any:
        """The checkpoint to resume from (anything with ``to_directory(path)``), or None."""

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def report(self, metrics: dict[str, Any], folder: str | None, name: str) -> None:
        """One epoch: its metrics and, from rank 0, the checkpoint folder written for it."""


class RaySession:
    """Inside a Ray Train worker (``TorchTrainer`` calls ``train_loop(config)``)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], folder: str | None, name: str) -> None:
        import ray.train
        from ray.train import Checkpoint

        out = Checkpoint.from_directory(folder) if folder is not None else None
        ray.train.report(metrics, checkpoint=out, checkpoint_dir_name=name)


class StoredCheckpoint:
    """A checkpoint folder on a folder or S3 path; ``to_directory`` as Ray's ``Checkpoint`` has it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def to_directory(self, path: str) -> str:
        _, root = storage.resolve(self.uri)
        files = [posixpath.relpath(f, root) for f in storage.list_files(self.uri)]
        if not files:
            raise FileNotFoundError(f"{self.uri}: the checkpoint folder is empty or gone")
        for rel in files:
            target = Path(path, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(storage.read_bytes(storage.join(self.uri, rel)))
        return path

    def __repr__(self) -> str:
        return f"StoredCheckpoint({self.uri!r})"


#: The metric Ray Train's CheckpointConfig ranks checkpoints by (higher is better): the validation
#: score, or -1 on an epoch without validation. Never NaN: Ray Train's checkpoint record stores NaN
#: as null, and a rerun that restores that record cannot rank a null score.
CHECKPOINT_SCORE = "checkpoint_score"


def checkpoint_score(value: float) -> float:
    """``value`` if it is a score, else -1 (ranked below every score in [0, 1])."""
    return value if math.isfinite(value) else -1.0


def _score(metrics: dict[str, Any]) -> float:
    v = metrics.get(CHECKPOINT_SCORE, metrics.get("val_miou"))
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def _delete_folder(uri: str) -> None:
    fs, root = storage.resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(root)  # recursive


class LocalSession:
    """One worker in this process, no Ray: checkpoints and their index under ``run_uri``."""

    def __init__(self, run_uri: str, keep: int, use_gpu: bool) -> None:
        if use_gpu and not torch.cuda.is_available():
            raise ValueError("run.use_gpu is set but torch sees no GPU here: set run.use_gpu=false to train on the CPU")
        self.rank, self.world = 0, 1
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.run_uri, self.keep = run_uri, keep
        self.kept: list[dict[str, Any]] = []  # [{"name": "epoch-0003", "metrics": {...}}], in epoch order
        index = storage.join(run_uri, INDEX)
        if storage.exists(index):
            self.kept = list(json.loads(storage.read_bytes(index))["kept"])

    def checkpoint(self) -> StoredCheckpoint | None:
        return StoredCheckpoint(storage.join(self.run_uri, self.kept[-1]["name"])) if self.kept else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model

    def report(self, metrics: dict[str, Any], folder: str | None, name: str) -> None:
        if folder is None:
            return
        uri = storage.join(self.run_uri, name)
        local = None if storage.is_s3(uri) else Path(storage.resolve(uri)[1])
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            rel = str(f.relative_to(folder))
            if local is None:
                storage.write_bytes(storage.join(uri, rel), f.read_bytes())
            else:  # a move: an epoch's checkpoint is hundreds of MB on a GPU recipe, written every epoch
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(f, local / rel)
        self.kept = [k for k in self.kept if k["name"] != name] + [{"name": name, "metrics": metrics}]
        # As Ray's CheckpointConfig(num_to_keep): the best ``keep`` by the task's val score, and the latest
        # to resume from.
        best = sorted(self.kept, key=lambda k: _score(k["metrics"]), reverse=True)[: self.keep]
        dropped = [k for k in self.kept[:-1] if k not in best]
        self.kept = [k for k in self.kept if k not in dropped]
        # The index names only complete folders: written after the upload, before anything is deleted.
        storage.write_bytes(storage.join(self.run_uri, INDEX), json.dumps({"kept": self.kept}, indent=1).encode())
        for k in dropped:
            _delete_folder(storage.join(self.run_uri, k["name"]))

    def results(self) -> tuple[StoredCheckpoint | None, list[tuple[StoredCheckpoint, dict[str, Any]]]]:
        """(latest, kept with their metrics): what Ray's ``Result`` gives as checkpoint and best_checkpoints."""
        kept = [(StoredCheckpoint(storage.join(self.run_uri, k["name"])), k["metrics"]) for k in self.kept]
        return (kept[-1][0] if kept else None), kept


#: The test suite's fault drill: the driver's environment names the epoch (1-based) in which rank 0 dies.
FAULT_DRILL_ENV = "SEGRAY_FAULT_DRILL_EPOCH"


def fault_drill_epoch() -> int | None:
    """The drill's epoch from the driver's environment (``FAULT_DRILL_ENV``), or None: no drill."""
    import os

    value = os.environ.get(FAULT_DRILL_ENV, "")
    return int(value) if value.strip() else None


def maybe_inject_failure(at_epoch: int | None, run_uri: str, epoch: int, rank: int) -> None:
    """Fault drill (:data:`FAULT_DRILL_ENV`): rank 0's process dies (SIGKILL, as a lost node would)
    once, mid-epoch ``at_epoch``, after a training step of that epoch; a marker file in the run
    folder keeps the restarted workers from dying again."""
    if at_epoch != epoch or rank != 0:
        return
    import logging
    import os
    import signal

    marker = storage.join(run_uri, f"_injected_failure_epoch_{epoch}")
    if storage.exists(marker):
        return
    storage.write_bytes(marker, b"")
    logging.getLogger("segray.train").warning("injected failure: killing rank 0 mid-epoch %d", epoch)
    os.kill(os.getpid(), signal.SIGKILL)
