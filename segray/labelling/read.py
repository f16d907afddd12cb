"""Stage 1 (CPU tasks): fetch each frame's bytes, decode, resize to the model's input size.

A frame that cannot be fetched or decoded stays in the batch with its ``error`` set (and a blank
image), so it flows on to ``errors/`` instead of disappearing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segray import storage
from segray.frames.decode import FrameError, decode_frame
from segray.models.preprocessing import Preprocessing

#: Concurrent fetches per task: object-store reads are latency-bound, decode releases the GIL.
FETCH_THREADS = 8


def _load_one(uri: str, pre: Preprocessing, max_pixels: int) -> tuple[np.ndarray | None, int, int, str, str]:
    try:
        data = storage.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - any read failure is recorded against the frame
        return None, 0, 0, "read", str(e)
    try:
        rgb = decode_frame(data, max_pixels)
    except FrameError as e:
        return None, 0, 0, e.stage, e.reason
    except Exception as e:  # noqa: BLE001 - a decoder bug must not take the batch down
        return None, 0, 0, "decode", f"{type(e).__name__}: {e}"
    h, w = rgb.shape[:2]
    return pre.resize(rgb), w, h, "", ""


def read_frames(batch: dict[str, np.ndarray], preprocessing: dict[str, Any], max_pixels: int) -> dict[str, np.ndarray]:
    pre = Preprocessing.from_dict(preprocessing)
    uris = [str(u) for u in batch["uri"]]
    with ThreadPoolExecutor(min(FETCH_THREADS, max(1, len(uris)))) as pool:
        results = list(pool.map(lambda u: _load_one(u, pre, max_pixels), uris))
    images = np.zeros((len(uris), pre.height, pre.width, 3), dtype=np.uint8)
    for i, (img, *_rest) in enumerate(results):
        if img is not None:
            images[i] = img
    out = dict(batch)
    out["image"] = images
    out["width"] = np.array([r[1] for r in results], dtype=np.int32)
    out["height"] = np.array([r[2] for r in results], dtype=np.int32)
    out["error_stage"] = np.array([r[3] for r in results], dtype=object)
    out["error"] = np.array([r[4] for r in results], dtype=object)
    return out
