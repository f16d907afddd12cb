"""Model registry: architecture name -> builder. One plain dict, as segmentation-models-pytorch does.

Every smp architecture is available under smp's own name (``unet``, ``fpn``, ``deeplabv3plus``, ...),
plus ``fcn``: torchvision's FCN-ResNet50/101 (see :mod:`segray.models.fcn`) and ``segnet``: SegNet
with a VGG16-BN encoder (see :mod:`segray.models.segnet`). All build the same
way (``build_model(arch, encoder, num_classes)``), return plain logits ``(N, C, H, W)`` and save
into the same artifact format. ``maskrcnn`` (torchvision's Mask R-CNN, see :mod:`segray.models.maskrcnn`)
is the instance architecture: objects with a class, a score and a mask each (:data:`ARCHITECTURE_TASKS`).
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
    "segnet": "segray:segnet",
    "maskrcnn": "torchvision:maskrcnn",
}
#: The task each architecture trains and labels (:mod:`segray.tasks`); semantic unless named here.
ARCHITECTURE_TASKS: dict[str, str] = {arch: "instance" if arch == "maskrcnn" else "semantic" for arch in ARCHITECTURES}


def task_of(arch: str) -> str:
    """``semantic`` or ``instance``: what ``arch`` predicts."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURE_TASKS[arch]


def build_model(
    arch: str,
    encoder: str,
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """A new model, untrained unless ``encoder_weights`` names weights smp fetches (``imagenet``, ...).

    ``in_channels``: the input channels (3 for RGB frames, one per band for a band model; see
    :attr:`segray.models.preprocessing.Preprocessing.channels`). With named weights and another
    count than 3, smp adapts the pretrained first convolution (see :func:`adapt_first_conv`).

    Loading an artifact never passes a name, so it never downloads; a name needs a network or the
    Hugging Face cache (see :func:`segray.models.artifact.init_artifact` for the offline handling).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive whole number, got {in_channels!r}")
    library, name = ARCHITECTURES[arch].split(":", 1)
    if name == "maskrcnn":
        from segray.models.maskrcnn import build_instance_model

        if in_channels != 3:
            raise ValueError(f"{arch} takes RGB frames only (3 input channels), not {in_channels}")
        return build_instance_model(encoder, num_classes, backbone_weights=encoder_weights, **kwargs)
    if library == "torchvision":
        from segray.models.fcn import TorchvisionFCN

        if encoder_weights is not None:
            check_encoder_weights(arch, encoder, encoder_weights)
        if kwargs:
            raise ValueError(f"fcn takes no extra model arguments, got {sorted(kwargs)}")
        return TorchvisionFCN(encoder, num_classes, in_channels=in_channels)
    if library == "segray":
        from segray.models.segnet import SegNet

        if encoder_weights is not None:
            check_encoder_weights(arch, encoder, encoder_weights)
        unknown = sorted(set(kwargs) - {"width_multiplier"})
        if unknown:
            raise ValueError(f"segnet takes width_multiplier only as a model argument, got {unknown}")
        return SegNet(encoder, num_classes, in_channels=in_channels, **kwargs)
    import segmentation_models_pytorch as smp

    weights = None if encoder_weights is None else check_encoder_weights(arch, encoder, encoder_weights)
    try:
        return smp.create_model(
            name, encoder_name=encoder, encoder_weights=weights, classes=num_classes, in_channels=in_channels, **kwargs
        )
    except KeyError as e:
        raise ValueError(f"unknown encoder {encoder!r} for {arch}: {e}") from e


def model_in_channels(model: nn.Module) -> int:
    """The input channels of the encoder's first convolution (what the model takes)."""
    return int(first_conv(model)[1].in_channels)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The encoder's first convolution, by its name in the encoder's state dict: the layer whose
    input channels follow the model's, as smp finds it."""
    from torch import nn

    for name, module in model.get_submodule("encoder").named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{type(model).__name__}: its encoder has no convolution")


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's (out, c, kh, kw) weights for ``in_channels`` inputs, as smp 0.6 and timm
    adapt pretrained ones: summed over c for one channel, else channel i takes channel i mod c, and
    all are scaled by c / in_channels so that the layer's output keeps its size."""
    import torch

    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(in_channels) % c
    return weight[:, index] * (c / in_channels)


def check_encoder_weights(arch: str, encoder: str, name: str) -> str | bool:
    """Refuse a weights name smp cannot fetch for ``encoder`` (before any download is tried);
    returns what to pass smp as ``encoder_weights``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    if not ARCHITECTURES[arch].startswith("smp:"):
        raise ValueError(
            f"{arch} takes encoder weights as a .safetensors file only, not the name {name!r}: "
            f"convert torchvision's ImageNet {encoder} weights (a .pth file) with "
            "`segray model convert-weights IN.pth OUT.safetensors` and pass OUT.safetensors"
        )
    valid = encoder_weight_names(encoder)
    if name not in valid:
        raise ValueError(
            f"unknown encoder weights {name!r} for {encoder}; "
            + (f"smp has {valid}" if valid else "smp has no pretrained weights for it")
            + " (or give a local or s3:// .safetensors file)"
        )
    # smp wants True for timm encoders (the pretrained tag is part of the encoder name).
    return True if _is_timm(encoder) else name


def _is_timm(encoder: str) -> bool:
    from segmentation_models_pytorch.encoders import encoders, is_equivalent_to_timm_universal

    return encoder.startswith("tu-") or (encoder not in encoders and is_equivalent_to_timm_universal(encoder))


def _timm_name(encoder: str) -> str:
    """The timm model name smp builds for a ``tu-`` (or deprecated ``timm-``) encoder."""
    if encoder.startswith("tu-"):
        return encoder[3:]
    # smp's own mapping of its deprecated timm- names (segmentation_models_pytorch.encoders.get_encoder)
    name = encoder.removeprefix("timm-")
    return f"tf_{name}" if "mobilenetv3" in name else name


def encoder_weight_names(encoder: str) -> list[str]:
    """The weights names smp can fetch for ``encoder``: its registry's for smp encoders, ``imagenet``
    (timm's default pretrained tag) for timm ones that timm has weights for."""
    from segmentation_models_pytorch.encoders import encoders

    if encoder in encoders:
        return list(encoders[encoder]["pretrained_settings"])
    if _is_timm(encoder):
        import timm

        timm_name = _timm_name(encoder)
        if not timm.is_model(timm_name):
            raise ValueError(f"unknown encoder {encoder!r}: timm has no model {timm_name!r}")
        return ["imagenet"] if timm.models.is_model_pretrained(timm_name) else []
    raise ValueError(f"unknown encoder {encoder!r}; smp has {sorted(encoders)} and timm's as tu-<name>")


def encoder_weights_source(encoder: str, name: str) -> str | None:
    """Where smp fetches weights ``name`` for ``encoder`` from (a Hugging Face repository), if known."""
    from segmentation_models_pytorch.encoders import encoders

    if encoder in encoders:
        repo = encoders[encoder]["pretrained_settings"].get(name, {}).get("repo_id")
        return f"https://huggingface.co/{repo}" if repo else None
    if _is_timm(encoder):
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(_timm_name(encoder))
        except Exception:  # noqa: BLE001 - only a hint for an error message
            return None
        if cfg is not None and cfg.hf_hub_id:
            return f"https://huggingface.co/{cfg.hf_hub_id}"
        return getattr(cfg, "url", None) or None
    return None


def match_encoder_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that fit ``model.encoder`` by name and shape, keyed as the encoder's.

    Bare encoder keys and keys prefixed with ``encoder.`` (a whole smp model's file) or ``backbone.``
    (a whole torchvision segmentation model's file) are accepted.
    """
    own = model.get_submodule("encoder").state_dict()
    cleaned = {k.removeprefix("encoder.").removeprefix("backbone."): v for k, v in state.items()}
    return {k: v for k, v in cleaned.items() if k in own and own[k].shape == v.shape}


def load_encoder_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy matching tensors (e.g. torchvision/timm ImageNet weights) into ``model.encoder``.

    Returns how many tensors were loaded; refuses a file that matches nothing, or whose tensors have
    the encoder's names but other shapes (weights of another variant or width), since that is
    almost always the wrong file. The first convolution of a model with other input channels than
    the file's (a band model started from RGB ImageNet weights) is adapted as smp adapts named
    weights (:func:`adapt_first_conv`).
    """
    own = model.get_submodule("encoder").state_dict()
    cleaned = {k.removeprefix("encoder.").removeprefix("backbone."): v for k, v in state.items()}
    cleaned = _adapted_first_conv(model, own, cleaned)
    misshaped = [k for k, v in cleaned.items() if k in own and own[k].shape != v.shape]
    if misshaped:
        k = misshaped[0]
        width = getattr(model, "config", {}).get("width_multiplier", 1.0)
        raise ValueError(
            f"{source}: {len(misshaped)} of its tensors have the encoder's names but other shapes (e.g. {k}: "
            f"{tuple(cleaned[k].shape)} in the file, {tuple(own[k].shape)} in the model)"
            + (f"; ImageNet weights fit only width_multiplier 1.0, not {width}" if width != 1.0 else "")
        )
    matched = {k: v for k, v in cleaned.items() if k in own}
    if not matched:
        raise ValueError(f"{source}: no tensor matches the encoder's parameters (wrong file or encoder?)")
    model.get_submodule("encoder").load_state_dict(matched, strict=False)
    return len(matched)


def _adapted_first_conv(
    model: nn.Module, own: dict[str, torch.Tensor], cleaned: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``cleaned`` with the first convolution's weights adapted to the model's input channels, when
    only those differ (same out channels and kernel); anything else is left for the shape check."""
    name, _ = first_conv(model)
    key = f"{name}.weight"
    theirs, ours = cleaned.get(key), own.get(key)
    if theirs is None or ours is None or theirs.ndim != 4 or theirs.shape == ours.shape:
        return cleaned
    if theirs.shape[0] != ours.shape[0] or theirs.shape[2:] != ours.shape[2:]:
        return cleaned
    return {**cleaned, key: adapt_first_conv(theirs, int(ours.shape[1]))}
