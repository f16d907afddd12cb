"""``segray model convert-weights``: a PyTorch checkpoint (``.pth``/``.pt``/``.bin``/``.ckpt``) into
a safetensors file that ``model.encoder_weights`` accepts.

Pretrained weights are mostly published as pickles, and unpickling runs whatever code the file
names. The checkpoint is therefore read with ``torch.load(weights_only=True)``, which rebuilds
tensors and plain containers only and refuses anything else; the result is written as safetensors,
which segray loads without unpickling ever after.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import torch

from segray import storage

#: Keys under which training checkpoints wrap the model's state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict")


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote: tensor count, entries left out, and (when checked) encoder fit."""

    tensors: int
    skipped: int
    encoder_matched: int | None = None
    encoder_total: int | None = None


def read_checkpoint(uri: str) -> tuple[dict[str, torch.Tensor], int]:
    """The tensors of a checkpoint (local or s3://), with ``module.`` (DDP) prefixes removed, and how
    many entries were left out for not being tensors.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``/``model_state``, and
    ``.safetensors`` files as they are. Refuses pickles that need anything beyond tensors.
    """
    data = storage.read_bytes(uri)
    if uri.endswith(".safetensors"):
        from safetensors.torch import load as st_load

        try:
            obj: Any = st_load(data)
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise ValueError(f"{uri}: not a valid safetensors file ({e})") from e
        return _clean(obj, uri)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{uri}: refused: it is not a plain tensor checkpoint (torch.load with weights_only: "
            f"{_unpickling_detail(e)}); loading it could run code from the file, so only plain tensor "
            "checkpoints (a state dict of tensors) are accepted"
        ) from e
    except Exception as e:  # noqa: BLE001 - weights_only ran no code; any other failure is a bad file
        raise ValueError(f"{uri}: not a PyTorch checkpoint ({e})") from e
    return _clean(obj, uri)


def _unpickling_detail(e: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met (its other lines are boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    return (lines[0] if lines else type(e).__name__).removeprefix("WeightsUnpickler error:").strip()[:200]


def _clean(obj: Any, uri: str) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict inside ``obj`` (tensors only, prefixes stripped) and how many entries were not tensors."""
    if not isinstance(obj, dict):
        raise ValueError(f"{uri}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {
        str(k).removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor) and not v.is_sparse
    }
    if not state:
        raise ValueError(f"{uri}: no tensors found (expected a state dict, or one under {list(WRAPPER_KEYS)})")
    return state, len(obj) - len(state)


def encoder_fit(state: dict[str, torch.Tensor], arch: str, encoder: str) -> tuple[int, int]:
    """How many of ``arch``/``encoder``'s encoder tensors ``state`` provides (by name and shape), of how many."""
    from segray.models import build_model, match_encoder_tensors

    model = build_model(arch, encoder, 1)
    return len(match_encoder_tensors(model, state)), len(model.get_submodule("encoder").state_dict())


def convert_weights(src: str, dst: str, *, arch: str | None = None, encoder: str | None = None) -> Converted:
    """Write ``src``'s tensors to ``dst`` as safetensors; with ``encoder``, refuse a file that fits none
    of that encoder's tensors (nothing is written then)."""
    from safetensors.torch import save as st_save

    if not dst.endswith(".safetensors"):
        raise ValueError(f"{dst}: the output must be a .safetensors file")
    state, skipped = read_checkpoint(src)
    matched = total = None
    if encoder:
        matched, total = encoder_fit(state, arch or "unet", encoder)
        if not matched:
            raise ValueError(
                f"{src}: none of its {len(state)} tensors fits the {encoder} encoder ({arch or 'unet'}); "
                "wrong file or encoder? Nothing written."
            )
    # safetensors refuses tensors that share storage or are not contiguous: give each its own copy.
    storage.write_bytes(dst, st_save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}))
    return Converted(len(state), skipped, matched, total)
