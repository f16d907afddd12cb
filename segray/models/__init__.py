"""Model registry: architecture name -> builder. One plain dict, as segmentation-models-pytorch does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of processes that only read/decode frames
    import torch
    from torch import nn

#: segray architecture name -> segmentation-models-pytorch architecture name.
ARCHITECTURES: dict[str, str] = {"unet": "unet", "pspnet": "pspnet"}


def build_model(arch: str, encoder: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """An untrained model; encoder weights are loaded separately (no download at run time)."""
    import segmentation_models_pytorch as smp

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    try:
        return smp.create_model(
            ARCHITECTURES[arch], encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs
        )
    except KeyError as e:
        raise ValueError(f"unknown encoder {encoder!r} for {arch}: {e}") from e


def load_encoder_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy matching tensors (e.g. torchvision/timm ImageNet weights) into ``model.encoder``.

    Returns how many tensors were loaded; refuses a file that matches nothing, since that is
    almost always the wrong file.
    """
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    # Accept both bare encoder keys and keys prefixed with "encoder." (a whole smp model's file).
    cleaned = {k.removeprefix("encoder."): v for k, v in state.items()}
    matched = {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"{source}: no tensor matches the encoder's parameters (wrong file or encoder?)")
    encoder.load_state_dict(matched, strict=False)
    return len(matched)
