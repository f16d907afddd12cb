"""How a mask file is named and encoded: palette PNGs of class ids, 16-bit PNGs of instance ids.

Mask keys come from the frame's relative path (``masks/<path>.png``), so a rerun overwrites a mask
instead of adding a second one; readers (the demo, landcover, users) find a frame's mask the same way.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from segray.frames.listing import safe_relative_path


def encode_mask_png(mask: np.ndarray, palette: list[int]) -> bytes:
    """A palette PNG; zlib's run-length strategy suits masks' long runs of one class: about half
    the size of the default strategy at the same speed (docs/benchmarks.md, PNG encoding)."""
    im = Image.fromarray(mask, mode="P")
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def encode_ids_png(ids: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of instance ids (always 16 bits, whatever the frame's count, so every
    mask of an output reads the same way)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("could not encode the instance ids as PNG")
    return buf.tobytes()


def mask_key(relative_path: str) -> str:
    return f"masks/{safe_relative_path(relative_path)}.png"
