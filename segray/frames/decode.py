"""Bytes -> RGB uint8 array, or a :class:`FrameError` that says why not.

Field archives hold every kind of odd file: zero-byte uploads, truncated PNG/JPEG, renamed
non-images, grayscale, RGBA, 16-bit, 1x1 thumbnails, and headers that declare billions of pixels.
The header is read first (PIL, lazy) so that a decompression bomb is refused by its declared size
before any pixel is decoded; decoding itself is OpenCV's (fast, and it keeps 16-bit and alpha).
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image

#: Default ceiling on declared pixels (width * height): 16k x 16k. Larger needs --max-pixels.
DEFAULT_MAX_PIXELS = 16_384 * 16_384


class FrameError(Exception):
    """A frame that cannot be labelled; ``reason`` goes into ``errors/``."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def _header(data: bytes) -> tuple[str, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before decoding
        try:
            with Image.open(io.BytesIO(data)) as im:
                return str(im.format), int(im.width), int(im.height)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad headers
            raise FrameError("decode", f"not a recognised image ({type(e).__name__}: {e})") from e
        finally:
            Image.MAX_IMAGE_PIXELS = old


def decode_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image into an (H, W, 3) uint8 RGB array."""
    if len(data) == 0:
        raise FrameError("decode", "empty file (0 bytes)")
    fmt, w, h = _header(data)
    if w <= 0 or h <= 0:
        raise FrameError("decode", f"declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise FrameError(
            "decode",
            f"declares {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} (raise --max-pixels "
            "if the frame is genuine)",
        )
    # Cameras and copy tools sometimes pad a file after its end marker: look a little way back.
    tail = data[-1024:]
    if fmt == "PNG" and b"IEND" not in tail:
        raise FrameError("decode", "truncated PNG (no IEND chunk at the end)")
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        raise FrameError("decode", "truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FrameError("decode", f"{fmt} data could not be decoded (corrupt or unsupported variant)")
    return to_rgb8(img)


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """OpenCV's decode (gray, BGR, BGRA; 8/16-bit or float) -> RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = np.nan_to_num((f - lo) * scale).clip(0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise FrameError("decode", f"unsupported channel count {channels}")
