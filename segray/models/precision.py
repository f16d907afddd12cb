"""Mixed precision: the half type a device computes in, shared by training, labelling and serving."""

from __future__ import annotations

import torch


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 on GPUs that have it, else float16; None (full precision) on CPUs or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the GPU where torch sees one, else the CPU; any other value as torch names devices."""
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
