"""Sliding windows over frames larger than a model's input, and the streaming blend of their logits.

A large frame (a satellite scene, a vineyard orthomosaic) is cut into overlapping windows of the
model's input size at native resolution; each window's logits are weighted by a linear ramp that is
zero for ``margin`` pixels at every window edge that lies inside the frame and rises to 1 across the
rest of the overlap, so window borders (where the model saw zero padding instead of the
neighbouring pixels) do not count. Edges on the frame's own border keep weight 1.

Memory. Windows are processed one row of windows (a band) at a time: the blender keeps float32 sums
of weighted logits and of weights only for the ``window_h`` rows that windows of the current band
touch, and once no later window touches a row it is finalised (argmax) into the frame's uint8 mask.
For a frame of H x W pixels, C classes, window h x w and B windows per model call, one frame costs

    3*H*W (decoded RGB) + H*W (mask)                                   bytes
    + (C + 1) * h * W * 4, up to twice that while the band shifts      (band accumulators)
    + B * h * w * (3 + 4*C) + the model's activations for B windows    (one model call)

whatever the number of windows: a 12,000 x 12,000 frame with 11 classes and 512 x 512 windows needs
432 MB + 144 MB + 270 MB (x2 at the shift) + the batch, not 11 x 4 x 12,000^2 = 6.3 GB of logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch stays out of processes that only read/decode frames
    import torch

#: (N, h, w, 3) uint8 windows -> (N, C, h, w) logits (the Predictor's normalise-and-run).
PredictFn = Callable[[np.ndarray], "torch.Tensor"]
#: Receives finalised rows: (first row, blended logits (C, rows, W) as float32 on the logits' device).
RowSink = Callable[[int, "torch.Tensor"], None]

#: Rows finalised per step: bounds the temporaries of normalising and argmax to C * rows * W floats.
FINALISE_ROWS = 64


@dataclass(frozen=True)
class TileSpec:
    """Window size (multiples of 32: the encoders downsample by 32), overlap and ignored margin (pixels)."""

    height: int
    width: int
    overlap: int
    margin: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0 or self.height % 32 or self.width % 32:
            raise ValueError(f"tile window {self.height}x{self.width} must be positive multiples of 32")
        if not 0 <= self.overlap < min(self.height, self.width):
            raise ValueError(
                f"tile overlap {self.overlap} must be >= 0 and smaller than the window {self.height}x{self.width}"
            )
        if (
            self.margin < 0
            or (self.overlap > 0 and 2 * self.margin >= self.overlap)
            or (self.overlap == 0 < self.margin)
        ):
            raise ValueError(
                f"tile margin {self.margin} must be >= 0 and less than half the overlap ({self.overlap}), "
                "so that every pixel keeps a window that weighs it"
            )

    @classmethod
    def for_model(
        cls, height: int, width: int, window: tuple[int, int] | None = None, overlap: int | None = None
    ) -> TileSpec:
        """Defaults from the model artifact: window = model input, overlap = a quarter of its short side,
        margin = an eighth of the overlap."""
        h, w = window or (height, width)
        ov = min(h, w) // 4 if overlap is None else overlap
        return cls(h, w, ov, ov // 8)

    def to_dict(self) -> dict[str, int]:
        return {"height": self.height, "width": self.width, "overlap": self.overlap, "margin": self.margin}


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``; the last window ends on the frame's edge."""
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def ramp(window: int, low_inside: bool, high_inside: bool, overlap: int, margin: int) -> np.ndarray:
    """1-D weights of one window: 0 for ``margin`` pixels at an inside edge, rising linearly to 1
    over the rest of the overlap; 1 at an edge on the frame's border."""
    w = np.ones(window, dtype=np.float32)
    if overlap == 0:
        return w
    d = np.arange(window, dtype=np.float32)
    rise = float(overlap - 2 * margin)
    if low_inside:
        w *= np.clip((d - margin + 1) / rise, 0.0, 1.0)
    if high_inside:
        w *= np.clip((window - d - margin) / rise, 0.0, 1.0)
    return w


def _crop(rgb: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """A window of the frame; a frame smaller than the window is padded by repeating its edge."""
    part = rgb[y : y + h, x : x + w]
    ph, pw = h - part.shape[0], w - part.shape[1]
    if ph or pw:
        part = np.pad(part, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return part


def blend_windows(rgb: np.ndarray, predict: PredictFn, spec: TileSpec, batch_size: int, sink: RowSink) -> int:
    """Run ``predict`` over the windows of ``rgb`` band by band and hand blended rows to ``sink``.

    Returns the number of windows. ``sink`` sees every row exactly once, top to bottom.
    """
    import torch

    height, width = rgb.shape[:2]
    wh, ww = spec.height, spec.width
    ys = window_starts(height, wh, spec.overlap)
    xs = window_starts(width, ww, spec.overlap)
    weights: dict[tuple[bool, ...], torch.Tensor] = {}
    acc: torch.Tensor | None = None  # (C, wh, W): weighted logit sums of the current band
    wsum: torch.Tensor | None = None  # (wh, W): weight sums
    count = 0
    for r, y in enumerate(ys):
        for chunk in _batched([(y, x) for x in xs], batch_size):
            windows = np.stack([_crop(rgb, yy, xx, wh, ww) for yy, xx in chunk])
            logits = predict(windows).float()
            if acc is None or wsum is None:
                acc = torch.zeros((logits.shape[1], wh, width), dtype=torch.float32, device=logits.device)
                wsum = torch.zeros((wh, width), dtype=torch.float32, device=logits.device)
            for k, (yy, xx) in enumerate(chunk):
                h, w = min(wh, height - yy), min(ww, width - xx)
                inside = (yy > 0, yy + wh < height, xx > 0, xx + ww < width)
                wt = weights.get(inside)
                if wt is None:
                    wy = ramp(wh, inside[0], inside[1], spec.overlap, spec.margin)
                    wx = ramp(ww, inside[2], inside[3], spec.overlap, spec.margin)
                    wt = torch.from_numpy(np.outer(wy, wx)).to(logits.device)
                    weights[inside] = wt
                acc[:, :h, xx : xx + w] += logits[k, :, :h, :w] * wt[:h, :w]
                wsum[:h, xx : xx + w] += wt[:h, :w]
            count += len(chunk)
        assert acc is not None and wsum is not None
        done = (ys[r + 1] if r + 1 < len(ys) else height) - y  # rows no later window touches
        for r0 in range(0, done, FINALISE_ROWS):
            r1 = min(done, r0 + FINALISE_ROWS)
            sink(y + r0, acc[:, r0:r1] / wsum[r0:r1])
        if r + 1 < len(ys):
            keep = wh - done  # rows the next band's windows still add to
            acc[:, :keep] = acc[:, done:].clone()
            acc[:, keep:] = 0
            wsum[:keep] = wsum[done:].clone()
            wsum[keep:] = 0
    return count


def _batched(items: list[tuple[int, int]], n: int) -> Iterator[list[tuple[int, int]]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


@dataclass
class TileResult:
    mask: np.ndarray  # (H, W) uint8 class ids
    mean_confidence: float  # mean winning-class probability over every 2nd pixel of the blended logits
    windows: int


def label_tile(
    rgb: np.ndarray, predict: PredictFn, spec: TileSpec, batch_size: int, confidence_stride: int = 2
) -> TileResult:
    """One large frame -> its class mask, with the memory bound in the module docstring."""
    import torch

    height, width = rgb.shape[:2]
    mask = np.empty((height, width), dtype=np.uint8)
    conf_sum = 0.0
    conf_n = 0

    def sink(y0: int, rows: torch.Tensor) -> None:
        nonlocal conf_sum, conf_n
        mask[y0 : y0 + rows.shape[1]] = rows.argmax(dim=0).to(torch.uint8).cpu().numpy()
        # Stride on absolute rows, so the sample does not depend on how rows were chunked.
        first = (-y0) % confidence_stride
        sample = rows[:, first::confidence_stride, ::confidence_stride]
        if sample.numel():
            top = sample.softmax(dim=0).amax(dim=0)
            conf_sum += float(top.sum(dtype=torch.float64))
            conf_n += top.numel()

    n = blend_windows(rgb, predict, spec, batch_size, sink)
    return TileResult(mask, conf_sum / conf_n if conf_n else float("nan"), n)
