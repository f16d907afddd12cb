"""Tiny training recipes that fit the test Ray's 2 CPUs, and what a run leaves in its storage."""

from __future__ import annotations

from helpers.common import TINY_ENCODER
from segray import storage

SIZE = 64  # PSPNet's default depth-3 encoder works at 64x64 with the tiny encoder (8x8 features)


def recipe(data: str, storage_uri: str, arch: str, *extra: str) -> list[str]:
    """A tiny 2-worker CPU recipe that shares the test Ray's 2 CPUs (0.5 CPU, 1 thread per worker)."""
    return [
        f"name=tiny-{arch}",
        f"data.root={data}",
        f"model.arch={arch}",
        f"model.encoder={TINY_ENCODER}",
        f"model.height={SIZE}",
        f"model.width={SIZE}",
        f"run.storage={storage_uri}",
        "run.epochs=2",
        "run.batch_size=4",
        "run.val_batch_size=2",  # 5 val frames: 3 + 2 per worker, 2 batches vs 1 (uneven shards)
        "run.num_workers=2",
        "run.cpus_per_worker=0.5",
        "run.torch_threads=1",
        "run.max_failures=0",
        "optim.warmup_epochs=0.5",
        "augment.scale_min=0.75",
        "augment.scale_max=1.25",
        *extra,
    ]


def checkpoint_dirs(run_uri: str) -> list[str]:
    """The names of the ``epoch-NNNN`` checkpoints a run kept, oldest first."""
    fs, path = storage.resolve(run_uri)
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(i.base_name for i in infos if i.base_name.startswith("epoch-"))
