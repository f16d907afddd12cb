"""Joint image + mask augmentation with torchvision.transforms.v2 (masks resize with nearest, pad
with the ignore id, and are left alone by colour jitter). Validation gets none of it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchvision.transforms import v2

    from segray.training.config import AugmentConfig


def train_transform(cfg: AugmentConfig, height: int, width: int, ignore_id: int) -> v2.Transform:
    """Colour jitter, random scale of the model-size frame, random crop (padded with ignore), flip."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    crop = (cfg.crop_height or height, cfg.crop_width or width)
    if not cfg.enabled:
        return v2.Compose([v2.CenterCrop(crop)]) if crop != (height, width) else v2.Identity()
    short = min(height, width)
    steps: list[v2.Transform] = []
    if any((cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)):
        # First, so that the padding below stays black (contrast jitter would shift it).
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0):
        # RandomResize draws the shorter side from [min, max) and keeps the aspect ratio.
        steps.append(v2.RandomResize(max(8, round(short * cfg.scale_min)), max(9, round(short * cfg.scale_max) + 1)))
    steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_id}))
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip))
    return v2.Compose(steps)
