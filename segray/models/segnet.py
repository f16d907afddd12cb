"""SegNet (Badrinarayanan, Kendall and Cipolla, 2017): a VGG16-BN encoder whose five max-poolings
remember where each maximum came from, and a mirrored decoder that puts every value back there
(``max_unpool2d``) before its convolutions densify the sparse map.

The encoder is torchvision's VGG16-BN feature stack (``features.0`` ... ``features.43``), so
torchvision's ImageNet ``vgg16_bn`` weights, converted with ``segray model convert-weights``, load
into it by name. The decoder has the paper's 13 convolutions (3x3, BatchNorm, ReLU), the last one a
3x3 class convolution (``segmentation_head``). Unpooling is told each pre-pooling size, so any frame
of at least 32x32 works, multiples of 32 or not (360x480 as it is).

``width_multiplier`` scales every layer's channels, for CPU budgets; ImageNet weights fit only 1.0.
``in_channels`` other than 3 (a band model) gives the first convolution that many inputs.
Like :mod:`segray.models.fcn`, the model carries its builder arguments in ``config``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Encoders SegNet builds: the paper's VGG16 with BatchNorm.
SEGNET_ENCODERS = ("vgg16_bn",)
#: torchvision's VGG16 layer plan ("D"): channels per 3x3 convolution, "M" a 2x2 max-pooling.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
#: Five 2x2 poolings: the smallest frame side that leaves one pixel at the bottom.
MIN_SIDE = 32


def _scaled(channels: int, width_multiplier: float) -> int:
    return max(8, round(channels * width_multiplier))


class VGGEncoder(nn.Module):
    """torchvision's VGG16-BN ``features`` (same keys), returning pooling indices and pre-pooling sizes."""

    def __init__(self, width_multiplier: float = 1.0, in_channels: int = 3) -> None:
        from torchvision.models.vgg import make_layers

        super().__init__()
        plan = [v if v == "M" else _scaled(int(v), width_multiplier) for v in VGG16]
        self.features = make_layers(plan, batch_norm=True)
        if in_channels != 3:  # torchvision's make_layers starts from 3 channels; same key, features.0
            first = self.features[0]
            assert isinstance(first, nn.Conv2d)
            self.features[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.return_indices = True
        #: Output channels of each of the five stages.
        self.stage_channels = [int(plan[i - 1]) for i, v in enumerate(plan) if v == "M"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Size]]]:
        pools: list[tuple[torch.Tensor, torch.Size]] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, indices = layer(x)
                pools.append((indices, size))
            else:
                x = layer(x)
        return x, pools


def unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Each value of ``x`` back where its 2x2 pooling found it, zeros elsewhere, at the pre-pooling
    ``size`` (which keeps the odd row or column a floor-mode pooling dropped)."""
    return F.max_unpool2d(x, indices, (2, 2), (2, 2), output_size=size)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SegNet(nn.Module):
    """SegNet-VGG16-BN returning plain logits ``(N, classes, H, W)``."""

    def __init__(
        self, encoder_name: str = "vgg16_bn", classes: int = 11, width_multiplier: float = 1.0, in_channels: int = 3
    ) -> None:
        if encoder_name not in SEGNET_ENCODERS:
            raise ValueError(f"unknown encoder {encoder_name!r} for segnet; it builds {list(SEGNET_ENCODERS)}")
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, (int, float)):
            raise ValueError(f"segnet width_multiplier must be a number in (0, 1], got {width_multiplier!r}")
        if not 0 < width_multiplier <= 1:
            raise ValueError(f"segnet width_multiplier must be in (0, 1], got {width_multiplier!r}")
        super().__init__()
        self.encoder = VGGEncoder(width_multiplier, in_channels)
        c1, c2, c3, c4, c5 = self.encoder.stage_channels
        # Decoder stages, deepest first, mirroring the encoder: (channels in, channels of each conv).
        plan = [(c5, [c5, c5, c4]), (c4, [c4, c4, c3]), (c3, [c3, c3, c2]), (c2, [c2, c1]), (c1, [c1])]
        stages = []
        for cin, outs in plan:
            layers: list[nn.Module] = []
            for cout in outs:
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(stages)
        self.segmentation_head = nn.Conv2d(c1, classes, 3, padding=1)
        self.config: dict[str, Any] = {
            "_segray_arch": "segnet",
            "encoder_name": encoder_name,
            "classes": classes,
            "width_multiplier": width_multiplier,
        }
        if in_channels != 3:  # written only when not 3: RGB configs stay as they were
            self.config["in_channels"] = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < MIN_SIDE or w < MIN_SIDE:
            raise ValueError(f"segnet needs frames of at least {MIN_SIDE}x{MIN_SIDE} (five 2x2 poolings), got {h}x{w}")
        x, pools = self.encoder(x)
        for stage, (indices, size) in zip(self.decoder, reversed(pools), strict=True):
            x = stage(unpool(x, indices, size))
        return self.segmentation_head(x)
