"""Cityscapes, official layout: ``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` and
``gtFine/<split>/<city>/<x>_gtFine_labelIds.png`` -> ``<split>/<x>.png`` + ``<split>annot/<x>.png``.

``--target trainids`` maps label ids to the 19 train ids (255 = ignore), ``--target categories``
to the 8 category ids (void = 0 ... vehicle = 7), both exactly as cityscapesScripts' ``labels.py``
(:data:`segray.labels.CITYSCAPES_LABELS`). License plate (-1) never appears in a uint8 labelIds PNG;
any id the table lacks (34..255) is an error naming the file, since it means the wrong file
(a ``_color`` or ``_instanceIds`` image) or a corrupted one.
"""

from __future__ import annotations

import numpy as np

from segray.datasets.formats.base import (
    Converted,
    ConvertError,
    ConvertOptions,
    Plan,
    Sample,
    read_index_mask,
    read_rgb,
    relative_files,
)
from segray.labels import CITYSCAPES, CITYSCAPES_CATEGORIES, CITYSCAPES_LABELS, LabelMap

IMAGES, GT = "leftImg8bit", "gtFine"
IMAGE_SUFFIX, GT_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
TARGETS = ("trainids", "categories")
#: lookup-table value for label ids the official table does not define
UNKNOWN = -1


def target_label_map(target: str) -> LabelMap:
    if target not in TARGETS:
        raise ConvertError(f"unknown Cityscapes target {target!r}; choose from {list(TARGETS)}")
    return CITYSCAPES if target == "trainids" else CITYSCAPES_CATEGORIES


def label_id_lut(target: str) -> np.ndarray:
    """256-entry table: label id -> train id (255 for untrained) or category id; -1 = unknown id."""
    target_label_map(target)
    lut = np.full(256, UNKNOWN, dtype=np.int16)
    for lab in CITYSCAPES_LABELS:
        if lab.id < 0:  # license plate: -1 cannot occur in a uint8 mask
            continue
        if target == "trainids":
            lut[lab.id] = lab.train_id if 0 <= lab.train_id < 255 else 255
        else:
            lut[lab.id] = lab.category_id
    return lut


def map_label_ids(ids: np.ndarray, lut: np.ndarray, uri: str) -> np.ndarray:
    out = lut[ids]
    if (out == UNKNOWN).any():
        bad = np.unique(ids[out == UNKNOWN]).tolist()
        raise ConvertError(
            f"{uri}: label ids {bad[:10]} are not Cityscapes label ids (0..33); is this a *_gtFine_labelIds.png?"
        )
    return out.astype(np.uint8)


def plan(src: str, options: ConvertOptions) -> Plan:
    label_map = target_label_map(options.target)
    lut = label_id_lut(options.target)
    gts = {rel: uri for rel, uri in relative_files(src, (GT_SUFFIX,)) if rel.startswith(f"{GT}/")}
    samples = []
    for rel, uri in relative_files(src, (IMAGE_SUFFIX,)):
        parts = rel.split("/")
        if parts[0] != IMAGES or len(parts) != 4:
            continue
        _, split, city, name = parts
        base = name[: -len(IMAGE_SUFFIX)]
        gt = f"{GT}/{split}/{city}/{base}{GT_SUFFIX}"
        if gt not in gts:
            raise ConvertError(f"{uri}: no ground truth {gt} for this frame")
        samples.append(Sample(split, base, uri, gts[gt]))
    if not samples and not gts:
        raise ConvertError(f"{src}: no {IMAGES}/<split>/<city>/*{IMAGE_SUFFIX} frames (not a Cityscapes root?)")

    def load(s: Sample) -> Converted:
        data, rgb = read_rgb(s.image_uri)
        ids = read_index_mask(s.source)
        if ids.shape != rgb.shape[:2]:
            raise ConvertError(f"{s.source}: mask size {ids.shape} differs from its frame's {rgb.shape[:2]}")
        return Converted(data, ".png", map_label_ids(ids, lut, s.source))

    return Plan(label_map, samples, load, {"target": options.target})
