"""What the read stage hands a task's predictor: which frames travel encoded, and decoding them.

A frame with a side above ``tile_above`` x the reference size (the frames the model was trained
on, else its input) is labelled window by window at native resolution; the read stage leaves it
encoded, with its checked header in the batch, and the predictor decodes it once. The read
stage, the predictors and the HTTP endpoint apply the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from segray.frames.decode import Header, decode_checked, decode_frame
from segray.outputs.schema import FORMAT_COLUMN, ORIENTATION_COLUMN

#: Default: frames with a side above this many times the reference size are labelled in windows.
DEFAULT_TILE_ABOVE = 2.0


def is_large(width: int, height: int, reference: tuple[int, int], tile_above: float) -> bool:
    """Either side above ``tile_above`` x the reference (height, width): labelled in windows."""
    return height > tile_above * reference[0] or width > tile_above * reference[1]


def decode_left_encoded(data: bytes, batch: Mapping[str, Any], i: int, max_pixels: int) -> np.ndarray:
    """Row ``i``'s frame, which the read stage left encoded, as (height, width, 3) RGB as displayed.

    The read stage checked its header: its format, size and orientation travel in the batch, so it is
    decoded without a second parse. A batch built elsewhere, without them, gets every check of
    segray.frames.decode.decode_frame.
    """
    fmt = str(batch[FORMAT_COLUMN][i]) if FORMAT_COLUMN in batch and ORIENTATION_COLUMN in batch else ""
    if not fmt:
        return decode_frame(data, max_pixels)
    header = Header(fmt, int(batch["width"][i]), int(batch["height"][i]), int(batch[ORIENTATION_COLUMN][i]))
    return decode_checked(data, header)


def predicted_batch(
    batch: Mapping[str, Any],
    errors: np.ndarray,
    stages: np.ndarray,
    masks: np.ndarray,
    mask_dtype: type,
    **columns: Any,
) -> dict[str, Any]:
    """A predictor's output batch: the input's columns without its pixels (``image``, ``encoded``),
    each row's error and stage, its mask (an empty 1 x 1 ``mask_dtype`` mask for a failed row, so
    the column holds one kind of array) and the task's ``columns``."""
    for i in np.flatnonzero(errors != ""):
        masks[i] = np.zeros((1, 1), dtype=mask_dtype)
    out = {k: v for k, v in batch.items() if k not in ("image", "encoded")}
    return out | {"error": errors, "error_stage": stages, "mask": masks, **columns}
