"""What a model expects of its input: the size policy, the channels and the normalisation.

Kept as data in the artifact (not code) so that labelling, training and evaluation agree.
ImageNet mean/std are constants here: smp's ``get_preprocessing_fn`` would call the Hub.

A model takes either 8-bit RGB frames (``bands`` empty: 3 channels, mean/std on the 0-1 scale of
8-bit pixels) or N named bands of a geodata scene (``bands`` set: one channel per band, mean/std in
the scene's raw units, e.g. Sentinel-2 reflectance as uint16).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Channels of an RGB-frame model (``bands`` empty).
RGB_CHANNELS = 3
#: Input dtypes :func:`normalise` takes: 8-bit frames, 16-bit scene bands, float rasters.
INPUT_DTYPES = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class Preprocessing:
    """Frames are resized to ``height`` x ``width`` (multiples of 32) and normalised with mean/std
    on the device; predictions are resized back to the frame's own size.

    ``hflip_average``: the model also sees each frame's mirror image, and the two logits (the
    second mirrored back) are averaged: fewer errors for twice the model's cost (docs/models.md). It is a
    property of the artifact, not of a run, so evaluation and labelling predict the same way, and
    the model id says so (``segray.models.artifact``).

    ``bands``: empty for an RGB-frame model; else the scene bands the model takes, in channel
    order, each a band name (``B04``) or a 1-based band index (``"3"``), and then ``mean``/``std``
    hold one value per band in the scene's raw units (not scaled by 255)."""

    height: int = 352
    width: int = 480
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    policy: str = "resize"
    hflip_average: bool = False
    bands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.policy != "resize":
            raise ValueError(f"unknown input size policy {self.policy!r} (supported: resize)")
        if self.height % 32 or self.width % 32 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"model input size {self.height}x{self.width} must be positive multiples of 32")
        # Lists (from JSON or a caller) become tuples: the dataclass stays hashable and comparable.
        object.__setattr__(self, "bands", tuple(self.bands))
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        check_bands(self.bands)
        names = [f"band {b!r}" for b in self.bands] or [f"RGB channel {i}" for i in range(1, 4)]
        check_stats(self.mean, self.std, names)

    @property
    def channels(self) -> int:
        """Input channels of the model: one per band, or 3 for RGB frames."""
        return len(self.bands) or RGB_CHANNELS

    @property
    def pixel_scale(self) -> float:
        """What mean/std are multiplied by to meet the input's units: 255 for 8-bit RGB frames (mean/std
        are on the 0-1 scale), 1 for bands (mean/std are in the scene's raw units)."""
        return 1.0 if self.bands else 255.0

    def stats(self, device: Any = None) -> tuple[Any, Any]:
        """This model's mean and std as (1, C, 1, 1) tensors in the input's units (:func:`pixel_stats`)."""
        return pixel_stats(self.mean, self.std, device, scale=self.pixel_scale)

    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (H, W, 3) at any size -> uint8 (height, width, 3)."""
        from segray.frames.decode import resize

        return resize(rgb, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessing`` record of ``segray.json``; ``bands`` only when set, so an RGB
        model's record is what it has always been."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.bands:
            d["bands"] = list(self.bands)
        else:
            del d["bands"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        bands = d.get("bands") or []
        if not isinstance(bands, list):
            raise ValueError(f"preprocessing.bands must be a list of band names, not {bands!r}")
        return cls(
            height=int(d["height"]),
            width=int(d["width"]),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)),
            policy=str(d.get("policy", "resize")),
            hflip_average=_flag(d.get("hflip_average", False)),
            bands=tuple(bands),
        )


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"preprocessing.hflip_average must be true or false, not {v!r}")
    return v


def check_bands(bands: tuple[str, ...]) -> None:
    """Band names are non-empty strings without surrounding blanks, each once; an all-digit name is
    a 1-based band index."""
    seen: set[str] = set()
    for b in bands:
        if not isinstance(b, str) or not b or b != b.strip() or "," in b:
            raise ValueError(f"band {b!r}: a band is a non-empty name (B04) or a 1-based index (3), without blanks")
        if b.isdigit() and int(b) < 1:
            raise ValueError(f"band {b!r}: band indexes start at 1")
        if b in seen:
            raise ValueError(f"band {b!r} is named twice; each band is one input channel")
        seen.add(b)


def check_stats(mean: tuple[float, ...], std: tuple[float, ...], names: list[str]) -> None:
    """One finite mean and one positive std per channel; ``names`` says which channel is which."""
    channels = len(names)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"{channels} input channels need {channels} mean and {channels} std values, "
            f"got {len(mean)} mean {list(mean)} and {len(std)} std {list(std)}"
        )
    for name, m, s in zip(names, mean, std, strict=True):
        if not math.isfinite(m):
            raise ValueError(f"mean {m!r} of {name} is not a finite number")
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"std {s!r} of {name} must be a positive number")


def pixel_stats(mean: Any, std: Any, device: Any = None, *, scale: float = 255.0) -> tuple[Any, Any]:
    """Mean and std (per channel) as (1, C, 1, 1) float32 tensors times ``scale``, on ``device``.

    ``scale`` is 255 for RGB-frame models (their mean/std are on the 0-1 scale of 8-bit pixels) and
    1 for band models (raw units); :meth:`Preprocessing.stats` picks it."""
    import torch

    m = torch.tensor(list(mean), dtype=torch.float32, device=device)
    s = torch.tensor(list(std), dtype=torch.float32, device=device)
    return m.view(1, -1, 1, 1) * scale, s.view(1, -1, 1, 1) * scale


def normalise(images: Any, mean: Any, std: Any) -> Any:
    """(N, C, H, W) uint8 frames, or uint16/int16/float32 bands -> float32, normalised, channels-last
    (what every model call takes).

    ``mean``/``std`` from :func:`pixel_stats`. Training, validation, calibration and the labelling
    job's Predictor all call this, so a model sees the same numbers wherever it runs."""
    import torch

    dtype = str(images.dtype).removeprefix("torch.")
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"model input of dtype {dtype}: segray normalises {', '.join(INPUT_DTYPES)} inputs")
    channels = mean.shape[1] if isinstance(mean, torch.Tensor) and mean.ndim == 4 else None
    if channels is not None and (images.ndim != 4 or images.shape[1] != channels):
        raise ValueError(
            f"model input of shape {tuple(images.shape)}: the model takes (N, {channels}, H, W), {channels} channels"
        )
    # A copy even of float32 input: the caller's tensor is never normalised in place.
    x = images.to(torch.float32, copy=True)
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def forward(model: Any, x: Any, hflip_average: bool) -> Any:
    """The model's logits for the normalised batch ``x`` (N, C, H, W), flip-averaged if asked.

    Two calls rather than one on a doubled batch: the same cost, half the peak memory."""
    out = model(x)
    if hflip_average:
        out = (out + model(x.flip(3)).flip(3)) / 2
    return out


def band_arguments(bands: str | None, mean: str | None, std: str | None) -> dict[str, Any]:
    """``segray model init --bands/--band-mean/--band-std`` (comma-separated) as
    :func:`segray.models.artifact.init_artifact`'s ``bands``/``band_mean``/``band_std``."""
    if bands is None:
        if mean is not None or std is not None:
            raise ValueError("--band-mean/--band-std need --bands")
        return {}
    return {
        "bands": tuple(b.strip() for b in bands.split(",")),
        "band_mean": None if mean is None else _floats(mean, "--band-mean"),
        "band_std": None if std is None else _floats(std, "--band-std"),
    }


def _floats(text: str, flag: str) -> tuple[float, ...]:
    values = []
    for v in text.split(","):
        try:
            values.append(float(v))
        except ValueError:
            raise ValueError(f"{flag}: {v.strip()!r} is not a number") from None
    return tuple(values)
