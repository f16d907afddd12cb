"""Bytes -> RGB uint8 array, or a :class:`FrameError` that says why not.

Field archives hold every kind of odd file: zero-byte uploads, truncated PNG/JPEG, renamed
non-images, grayscale, RGBA, 16-bit, 1x1 thumbnails, and headers that declare billions of pixels.
The header is read first (PIL, lazy) so that a decompression bomb is refused by its declared size
before any pixel is decoded; decoding itself is OpenCV's (fast, and it keeps 16-bit and alpha).
"""

from __future__ import annotations

import io
import threading
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: Default ceiling on declared pixels (width * height): 16k x 16k. Larger needs --max-pixels.
DEFAULT_MAX_PIXELS = 16_384 * 16_384


#: PIL's bomb guard is a process-wide setting: it is lifted only while this lock is held, so that
#: the read stage's fetch threads never see each other's change (a header parse takes microseconds).
_PIL_LIMIT_LOCK = threading.Lock()


class FrameError(Exception):
    """A frame that cannot be labelled; ``reason`` goes into ``errors/``."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def _header(data: bytes) -> tuple[str, int, int]:
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before decoding
        try:
            with Image.open(io.BytesIO(data)) as im:
                return str(im.format), int(im.width), int(im.height)
        except UnidentifiedImageError as e:  # its message names a memory address, not the file
            raise FrameError("decode", "not a recognised image (no known image format's header)") from e
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad headers
            raise FrameError("decode", f"not a recognised image ({type(e).__name__}: {e})") from e
        finally:
            Image.MAX_IMAGE_PIXELS = old


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None when the header is unreadable."""
    try:
        _, w, h = _header(data)
    except FrameError:
        return None
    return w, h


def check_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header, or a :class:`FrameError`: empty, unreadable,
    declaring more than ``max_pixels``, or cut short (PNG/JPEG end marker missing)."""
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
    return fmt, w, h


def decode_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image into an (H, W, 3) uint8 RGB array."""
    fmt, _, _ = check_frame(data, max_pixels)
    return _decode_full(data, fmt)


def _decode_full(data: bytes, fmt: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise FrameError("decode", f"{fmt} data could not be decoded (corrupt or unsupported variant)")
    return to_rgb8(img)


#: JPEG decoding at 1/2, 1/4 or 1/8 of the size (libjpeg's DCT scaling: the cheap part of a decode
#: that would be thrown away by the resize anyway), without applying EXIF orientation, as
#: IMREAD_UNCHANGED does not either.
_REDUCED = {
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
}


def reduction(width: int, height: int, to_width: int, to_height: int) -> int:
    """The largest JPEG scale-down (8, 4, 2, else 1) that keeps both sides at or above the target."""
    return next((f for f in _REDUCED if width // f >= to_width and height // f >= to_height), 1)


def decode_resized(
    data: bytes,
    height: int,
    width: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    header: tuple[str, int, int] | None = None,
) -> tuple[np.ndarray, int, int]:
    """An encoded frame -> (RGB uint8 at ``height`` x ``width``, the frame's own width, its height).

    A JPEG at least twice the target on both sides is decoded at a reduced scale first; every
    frame is resized with area averaging when shrinking, and colour-converted after the resize, so
    no full-size copy is made beyond the decoder's own. The same checks as :func:`decode_frame`,
    unless ``header`` is :func:`check_frame`'s result for ``data`` already.
    """
    fmt, w, h = header or check_frame(data, max_pixels)
    factor = reduction(w, h, width, height) if fmt == "JPEG" else 1
    if factor == 1:
        return resize(_decode_full(data, fmt), height, width), w, h
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _REDUCED[factor])
    if bgr is None or bgr.size == 0:
        raise FrameError("decode", f"{fmt} data could not be decoded (corrupt or unsupported variant)")
    return cv2.cvtColor(resize(bgr, height, width), cv2.COLOR_BGR2RGB), w, h


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3): area averaging when shrinking both sides, else bilinear."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    interp = cv2.INTER_AREA if h > height and w > width else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


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
