"""Model registry: architecture name -> builder. One plain dict, as segmentation-models-pytorch does.

Every smp architecture is available under smp's own name (``unet``, ``fpn``, ``deeplabv3plus``, ...),
plus ``fcn``: torchvision's FCN-ResNet50/101 (see :mod:`segray.models.fcn`). All build the same
way (``build_model(arch, encoder, num_classes)``), return plain logits ``(N, C, H, W)`` and save
into the same artifact format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of processes that only read/decode frames
    import torch
    from torch import nn

#: smp's architectures (its MODEL_ARCHITECTURES_MAPPING keys in 0.6.0), kept literal so that the
#: registry can be read without importing smp.
SMP_ARCHITECTURES = (
    "unet",
    "unetplusplus",
    "manet",
    "linknet",
    "fpn",
    "pspnet",
    "deeplabv3",
    "deeplabv3plus",
    "pan",
    "upernet",
    "segformer",
    "dpt",
)
#: segray architecture name -> the library that builds it, as ``"<library>:<its name>"``.
ARCHITECTURES: dict[str, str] = {
    **{name: f"smp:{name}" for name in SMP_ARCHITECTURES},
    "fcn": "torchvision:fcn",
}


def build_model(arch: str, encoder: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """An untrained model; encoder weights are loaded separately (no download at run time)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    library, name = ARCHITECTURES[arch].split(":", 1)
    if library == "torchvision":
        from segray.models.fcn import TorchvisionFCN

        if kwargs:
            raise ValueError(f"fcn takes no extra model arguments, got {sorted(kwargs)}")
        return TorchvisionFCN(encoder, num_classes)
    import segmentation_models_pytorch as smp

    try:
        return smp.create_model(name, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)
    except KeyError as e:
        raise ValueError(f"unknown encoder {encoder!r} for {arch}: {e}") from e


def load_encoder_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy matching tensors (e.g. torchvision/timm ImageNet weights) into ``model.encoder``.

    Returns how many tensors were loaded; refuses a file that matches nothing, since that is
    almost always the wrong file.
    """
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    # Accept bare encoder keys and keys prefixed with "encoder." (a whole smp model's file) or
    # "backbone." (a whole torchvision segmentation model's file).
    cleaned = {k.removeprefix("encoder.").removeprefix("backbone."): v for k, v in state.items()}
    matched = {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError(f"{source}: no tensor matches the encoder's parameters (wrong file or encoder?)")
    encoder.load_state_dict(matched, strict=False)
    return len(matched)
