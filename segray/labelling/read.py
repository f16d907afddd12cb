"""Stage 1 (CPU tasks): fetch each frame's bytes, decode, resize to the model's input size.

A frame that cannot be fetched or decoded stays in the batch with its ``error`` set (and a blank
image), so it flows on to ``errors/`` instead of disappearing.

Large frames (either side above ``tile_above`` x the model's input side) are not decoded here:
their encoded bytes travel on (``encoded``) and the inference actor decodes them and labels them
window by window at native resolution (segray.tiles.windows). So a 12,000 x 12,000 frame crosses
the object store as its compressed file, not as 432 MB of RGB, and is decoded once, where it is used.

Each frame's ground area per pixel (``pixel_area_m2``, NaN when unknown) comes from the manifest's
``pixel_size_m`` column, else a world file beside the image, else the job's ``pixel_size`` option.
"""

from __future__ import annotations

import io
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from segray import storage
from segray.frames.decode import FrameError, decode_frame
from segray.models.preprocessing import Preprocessing
from segray.tiles.pixel_size import MANIFEST_COLUMN, pixel_area

#: Concurrent fetches per task: object-store reads are latency-bound, decode releases the GIL.
FETCH_THREADS = 8
#: Default: frames with a side above this many times the model's input side are labelled in windows.
DEFAULT_TILE_ABOVE = 2.0


@dataclass
class _Loaded:
    image: np.ndarray | None = None
    encoded: bytes = b""
    width: int = 0
    height: int = 0
    stage: str = ""
    error: str = ""
    pixel_area: float = math.nan
    pixel_source: str = ""


def peek_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, or None (decode_frame then says what is wrong)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(io.BytesIO(data)) as im:
                return int(im.width), int(im.height)
        except Exception:  # noqa: BLE001 - any unreadable header goes through decode_frame's checks
            return None
        finally:
            Image.MAX_IMAGE_PIXELS = old


def is_large(width: int, height: int, pre: Preprocessing, tile_above: float) -> bool:
    return height > tile_above * pre.height or width > tile_above * pre.width


def _load_one(
    uri: str, pre: Preprocessing, max_pixels: int, tile_above: float, georef: tuple[object, float | None, bool]
) -> _Loaded:
    try:
        data = storage.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - any read failure is recorded against the frame
        return _Loaded(stage="read", error=str(e))
    manifest_value, option, world_files = georef
    try:
        area, source = pixel_area(uri, manifest_value, option, world_files)
    except Exception as e:  # noqa: BLE001 - a malformed world file or manifest value fails the frame, named
        return _Loaded(stage="read", error=f"pixel size: {e}")
    size = peek_size(data)
    if size is not None and size[0] * size[1] <= max_pixels and is_large(*size, pre, tile_above):
        # Decoded (and checked again) by the actor, the only place that needs the pixels.
        return _Loaded(None, data, size[0], size[1], "", "", math.nan if area is None else area, source)
    try:
        rgb = decode_frame(data, max_pixels)
    except FrameError as e:
        return _Loaded(stage=e.stage, error=e.reason)
    except Exception as e:  # noqa: BLE001 - a decoder bug must not take the batch down
        return _Loaded(stage="decode", error=f"{type(e).__name__}: {e}")
    h, w = rgb.shape[:2]
    return _Loaded(pre.resize(rgb), b"", w, h, "", "", math.nan if area is None else area, source)


def read_frames(
    batch: dict[str, np.ndarray],
    preprocessing: dict[str, Any],
    max_pixels: int,
    tile_above: float = DEFAULT_TILE_ABOVE,
    pixel_size: float | None = None,
    world_files: bool = True,
) -> dict[str, np.ndarray]:
    pre = Preprocessing.from_dict(preprocessing)
    uris = [str(u) for u in batch["uri"]]
    sizes = list(batch[MANIFEST_COLUMN]) if MANIFEST_COLUMN in batch else [None] * len(uris)
    with ThreadPoolExecutor(min(FETCH_THREADS, max(1, len(uris)))) as pool:
        results = list(
            pool.map(
                lambda a: _load_one(a[0], pre, max_pixels, tile_above, (a[1], pixel_size, world_files)),
                zip(uris, sizes, strict=True),
            )
        )
    images = np.zeros((len(uris), pre.height, pre.width, 3), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.image is not None:
            images[i] = r.image
    out = dict(batch)
    out["image"] = images
    out["encoded"] = np.array([r.encoded for r in results], dtype=object)
    out["width"] = np.array([r.width for r in results], dtype=np.int32)
    out["height"] = np.array([r.height for r in results], dtype=np.int32)
    out["error_stage"] = np.array([r.stage for r in results], dtype=object)
    out["error"] = np.array([r.error for r in results], dtype=object)
    out["pixel_area_m2"] = np.array([r.pixel_area for r in results], dtype=np.float64)
    out["pixel_size_source"] = np.array([r.pixel_source for r in results], dtype=object)
    return out
