"""CamVid in the SegNet layout (``<split>/*.png`` + ``<split>annot/*.png``): already canonical.

Converting copies the frames byte for byte, checks each mask against its frame (same size, ids
0..10 or 11 = void) and writes ``labels.json`` (the built-in ``camvid`` map unless SRC has its own).
"""

from __future__ import annotations

import posixpath

from segray import storage
from segray.datasets.formats.base import (
    IMAGE_SUFFIXES,
    Converted,
    ConvertError,
    ConvertOptions,
    Plan,
    Sample,
    check_mask,
    image_ext,
    read_index_mask,
    read_rgb,
    relative_files,
    stem,
)
from segray.labels import CAMVID, LabelMap

ANNOT = "annot"


def source_label_map(src: str, default: LabelMap) -> LabelMap:
    """``<src>/labels.json`` if present, else ``default``."""
    uri = storage.join(src, "labels.json")
    if storage.exists(uri):
        return LabelMap.from_json(storage.read_bytes(uri).decode("utf-8"), uri)
    return default


def plan(src: str, options: ConvertOptions) -> Plan:
    label_map = source_label_map(src, CAMVID)
    files = relative_files(src, IMAGE_SUFFIXES)
    masks = {posixpath.splitext(rel)[0]: uri for rel, uri in files if rel.split("/", 1)[0].endswith(ANNOT)}
    samples = []
    for rel, uri in files:
        split = rel.split("/", 1)[0]
        if "/" not in rel or split.endswith(ANNOT):
            continue
        key = f"{split}{ANNOT}/{stem(rel)}"
        if key not in masks:
            raise ConvertError(f"{uri}: no mask {key}.png for this frame")
        samples.append(Sample(split, stem(rel), uri, masks[key]))

    def load(s: Sample) -> Converted:
        data, rgb = read_rgb(s.image_uri)
        mask = check_mask(read_index_mask(s.source), label_map, s.source, rgb.shape[:2])
        return Converted(data, image_ext(s.image_uri), mask)

    return Plan(label_map, samples, load)
