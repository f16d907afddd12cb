"""torchvision's FCN (the FCN of the KITTI-road and vineyard tutorials) as a segray model.

torchvision returns ``{"out": logits, "aux": ...}``; segray's trainer and labelling job expect a
plain logits tensor, so :class:`TorchvisionFCN` keeps torchvision's modules (and so its state-dict
keys: ``backbone.*``, ``classifier.*``, loadable from a torchvision FCN checkpoint converted to
safetensors) and returns ``out`` only. The auxiliary head is off. ``in_channels`` other than 3 (a band
model) replaces the ResNet stem's convolution with one of that many inputs. It has no smp
``save_pretrained``, so it carries its builder arguments in ``config`` and the artifact writes those
as ``config.json`` (keys starting with ``_`` are notes for readers, not builder arguments, as in
smp's config).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: FCN backbones torchvision builds (ResNet-50/101, dilated, output stride 8).
FCN_ENCODERS = ("resnet50", "resnet101")


class TorchvisionFCN(nn.Module):
    """FCN-ResNet with a tensor output; ``encoder`` is the backbone (for ImageNet weights)."""

    def __init__(self, encoder_name: str = "resnet50", classes: int = 21, in_channels: int = 3) -> None:
        from torchvision.models.segmentation import fcn_resnet50, fcn_resnet101

        builders = {"resnet50": fcn_resnet50, "resnet101": fcn_resnet101}
        if encoder_name not in builders:
            raise ValueError(f"unknown encoder {encoder_name!r} for fcn; torchvision builds {list(FCN_ENCODERS)}")
        tv = builders[encoder_name](weights=None, weights_backbone=None, num_classes=classes, aux_loss=False)
        super().__init__()
        self.backbone = tv.backbone
        self.classifier = tv.classifier
        self.config: dict[str, Any] = {"_segray_arch": "fcn", "encoder_name": encoder_name, "classes": classes}
        if in_channels != 3:
            # ResNet's stem with another input count (a band model); same name, so keys do not change.
            conv = self.backbone.conv1
            self.backbone.conv1 = nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False
            )
            self.config["in_channels"] = in_channels  # written only when not 3: RGB configs stay as they were

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision's _SimpleSegmentationModel.forward without the dict and the aux head.
        out = self.classifier(self.backbone(x)["out"])
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
