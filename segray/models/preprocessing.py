"""What a model expects of its input: the size policy and the normalisation.

Kept as data in the artifact (not code) so that labelling, training and evaluation agree.
ImageNet mean/std are constants here: smp's ``get_preprocessing_fn`` would call the Hub.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Frames are resized to ``height`` x ``width`` (multiples of 32) and normalised with mean/std
    on the device; predictions are resized back to the frame's own size.

    ``hflip_average``: the model also sees each frame's mirror image, and the two logits (the
    second mirrored back) are averaged: fewer errors for twice the model's cost (README). It is a
    property of the artifact, not of a run, so evaluation and labelling predict the same way, and
    the model id says so (``segray.models.artifact``)."""

    height: int = 352
    width: int = 480
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    policy: str = "resize"
    hflip_average: bool = False

    def __post_init__(self) -> None:
        if self.policy != "resize":
            raise ValueError(f"unknown input size policy {self.policy!r} (supported: resize)")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"model input size {self.height}x{self.width} must be positive multiples of 32")

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) at any size -> uint8 (height, width, 3)."""
        from segray.frames.decode import resize

        return resize(rgb, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            policy=str(d.get("policy", "resize")),
            hflip_average=_flag(d.get("hflip_average", False)),
        )


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"preprocessing.hflip_average must be true or false, not {v!r}")
    return v


def pixel_stats(mean: Any, std: Any, device: Any = None) -> tuple[Any, Any]:
    """Mean and std (0-1 scale, per channel) as (1, 3, 1, 1) tensors on the 0-255 scale, on ``device``."""
    import torch

    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255
    return m, s


def normalise(images: Any, mean: Any, std: Any) -> Any:
    """uint8 (N, 3, H, W) frames -> float, normalised, channels-last (what every model call takes).

    ``mean``/``std`` from :func:`pixel_stats`. Training, validation, calibration and the labelling
    job's Predictor all call this, so a model sees the same numbers wherever it runs."""
    import torch

    return images.float().sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def forward(model: Any, x: Any, hflip_average: bool) -> Any:
    """The model's logits for the normalised batch ``x`` (N, 3, H, W), flip-averaged if asked.

    Two calls rather than one on a doubled batch: the same cost, half the peak memory."""
    out = model(x)
    if hflip_average:
        out = (out + model(x.flip(3)).flip(3)) / 2
    return out
