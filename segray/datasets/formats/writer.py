"""Writes the canonical layout (folder or S3) that training, evaluation and labelling read::

<root>/labels.json              the label map (LabelMap.to_json)
<root>/<split>/<stem>.<png|jpg> frames, byte for byte as the source had them when possible
<root>/<split>annot/<stem>.png  8-bit grayscale PNG, one class index per pixel
<root>/_convert.json            what was converted, from where, with which options (skipped by listings)

Instance formats write ``<root>/<split>inst/<stem>.png`` (16-bit instance ids) and ``.json`` (each
instance's class) instead of the ``annot`` mask: see :mod:`segray.datasets.instances`.
"""

from __future__ import annotations

import json

import numpy as np

from segray import storage
from segray.datasets.formats.base import Converted, encode_mask
from segray.labels import LabelMap

LABELS = "labels.json"
REPORT = "_convert.json"
ANNOT_SUFFIX = "annot"


def image_uri(root: str, split: str, stem: str, ext: str) -> str:
    return storage.join(root, split, f"{stem}{ext}")


def mask_uri(root: str, split: str, stem: str) -> str:
    return storage.join(root, f"{split}{ANNOT_SUFFIX}", f"{stem}.png")


class CanonicalWriter:
    """One destination root; ``write`` is safe to call from several threads (one object per file)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def write(self, split: str, stem: str, item: Converted) -> None:
        storage.write_bytes(image_uri(self.root, split, stem, item.image_ext), item.image)
        if item.instances is None:
            storage.write_bytes(mask_uri(self.root, split, stem), encode_mask(item.mask))
            return
        from segray.datasets.instances import encode_ids, ids_uri, meta_uri

        storage.write_bytes(ids_uri(self.root, split, stem), encode_ids(item.mask))
        storage.write_bytes(meta_uri(self.root, split, stem), json.dumps({"instances": item.instances}).encode())

    def write_label_map(self, label_map: LabelMap) -> None:
        storage.write_bytes(storage.join(self.root, LABELS), label_map.to_json().encode())

    def write_report(self, report: dict) -> None:
        storage.write_bytes(storage.join(self.root, REPORT), json.dumps(report, indent=2).encode())


def class_pixels(mask: np.ndarray) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=256)
