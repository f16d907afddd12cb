"""Where a run's weights start: from scratch, from encoder weights in a file, or from an artifact.

Fine-tuning from an artifact keeps everything whose name and shape fit; when the label map's
classes differ (names or count) the segmentation head is re-initialised, and :func:`describe_init`
says so before the run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segray.labels import LabelMap

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

    from segray.recipe import ModelConfig

#: Parameter-name prefix of the class-dependent head, per architecture (smp's default otherwise):
#: what is re-initialised when the classes change. torchvision FCN's last classifier layer is [4].
HEAD_PREFIXES: dict[str, str] = {"fcn": "classifier.4."}
HEAD_PREFIX = "segmentation_head."


def describe_init(cfg: ModelConfig, label_map: LabelMap) -> str:
    """One line for the log and the exported artifact's metrics (reads only the artifact's JSON)."""
    if cfg.init_artifact:
        from segray.models.artifact import read_info

        info = read_info(cfg.init_artifact)
        if info.label_map.names != label_map.names:
            return (
                f"fine-tuning from artifact {cfg.init_artifact} ({info.model_id}); its classes "
                f"({info.label_map.num_classes}: {info.label_map.name}) differ from the data's "
                f"({label_map.num_classes}: {label_map.name}): the segmentation head is re-initialised"
            )
        return f"fine-tuning from artifact {cfg.init_artifact} ({info.model_id}), same classes, head kept"
    if cfg.encoder_weights:
        return f"encoder weights from {cfg.encoder_weights}, decoder and head from scratch"
    return "from scratch (random initialisation)"


def initial_model(
    cfg: ModelConfig, label_map: LabelMap, seed: int = 0, bands: Sequence[str | int] | None = None
) -> nn.Module:
    """The model a run starts from; ``bands``: a band model's input bands (one channel each)."""
    import torch

    from segray.models.artifact import init_artifact

    if not cfg.init_artifact:
        model = init_artifact(
            cfg.arch,
            cfg.encoder,
            label_map,
            height=cfg.height,
            width=cfg.width,
            encoder_weights=cfg.encoder_weights,
            model_kwargs=cfg.kwargs,
            seed=seed,
            bands=tuple(str(b) for b in bands or ()),
            band_mean=(0.0,) * len(bands) if bands else None,  # the run's statistics go into the export
            band_std=(1.0,) * len(bands) if bands else None,
        ).model.train()
        return model
    from segray.models import build_model
    from segray.models.artifact import ModelArtifact

    src = ModelArtifact.load(cfg.init_artifact)
    if src.arch != cfg.arch:
        raise ValueError(
            f"model.init_artifact {cfg.init_artifact} is a {src.arch} but model.arch is {cfg.arch!r}; set model.arch"
        )
    torch.manual_seed(seed)
    config = dict(getattr(src.model, "_hub_mixin_config", None) or {})
    encoder_name = config.pop("encoder_name", cfg.encoder)
    if encoder_name != cfg.encoder:
        raise ValueError(
            f"model.init_artifact {cfg.init_artifact} has encoder {encoder_name!r} but model.encoder is "
            f"{cfg.encoder!r}; set model.encoder"
        )
    kwargs = {**model_kwargs(cfg), "in_channels": src.preprocessing.channels}  # the artifact's bands, or RGB
    if bands and len(bands) != src.preprocessing.channels:
        raise ValueError(
            f"model.init_artifact {cfg.init_artifact} takes {src.preprocessing.channels} input channels, "
            f"data.bands names {len(bands)}"
        )
    model = build_model(cfg.arch, cfg.encoder, label_map.num_classes, **kwargs)
    state = src.model.state_dict()
    if src.label_map.names != label_map.names:
        head = HEAD_PREFIXES.get(cfg.arch, HEAD_PREFIX)
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    own = model.state_dict()
    misfit = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if misfit:
        raise ValueError(
            f"model.init_artifact {cfg.init_artifact}: weights do not fit {cfg.arch}/{cfg.encoder}: {misfit[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return model.train()


def freeze_unused(model: nn.Module, height: int, width: int, device: Any, channels: int = 3) -> list[str]:
    """Freeze parameters that one forward/backward pass does not reach, and name them.

    smp's PSPNet builds all encoder stages but uses only the first ``encoder_depth``; DDP then
    waits forever for their gradients ("Expected to have finished reduction"). Freezing them is
    cheaper than ``find_unused_parameters=True`` (no graph walk each step) and works for any
    architecture the registry gains. The pass runs in eval mode, so BatchNorm statistics are untouched.
    ``channels``: the model's input channels (3 for RGB frames, one per band for a band model).
    """
    import torch

    was_training = model.training
    model.eval()
    out = model(torch.zeros(2, channels, height, width, device=device))
    out.float().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in model.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The architecture options a run trains with: an init artifact's own (decoder channels, depth,
    ...), then the recipe's ``model.kwargs``."""
    if not cfg.init_artifact:
        return dict(cfg.kwargs)
    import json

    from segray import storage
    from segray.models.artifact import CONFIG

    config = json.loads(storage.read_bytes(storage.join(cfg.init_artifact, CONFIG)))
    keep = {k: v for k, v in config.items() if not k.startswith("_")}
    for key in ("encoder_name", "classes", "encoder_weights"):
        keep.pop(key, None)
    return {**keep, **cfg.kwargs}
