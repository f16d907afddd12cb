"""The canonical instance layout, which instance training and evaluation read::

<root>/labels.json                   the label map: the OBJECT classes only (no background), in order
<root>/<split>/<stem>.<png|jpg>      frames, byte for byte as the source had them when possible
<root>/<split>inst/<stem>.png        16-bit grayscale PNG: each pixel's instance id, 0 = no instance
<root>/<split>inst/<stem>.json       {"instances": [{"id": 1, "class": 0}, {"id": 2, "class": 1, "crowd": true}]}

``class`` is the label map's class index. Ids are 1..N in annotation order; where annotations
overlap the later one holds the pixel (as the annotation tools draw them), so one id map stores
every instance. An instance hidden entirely by later ones is dropped by the converter (and counted
in ``_convert.json``). ``crowd`` (COCO ``iscrowd``) marks a region of many objects: training
leaves it out and evaluation ignores detections on it, as the COCO protocol does.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from segray import storage
from segray.frames.listing import IMAGE_SUFFIXES
from segray.labels import LabelMap, load_label_map

INST_SUFFIX = "inst"
LABELS_FILE = "labels.json"
#: the largest instance id a 16-bit id map holds
MAX_INSTANCES = 65535


class InstanceDataError(ValueError):
    """A canonical instance set that cannot be read; the message names the file."""


@dataclass(frozen=True)
class InstanceFrame:
    image: str
    ids: str
    meta: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.image)


@dataclass
class Instances:
    """One frame's instances: ``masks`` (N, H, W) bool, ``classes`` (N,) label-map indices, ``crowd`` (N,) bool."""

    masks: np.ndarray
    classes: np.ndarray
    crowd: np.ndarray

    def boxes(self) -> np.ndarray:
        """(N, 4) float32 x0, y0, x1, y1 (exclusive ends) of each mask."""
        out = np.zeros((len(self.masks), 4), np.float32)
        for i, m in enumerate(self.masks):
            ys, xs = np.nonzero(m)
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out

    def counts(self, num_classes: int) -> np.ndarray:
        """Instances per class, crowd regions left out."""
        return np.bincount(self.classes[~self.crowd], minlength=num_classes)


def ids_uri(root: str, split: str, stem: str) -> str:
    return storage.join(root, f"{split}{INST_SUFFIX}", f"{stem}.png")


def meta_uri(root: str, split: str, stem: str) -> str:
    return storage.join(root, f"{split}{INST_SUFFIX}", f"{stem}.json")


def encode_ids(ids: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint16))
    if not ok:
        raise InstanceDataError("could not encode an instance id map as PNG")
    return buf.tobytes()


def decode_ids(data: bytes, uri: str) -> np.ndarray:
    import io

    from PIL import Image

    # PIL, as every mask reader (frames alone go through OpenCV): 16-bit grayscale opens as I;16.
    try:
        with Image.open(io.BytesIO(data)) as im:
            ok = im.mode in ("L", "P", "I", "I;16")
            ids = np.asarray(im) if ok else None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
        raise InstanceDataError(f"{uri}: not a readable PNG of instance ids ({type(e).__name__}: {e})") from e
    if ids is None or ids.ndim != 2:
        raise InstanceDataError(f"{uri}: not a single-channel PNG of instance ids")
    return ids.astype(np.uint16)


def instance_label_map(root: str, labels: str | None = None) -> LabelMap:
    """``labels`` (built-in name or JSON) if given, else ``<root>/labels.json`` (required)."""
    if labels:
        return load_label_map(labels)
    uri = storage.join(root, LABELS_FILE)
    if not storage.exists(uri):
        raise InstanceDataError(f"{uri}: no label map; convert the data with segray data convert first")
    return LabelMap.from_json(storage.read_bytes(uri).decode("utf-8"), uri)


def list_frames(root: str, split: str) -> list[InstanceFrame]:
    """The split's frames, sorted; a frame without its id map or instance list is an error naming it."""
    from segray.datasets.formats.base import fs_uri

    folder = storage.join(root, split)
    frames = [fs_uri(root, p) for p in storage.list_files(folder, IMAGE_SUFFIXES)]
    if not frames:
        raise InstanceDataError(f"{folder}: no frames (expected <root>/<split>/*.png|jpg)")
    out = []
    have = {posixpath.basename(p) for p in storage.list_files(storage.join(root, f"{split}{INST_SUFFIX}"))}
    for uri in frames:
        stem = posixpath.splitext(posixpath.basename(uri))[0]
        for needed in (f"{stem}.png", f"{stem}.json"):
            if needed not in have:
                raise InstanceDataError(f"{uri}: no {split}{INST_SUFFIX}/{needed} for this frame")
        out.append(InstanceFrame(uri, ids_uri(root, split, stem), meta_uri(root, split, stem)))
    return out


def read_instances(frame: InstanceFrame, num_classes: int) -> Instances:
    """A frame's id map and instance list -> per-instance masks; checks every id and class."""
    ids = decode_ids(storage.read_bytes(frame.ids), frame.ids)
    try:
        meta: dict[str, Any] = json.loads(storage.read_bytes(frame.meta))
        listed = meta["instances"]
        present = [int(d["id"]) for d in listed]
        classes = np.array([int(d["class"]) for d in listed], np.int64)
        crowd = np.array([bool(d.get("crowd", False)) for d in listed], bool)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InstanceDataError(f"{frame.meta}: expected {{'instances': [{{'id', 'class'}}, ...]}} ({e})") from e
    bad = [c for c in classes.tolist() if not 0 <= c < num_classes]
    if bad:
        raise InstanceDataError(f"{frame.meta}: classes {bad} outside the label map's 0..{num_classes - 1}")
    stray = sorted(set(np.unique(ids).tolist()) - {0} - set(present))
    if stray:
        raise InstanceDataError(f"{frame.ids}: instance ids {stray[:10]} are not listed in {frame.meta}")
    masks = np.stack([ids == i for i in present]) if present else np.zeros((0, *ids.shape), bool)
    empty = [i for i, m in zip(present, masks, strict=True) if not m.any()]
    if empty:
        raise InstanceDataError(f"{frame.meta}: instances {empty[:10]} have no pixels in {frame.ids}")
    return Instances(masks, classes, crowd)


def read_frame(frame: InstanceFrame, num_classes: int) -> tuple[np.ndarray, Instances]:
    """(RGB uint8 frame, its instances); the id map must have the frame's size."""
    from segray.frames.decode import decode_frame

    rgb = decode_frame(storage.read_bytes(frame.image))
    inst = read_instances(frame, num_classes)
    if inst.masks.shape[1:] != rgb.shape[:2]:
        raise InstanceDataError(
            f"{frame.ids}: id map is {inst.masks.shape[2]}x{inst.masks.shape[1]} but its frame is "
            f"{rgb.shape[1]}x{rgb.shape[0]}"
        )
    return rgb, inst
