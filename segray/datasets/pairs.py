"""Which (image, mask) pairs a training or evaluation run sees, on a folder or S3.

Three sources, one result (a sorted list of :class:`Pair`):

- a canonical root and a split: ``<root>/<split>/<name>.<png|jpg>`` with ``<root>/<split>annot/<stem>.png``;
- a generic pair of folders: images and masks matched by file stem (sub-folders kept);
- a manifest (``.parquet``/``.csv``) with image and mask URI columns (relative URIs are relative
  to the manifest's folder).

A frame without a mask is an error that names the frame: silently training on fewer frames than
the user believes is worse than stopping. Masks without a frame are ignored (annotation folders
often hold extras). Only light imports here: the driver lists pairs before Ray starts.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from segray import storage
from segray.frames.listing import IMAGE_SUFFIXES, resolve_manifest_uri, uri_of
from segray.labels import BUILTIN, LabelMap, load_label_map
from segray.options import did_you_mean

MASK_SUFFIXES = (".png",)
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Pair:
    image: str
    mask: str

    @property
    def name(self) -> str:
        """The frame's file name (CamVid's sequence prefix, e.g. ``0001TP_006690.png``, lives here)."""
        return posixpath.basename(self.image)


@dataclass
class PairSource:
    """Where pairs come from: exactly one of ``split`` (with ``root``), ``images``+``masks``, ``manifest``.

    ``include_prefixes``/``exclude_prefixes`` filter by file name, e.g. to hold out a whole CamVid
    sequence (``exclude_prefixes: [0001TP]`` for training, ``include_prefixes: [0001TP]`` to score it).
    ``limit`` keeps the first N pairs (smoke runs).
    """

    root: str | None = None
    split: str | None = None
    images: str | None = None
    masks: str | None = None
    manifest: str | None = None
    image_column: str = "image"
    mask_column: str = "mask"
    include_prefixes: list[str] = field(default_factory=list)
    exclude_prefixes: list[str] = field(default_factory=list)
    limit: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "data source") -> PairSource:
        known = sorted(cls.__dataclass_fields__)
        for key in sorted(set(d) - set(known)):
            hint = did_you_mean(key, known)
            raise ValueError(f"unknown key {where}.{key}: " + (hint or f"known keys: {', '.join(known)}"))
        src = cls(**d)
        src.include_prefixes = list(src.include_prefixes or [])
        src.exclude_prefixes = list(src.exclude_prefixes or [])
        return src

    def describe(self) -> str:
        if self.manifest:
            return self.manifest
        if self.images:
            return f"{self.images} + {self.masks}"
        return storage.join(self.root or "?", self.split or "?")


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _rel_stem(path: str, root: str) -> str:
    return posixpath.splitext(posixpath.relpath(path, root))[0]


def list_folder_pairs(images: str, masks: str) -> list[Pair]:
    """Frames under ``images`` matched to ``<masks>/<same relative path, .png>``."""
    storage.check_readable(images)
    storage.check_readable(masks)
    _, img_root = storage.resolve(images)
    _, mask_root = storage.resolve(masks)
    by_stem = {_rel_stem(p, mask_root): p for p in storage.list_files(masks, MASK_SUFFIXES)}
    frames = storage.list_files(images, IMAGE_SUFFIXES)
    if not frames:
        raise ValueError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for p in frames:
        key = _rel_stem(p, img_root)
        if key not in by_stem:
            raise ValueError(
                f"{uri_of(images, p)}: no mask for this frame (expected {storage.join(masks, key + '.png')})"
            )
        pairs.append(Pair(uri_of(images, p), uri_of(masks, by_stem[key])))
    return pairs


def list_manifest_pairs(manifest: str, image_column: str = "image", mask_column: str = "mask") -> list[Pair]:
    import io

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = storage.read_bytes(manifest)
    table = (
        pq.read_table(io.BytesIO(data)) if manifest.lower().endswith(".parquet") else pacsv.read_csv(io.BytesIO(data))
    )
    for col in (image_column, mask_column):
        if col not in table.column_names:
            raise ValueError(f"{manifest}: no {col!r} column (columns: {table.column_names})")
    pairs = []
    for i, (img, mask) in enumerate(
        zip(table.column(image_column).to_pylist(), table.column(mask_column).to_pylist(), strict=True)
    ):
        if not img or not mask:
            raise ValueError(f"{manifest}: row {i} has an empty {image_column!r} or {mask_column!r}")
        pairs.append(Pair(resolve_manifest_uri(manifest, str(img)), resolve_manifest_uri(manifest, str(mask))))
    if not pairs:
        raise ValueError(f"{manifest}: the manifest has no rows")
    return pairs


def list_pairs(src: PairSource) -> list[Pair]:
    """The pairs of a source, filtered and limited; errors name the source or the unmatched frame."""
    chosen = [bool(src.split), bool(src.images or src.masks), bool(src.manifest)]
    if sum(chosen) != 1:
        raise ValueError(f"data source {src}: give exactly one of split (with root), images + masks, or manifest")
    if src.manifest:
        pairs = list_manifest_pairs(src.manifest, src.image_column, src.mask_column)
    elif src.split:
        if not src.root:
            raise ValueError(f"data source split={src.split!r}: no dataset root given")
        pairs = list_folder_pairs(storage.join(src.root, src.split), storage.join(src.root, src.split + "annot"))
    else:
        if not (src.images and src.masks):
            raise ValueError(f"data source {src}: images and masks must both be given")
        pairs = list_folder_pairs(src.images, src.masks)
    if src.include_prefixes:
        pairs = [p for p in pairs if p.name.startswith(tuple(src.include_prefixes))]
    if src.exclude_prefixes:
        pairs = [p for p in pairs if not p.name.startswith(tuple(src.exclude_prefixes))]
    if src.limit is not None:
        pairs = pairs[: src.limit]
    if not pairs:
        raise ValueError(f"{src.describe()}: no (image, mask) pairs left after filtering")
    return pairs


def dataset_label_map(root: str | None, spec: str | None = None) -> LabelMap:
    """``spec`` (built-in name or JSON path/URI) if given, else ``<root>/labels.json``, else CamVid."""
    if spec:
        return load_label_map(spec)
    if root:
        uri = storage.join(root, LABELS_FILE)
        if storage.exists(uri):
            return LabelMap.from_json(storage.read_bytes(uri).decode("utf-8"), uri)
    return BUILTIN["camvid"]


def read_pair(pair: Pair, label_map: LabelMap) -> tuple[Any, Any]:
    """(H, W, 3) uint8 RGB frame and (H, W) uint8 mask, of one size, the mask's ids checked."""
    from segray.datasets.masks import read_mask
    from segray.frames.decode import FrameError, decode_frame

    try:
        image = decode_frame(storage.read_bytes(pair.image))
    except FrameError as e:
        raise ValueError(f"{pair.image}: {e}") from e
    mask = read_mask(pair.mask, label_map)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{pair.mask}: mask is {mask.shape[::-1]} but its frame {pair.image} is {image.shape[1::-1]}")
    return image, mask
