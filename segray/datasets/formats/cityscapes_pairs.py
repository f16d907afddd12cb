"""Cityscapes image pairs (the Kaggle/pix2pix layout): ``<split>/*.jpg`` composites, photo on the
left half, the official label colours on the right half, 256x512 in the usual copy.

JPEG blurs the colours, so each label pixel takes the nearest official colour within
``--tolerance`` (RGB distance, default :data:`DEFAULT_TOLERANCE`); pixels farther from every colour
become ignore (255) and are counted as ambiguous in the report. Colours of labels that are not
trained (parking, guard rail, void's black, ...) map to ignore for ``trainids``, and to their
category for ``categories``. The photo is written as PNG (no second JPEG loss).
"""

from __future__ import annotations

import numpy as np

from segray.datasets.formats.base import (
    Converted,
    ConvertError,
    ConvertOptions,
    Plan,
    Sample,
    encode_png,
    read_rgb,
    relative_files,
    split_of,
    stem,
)
from segray.datasets.formats.cityscapes import target_label_map
from segray.datasets.formats.colours import Palette, map_colours
from segray.labels import CITYSCAPES_LABELS

#: A pixel farther than this (RGB distance) from every official colour is ambiguous. The nearest
#: colour decides otherwise; the closest colours of two different train ids are 20 apart (bus
#: (0,60,100) vs train (0,80,100)), so heavier JPEG errors than ~10 can confuse those two.
DEFAULT_TOLERANCE = 30.0


def palette(target: str) -> Palette:
    """Official colour -> train id (255 untrained) or category id; a colour shared by two labels
    (pole/polegroup, car/license plate) takes the trained one's id."""
    pairs: dict[tuple[int, int, int], int] = {}
    for lab in sorted(CITYSCAPES_LABELS, key=lambda lab: not (0 <= lab.train_id < 255)):
        cid = (lab.train_id if 0 <= lab.train_id < 255 else 255) if target == "trainids" else lab.category_id
        pairs.setdefault(lab.color, cid)
    return Palette.of(list(pairs.items()))


def split_pair(rgb: np.ndarray, uri: str) -> tuple[np.ndarray, np.ndarray]:
    """A composite -> (photo, colour labels): the left and right halves."""
    h, w = rgb.shape[:2]
    if w % 2:
        raise ConvertError(f"{uri}: a pair image must have an even width (photo | labels), got {w}x{h}")
    return rgb[:, : w // 2], rgb[:, w // 2 :]


def plan(src: str, options: ConvertOptions) -> Plan:
    label_map = target_label_map(options.target)
    pal = palette(options.target)
    tolerance = DEFAULT_TOLERANCE if options.tolerance is None else options.tolerance
    samples = [
        Sample(split_of(rel, options.split), stem(rel), uri)
        for rel, uri in relative_files(src, (".jpg", ".jpeg", ".png"))
    ]

    def load(s: Sample) -> Converted:
        _, rgb = read_rgb(s.image_uri)
        photo, colours = split_pair(rgb, s.image_uri)
        mask, ambiguous = map_colours(colours, pal, tolerance, 255)
        return Converted(encode_png(photo), ".png", mask, ambiguous)

    return Plan(label_map, samples, load, {"target": options.target, "tolerance": tolerance})
