"""The one reader of class-index masks, for converters, training, evaluation and dataset stats.

A mask is a single-channel 8-bit PNG (grayscale or palette) whose pixel values are class ids.
PIL keeps a palette PNG's indices (OpenCV would expand it to colours), so it reads both.
"""

from __future__ import annotations

import io

import numpy as np

from segray import storage
from segray.labels import LabelMap


class MaskError(ValueError):
    """A mask that is not a readable class-index PNG, or holds ids its label map lacks."""


def decode_mask(data: bytes, uri: str) -> np.ndarray:
    """PNG bytes -> (H, W) uint8 class ids; refuses colour, 16-bit and unreadable files, naming ``uri``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise MaskError(
                    f"{uri}: mask must be single-channel 8-bit class ids (a grayscale or palette PNG), got "
                    f"mode {im.mode}; a colour-coded mask needs converting first (segray data convert)"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except MaskError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise MaskError(f"{uri}: not a readable PNG mask ({type(e).__name__}: {e})") from e


def check_ids(mask: np.ndarray, label_map: LabelMap, uri: str) -> np.ndarray:
    """Refuse ids that are neither a class of ``label_map`` nor its ignore index."""
    top = int(mask.max()) if mask.size else 0
    if top >= label_map.num_classes and top != label_map.ignore_index:
        bad = sorted({int(v) for v in np.unique(mask)} - set(range(label_map.num_classes)) - {label_map.ignore_index})
        if bad:
            raise MaskError(
                f"{uri}: mask holds class ids {bad[:10]} that label map {label_map.name!r} does not have "
                f"(classes 0..{label_map.num_classes - 1}, ignore {label_map.ignore_index})"
            )
    return mask


def read_mask(uri: str, label_map: LabelMap | None = None) -> np.ndarray:
    """A mask file (local or s3://) -> (H, W) uint8 class ids, checked against ``label_map`` if given."""
    mask = decode_mask(storage.read_bytes(uri), uri)
    return mask if label_map is None else check_ids(mask, label_map, uri)
