"""Generic folders: ``SRC/images/**`` frames and ``SRC/masks/**`` masks with the same stem, plus a
label map (``--labels`` JSON or built-in name, else ``SRC/labels.json``).

Masks are class indices (8-bit grayscale or palette PNG; every value must be a class id or the
ignore id) or, with ``--color-masks``, RGB images in the label map's colours (the ignore class's
colour -> ignore). Colour masks must match exactly unless ``--tolerance`` is given, in which case
a pixel farther than it from every colour becomes ignore and is counted as ambiguous. Everything
goes to ``--split`` (default ``train``); with sub-folders under ``images/`` whose names are splits
(``images/train``, ``images/val``), give ``--split auto``.
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
    split_of,
    stem,
)
from segray.datasets.formats.colours import Palette, map_colours, unknown_colours
from segray.labels import LabelMap, load_label_map

AUTO = "auto"


def label_map_for(src: str, spec: str | None) -> LabelMap:
    if spec:
        return load_label_map(spec)
    uri = storage.join(src, "labels.json")
    if not storage.exists(uri):
        raise ConvertError(f"{src}: folders need a label map: pass --labels JSON or put labels.json in SRC")
    return LabelMap.from_json(storage.read_bytes(uri).decode("utf-8"), uri)


def palette_of(label_map: LabelMap) -> Palette:
    pairs = [(c.color, c.id) for c in label_map.classes]
    if label_map.ignore is not None:
        pairs.append((label_map.ignore.color, label_map.ignore.id))
    try:
        return Palette.of(pairs)
    except ValueError as e:
        raise ConvertError(f"label map {label_map.name!r}: colour masks need one colour per class ({e})") from e


def _by_stem(root: str) -> dict[str, tuple[str, str]]:
    """relative path without suffix -> (relative path, URI); two files with one stem are an error."""
    out: dict[str, tuple[str, str]] = {}
    for rel, uri in relative_files(root, IMAGE_SUFFIXES):
        key = posixpath.splitext(rel)[0]
        if key in out:
            raise ConvertError(f"{uri}: same stem as {out[key][1]}")
        out[key] = (rel, uri)
    return out


def plan(src: str, options: ConvertOptions) -> Plan:
    label_map = label_map_for(src, options.labels)
    images_root, masks_root = storage.join(src, options.images_dir), storage.join(src, options.masks_dir)
    images, masks = _by_stem(images_root), _by_stem(masks_root)
    for root, found in ((images_root, images), (masks_root, masks)):
        if not found:
            raise ConvertError(f"{root}: no images (folders expects {options.images_dir}/ and {options.masks_dir}/)")
    samples = []
    for key, (rel, uri) in images.items():
        if key not in masks:
            raise ConvertError(f"{uri}: no mask {options.masks_dir}/{key}.png for this frame")
        split = split_of(rel, options.split) if options.split == AUTO else options.split
        if split == AUTO:
            raise ConvertError(f"{uri}: --split auto needs images/<split>/... sub-folders")
        samples.append(Sample(split, stem(rel), uri, masks[key][1]))
    palette = palette_of(label_map) if options.color_masks else None
    ignore = label_map.ignore_index

    def load(s: Sample) -> Converted:
        data, rgb = read_rgb(s.image_uri)
        if palette is None:
            return Converted(
                data, image_ext(s.image_uri), check_mask(read_index_mask(s.source), label_map, s.source, rgb.shape[:2])
            )
        _, colours = read_rgb(s.source)
        if colours.shape != rgb.shape:
            raise ConvertError(f"{s.source}: mask size {colours.shape[:2]} differs from its frame's {rgb.shape[:2]}")
        mask, ambiguous = map_colours(colours, palette, options.tolerance or 0.0, ignore)
        if ambiguous and label_map.ignore_id is None:
            raise ConvertError(
                f"{s.source}: {ambiguous} pixels match no colour of label map {label_map.name!r}, which has no "
                f"ignore class to put them in, e.g. {unknown_colours(colours, palette)}"
            )
        if ambiguous and options.tolerance is None:
            raise ConvertError(
                f"{s.source}: {ambiguous} pixels have colours not in label map {label_map.name!r}, e.g. "
                f"{unknown_colours(colours, palette)} (pass --tolerance to map near colours and ignore the rest)"
            )
        return Converted(data, image_ext(s.image_uri), mask, ambiguous)

    return Plan(label_map, samples, load, {"color_masks": options.color_masks})
