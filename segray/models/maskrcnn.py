"""Mask R-CNN (torchvision) for instance segmentation: one builder, backbones in a plain dict.

Classes: an instance artifact's label map lists the object classes only (ids ``0..N-1``); the
model adds background itself, so torchvision's label ``k`` (1-based) is label-map class ``k - 1``.

Input: a list of float RGB tensors ``(3, H, W)`` on the 0-1 scale; torchvision's transform
normalises them (ImageNet mean/std) and resizes them to ``min_size``/``max_size``, then maps boxes
and masks back to each input's size. Output in eval mode: one dict per image with ``boxes``
(x0, y0, x1, y1), ``labels``, ``scores`` and ``masks`` (``(N, 1, H, W)`` probabilities); in train
mode with targets, a dict of losses.

Backbones:

- ``resnet50_fpn_v2``: torchvision's ``maskrcnn_resnet50_fpn_v2`` (ResNet-50, FPN, conv box
  and mask heads with batch norm), about 46 M parameters; the one to train on a GPU.
- ``mobilenet_v3_small_fpn``: MobileNetV3-Small, a 64-channel FPN on its stride-8/16/32 stages,
  light heads and fewer proposals, about 2 M parameters; sized for CPUs, small frames and tests.

Starting weights come from a local or ``s3://`` ``.safetensors`` file only (see
:func:`load_backbone_weights`); names are never downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: The architecture name instance artifacts record.
INSTANCE_ARCH = "maskrcnn"


def _resnet50_fpn_v2(num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    # All layers trainable and plain batch norm whatever the starting weights, so the state dict
    # (and so the artifact) is the same with or without them.
    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def _mobilenet_v3_small_fpn(num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor

    channels = 64
    features = mobilenet_v3_small(weights=None).features
    # The strided blocks (torchvision's _mobilenet_extractor); the last three end at strides 8, 16, 32.
    stages = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    taken = stages[-3:]
    body = BackboneWithFPN(
        features,
        {str(i): str(n) for n, i in enumerate(taken)},
        [features[i].out_channels for i in taken],
        channels,
    )
    levels = len(taken) + 1  # plus the max-pooled level
    anchors = AnchorGenerator(tuple((16 * 2**k,) for k in range(levels)), ((0.5, 1.0, 2.0),) * levels)
    defaults = {
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 128,
    }
    return MaskRCNN(
        body,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_head=MaskRCNNHeads(channels, [channels, channels], 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
        **{**defaults, **kwargs},
    )


#: Backbone name -> builder(num_classes including background, torchvision MaskRCNN keyword arguments).
INSTANCE_BACKBONES: dict[str, Callable[[int, dict[str, Any]], nn.Module]] = {
    "resnet50_fpn_v2": _resnet50_fpn_v2,
    "mobilenet_v3_small_fpn": _mobilenet_v3_small_fpn,
}


def build_instance_model(
    backbone: str,
    num_classes: int,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    detections_per_img: int = 100,
    backbone_weights: str | None = None,
) -> nn.Module:
    """A new Mask R-CNN for ``num_classes`` object classes (background is added here).

    ``min_size``/``max_size``: the size torchvision's transform resizes inputs to (shorter side,
    longest side cap). ``backbone_weights``: a local or ``s3://`` ``.safetensors`` file, see
    :func:`load_backbone_weights`. The model carries its builder arguments in ``config`` (what the
    artifact writes as ``config.json``); it is returned in train mode, as torch builds modules.
    """
    if backbone not in INSTANCE_BACKBONES:
        raise ValueError(f"unknown instance backbone {backbone!r}; choose from {sorted(INSTANCE_BACKBONES)}")
    if num_classes < 1:
        raise ValueError(f"an instance model needs at least one object class, got {num_classes}")
    if not 0 < min_size <= max_size:
        raise ValueError(f"min_size {min_size} and max_size {max_size}: need 0 < min_size <= max_size")
    if detections_per_img < 1:
        raise ValueError(f"detections_per_img must be >= 1, got {detections_per_img}")
    kwargs = {"min_size": min_size, "max_size": max_size, "box_detections_per_img": detections_per_img}
    model = INSTANCE_BACKBONES[backbone](num_classes + 1, kwargs)
    model.config = {  # type: ignore[assignment]
        "_segray_arch": INSTANCE_ARCH,
        "encoder_name": backbone,
        "classes": num_classes,
        "min_size": min_size,
        "max_size": max_size,
        "detections_per_img": detections_per_img,
    }
    if backbone_weights:
        load_backbone_weights(model, read_weights_file(backbone_weights), backbone_weights)
    return model


def read_weights_file(uri: str) -> dict[str, torch.Tensor]:
    """The tensors of a local or ``s3://`` ``.safetensors`` file; a name or a pickle is refused clearly."""
    from safetensors.torch import load as st_load

    from segray import storage

    if not uri.endswith(".safetensors"):
        hint = (
            "weights are not downloaded by name"
            if not any(c in uri for c in "/\\.")
            else "pickled checkpoints (.pth, .pt) are refused"
        )
        raise ValueError(
            f"{uri}: backbone weights must be a local or s3:// .safetensors file ({hint}); download "
            "torchvision's weights (ImageNet resnet50 / mobilenet_v3_small, or a whole COCO Mask R-CNN) on a "
            "machine with a network and convert them with `segray model convert-weights IN.pth OUT.safetensors`"
        )
    if not storage.exists(uri):
        raise ValueError(f"{uri}: no such weights file")
    try:
        return st_load(storage.read_bytes(uri))
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise ValueError(f"{uri}: not a valid safetensors file ({e})") from e


def match_backbone_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that fit ``model`` by name and shape, keyed as the model's.

    A whole Mask R-CNN file (COCO weights) matches by its own keys, so everything but the
    class-specific predictors (other shapes) is taken; an ImageNet classification file
    (``conv1.weight``, ``layer1.*`` / ``features.*``) fills the backbone body.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for candidate in (key, f"backbone.body.{key}", f"backbone.body.{key.removeprefix('features.')}"):
            if candidate in own and own[candidate].shape == value.shape:
                out[candidate] = value
                break
    return out


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int:
    """Copy the matching tensors of ``state`` into ``model``; returns how many. A file that fits
    nothing is refused: it is almost always the wrong file or the wrong backbone."""
    matched = match_backbone_tensors(model, state)
    if not matched:
        backbone = getattr(model, "config", {}).get("encoder_name", "?")
        raise ValueError(f"{source}: no tensor matches the {backbone} Mask R-CNN (wrong file or backbone?)")
    model.load_state_dict(matched, strict=False)
    return len(matched)


def to_class_index(labels: torch.Tensor) -> torch.Tensor:
    """torchvision labels (1-based, 0 = background) -> label-map class indices."""
    return labels - 1


def to_model_labels(classes: torch.Tensor) -> torch.Tensor:
    """Label-map class indices -> torchvision labels, for training targets."""
    return classes + 1
