"""Checkpoint folder contents, pickle-free: tensors in safetensors, everything else in JSON::

model.safetensors      the bare model's state dict (DDP wrapper removed)
optimizer.safetensors  optimizer tensors, keyed ``<param index>.<name>`` (AdamW: step, exp_avg, exp_avg_sq)
state.json             epochs done, global step, optimizer param groups, LR scheduler and AMP
                       scaler state, per-epoch history (for curves), the run's identity
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MODEL = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """``extra``: more safetensors files beside the model's, ``{file name: tensors}`` (e.g. training-only heads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / MODEL))
    opt = optimizer.state_dict()
    tensors = {}
    for idx, slots in opt["state"].items():
        for name, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(folder / OPTIMIZER))
    for name, weights in (extra or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(folder / name))
    (folder / STATE).write_text(json.dumps({**state, "param_groups": opt["param_groups"]}, indent=1))


def load_state(folder: str | Path) -> dict[str, Any]:
    return dict(json.loads((Path(folder) / STATE).read_text()))


def load_model_weights(folder: str | Path, name: str = MODEL) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / name))


def restore_optimizer(folder: str | Path, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Rebuild the optimizer's state dict from the safetensors slots and the JSON param groups."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(Path(folder) / OPTIMIZER)).items():
        idx, name = key.split(".", 1)
        slots.setdefault(int(idx), {})[name] = t
    optimizer.load_state_dict({"state": slots, "param_groups": state["param_groups"]})
