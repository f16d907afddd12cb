"""Joint image + mask augmentation with torchvision.transforms.v2 (masks resize with centred
nearest-neighbour, pad with the ignore id, and are left alone by colour jitter). Validation gets
none of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

if TYPE_CHECKING:
    from segray.recipe import AugmentConfig


class CentredRandomResize(v2.RandomResize):
    """``v2.RandomResize`` whose masks sample each output pixel's centre (``NEAREST_EXACT``).

    torchvision resizes masks with ``NEAREST`` (``floor(i * scale)``), which shifts a mask against
    its bilinear-resized frame by about ``(1 / scale - 1) / 2`` source pixels (a third of one at
    progressive resizing's 0.6), to the other side after every flip: thin classes learned from
    jittered edges.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return super().transform(inpt, params)


def scaled_crop(crop: tuple[int, int], factor: float) -> tuple[int, int]:
    """``crop`` times ``factor``, rounded down to multiples of 32 (what every encoder accepts)."""
    if factor == 1.0:
        return crop
    return (max(32, int(crop[0] * factor) // 32 * 32), max(32, int(crop[1] * factor) // 32 * 32))


def train_transform(cfg: AugmentConfig, height: int, width: int, ignore_id: int, factor: float = 1.0) -> v2.Transform:
    """Colour jitter, random scale of the model-size frame, random crop (padded with ignore), flip.

    ``factor`` < 1 shrinks the whole scene and the crop together (progressive resizing's cheap
    early epochs): the crop keeps the same share of the scene, only with fewer pixels.
    """
    crop = scaled_crop((cfg.crop_height or height, cfg.crop_width or width), factor)
    short = min(height, width) * factor
    steps: list[v2.Transform] = []
    if any((cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)):
        # First, so that the padding below stays black (contrast jitter would shift it).
        steps.append(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))
    if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0) or factor != 1.0:
        # RandomResize draws the shorter side from [min, max) and keeps the aspect ratio.
        low, high = max(8, round(short * cfg.scale_min)), max(9, round(short * cfg.scale_max) + 1)
        steps.append(CentredRandomResize(low, high))
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_id}
    steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill=fill))
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip))
    return v2.Compose(steps)
