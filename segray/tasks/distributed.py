"""Collectives over the workers of a distributed run; each is a no-op for one worker (``--no-ray``)."""

from __future__ import annotations

from typing import Any

import torch


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the workers, in place."""
    import torch.distributed as dist

    if _distributed():
        dist.all_reduce(t)
    return t


def gather(obj: Any) -> list[Any]:
    """``obj`` from every worker (a one-item list for one worker)."""
    import torch.distributed as dist

    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
