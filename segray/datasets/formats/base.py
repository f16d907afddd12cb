"""What every format converter shares: the sample it plans, the pair it produces, and the errors.

A converter has two steps, so that listing (cheap, in the driver) is apart from decoding (per
frame, in a thread pool): ``plan(src, options)`` lists the samples and fixes the label map, and
``plan.load(sample)`` turns one sample into an image plus a class-index mask.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.labels import LabelMap

#: Image suffixes the converters accept as frames.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ConvertError(ValueError):
    """A source that cannot be converted; the message names the file and says why."""


@dataclass(frozen=True)
class ConvertOptions:
    """Every format's options in one place; each format reads the ones it documents."""

    #: cityscapes: ``trainids`` (19 classes) or ``categories`` (8 classes).
    target: str = "trainids"
    #: cityscapes-pairs, folders --color-masks: max RGB distance to a palette colour (else ignore).
    tolerance: float | None = None
    #: via: the region attribute that names a region's class.
    attribute: str | None = None
    #: via: classes in drawing order (later ones drawn over earlier ones); default file order.
    priority: tuple[str, ...] = ()
    #: via, folders: a label-map JSON (path or URI) or a built-in name.
    labels: str | None = None
    #: folders: sub-folders of SRC holding images and masks.
    images_dir: str = "images"
    masks_dir: str = "masks"
    #: folders: masks are RGB colours of the label map's palette, not class indices.
    color_masks: bool = False
    #: folders, via (single JSON): the split the samples go to.
    split: str = "train"


@dataclass(frozen=True)
class Sample:
    """One frame to convert: where it goes (split, stem) and where its parts come from."""

    split: str
    stem: str
    image_uri: str
    #: format-specific: a mask URI, a pair image's URI, or VIA regions.
    source: Any = None


@dataclass
class Converted:
    """One converted frame: encoded image bytes (kept as they came when possible) and its mask."""

    image: bytes
    image_ext: str
    mask: np.ndarray
    #: pixels set to ignore because their colour matched no class (colour-coded formats only).
    ambiguous: int = 0
    #: instance formats: ``mask`` is (H, W) uint16 instance ids (0 = none) and this lists them,
    #: ``{"id", "class"[, "crowd"]}`` (see :mod:`segray.datasets.instances`); None for class masks.
    instances: list[dict[str, Any]] | None = None
    #: instance formats: annotations dropped because later ones hide them entirely.
    hidden: int = 0


@dataclass
class Plan:
    label_map: LabelMap
    samples: list[Sample]
    load: Callable[[Sample], Converted]
    #: anything the format wants recorded in the conversion report (e.g. its options).
    notes: dict[str, Any] = field(default_factory=dict)


def image_ext(uri: str) -> str:
    ext = posixpath.splitext(uri)[1].lower()
    return ".jpg" if ext == ".jpeg" else ext


def stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri))[0]


def fs_uri(root: str, path: str) -> str:
    """A path that ``storage.list_files`` returned (inside the filesystem) back into a URI."""
    return f"s3://{path}" if storage.is_s3(root) else path


def list_images(root: str) -> list[str]:
    """URIs of the frames under a folder/prefix (recursive, sorted)."""
    return [fs_uri(root, p) for p in storage.list_files(root, IMAGE_SUFFIXES)]


def read_rgb(uri: str) -> tuple[bytes, np.ndarray]:
    """The file's bytes and its decoded (H, W, 3) uint8 RGB pixels."""
    from segray.frames.decode import FrameError, decode_frame

    data = storage.read_bytes(uri)
    try:
        return data, decode_frame(data)
    except FrameError as e:
        raise ConvertError(f"{uri}: {e.reason}") from e


def read_index_mask(uri: str) -> np.ndarray:
    """A single-channel 8-bit (grayscale or palette) PNG -> its (H, W) uint8 indices."""
    from segray.datasets.masks import MaskError, read_mask

    try:
        return read_mask(uri)
    except MaskError as e:
        raise ConvertError(str(e)) from e


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) uint8 class indices -> a plain 8-bit grayscale PNG (what the canonical layout holds)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, dtype=np.uint8))
    if not ok:
        raise ConvertError("could not encode a mask as PNG")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ConvertError("could not encode an image as PNG")
    return buf.tobytes()


def check_mask(mask: np.ndarray, label_map: LabelMap, uri: str, shape: tuple[int, int]) -> np.ndarray:
    """Refuse a mask whose size differs from its frame's or that holds ids the label map lacks."""
    if mask.shape != shape:
        raise ConvertError(f"{uri}: mask is {mask.shape[1]}x{mask.shape[0]} but its frame is {shape[1]}x{shape[0]}")
    allowed = np.zeros(256, dtype=bool)
    allowed[: label_map.num_classes] = True
    if label_map.ignore_id is not None:
        allowed[label_map.ignore_id] = True
    bad = np.unique(mask[~allowed[mask]])
    if bad.size:
        raise ConvertError(
            f"{uri}: mask holds ids {bad.tolist()[:10]} that label map {label_map.name!r} does not define "
            f"(classes 0..{label_map.num_classes - 1}, ignore {label_map.ignore_id})"
        )
    return mask


def relative_files(root: str, suffixes: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """``(path relative to root, URI)`` of every file under a folder/prefix, sorted; ``suffixes``
    match case-insensitively."""
    _, base = storage.resolve(root)
    suffixes = tuple(s.lower() for s in suffixes) if suffixes else suffixes
    return [(posixpath.relpath(p, base), fs_uri(root, p)) for p in storage.list_files(root, suffixes)]


def split_of(rel: str, default: str) -> str:
    """``<split>/<file>`` -> split; a file directly under the root goes to ``default``."""
    return rel.split("/", 1)[0] if "/" in rel else default
