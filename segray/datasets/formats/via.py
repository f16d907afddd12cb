"""Polygon annotations from the VGG Image Annotator (VIA 2) JSON export, as vineyard (GrapesNet-style)
datasets ship them: images beside a JSON that lists each image's regions.

Accepted JSON: a VIA 2 project (``{"_via_img_metadata": {...}}``) or the flat export
(``{key: {"filename", "regions": [{"shape_attributes", "region_attributes"}]}}``; ``regions`` may
also be a dict, as in VIA 1). Shapes: ``polygon``, ``rect``, ``circle``, ``ellipse`` (``polyline``
and ``point`` have no area and are refused). Every shape is rasterised with ``cv2.fillPoly``
(circles and ellipses through ``cv2.ellipse2Poly``), boundary pixels included; a rect covers
``x .. x+width-1``.

Class: the region attribute named by ``--attribute`` (a string, or a checkbox/dropdown dict with
exactly one true key). Pixels in no region are ``background`` (class 0) unless a label map says
otherwise. Without ``--labels`` the map is ``background`` plus the attribute values found, sorted.

Overlaps: regions are drawn in file order, later over earlier (what VIA shows), unless
``--priority a,b,...`` ranks classes from strongest to weakest: a listed class wins over an
unlisted one and over any listed after it; equals keep file order.

SRC: one JSON file (-> ``--split``), or a folder where each ``<split>/*.json`` (or a JSON at the
top, -> ``--split``) describes the images next to it.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
from typing import Any

import numpy as np

from segray import storage
from segray.datasets.formats.base import (
    Converted,
    ConvertError,
    ConvertOptions,
    Plan,
    Sample,
    image_ext,
    read_rgb,
    relative_files,
    split_of,
    stem,
)
from segray.labels import LabelClass, LabelMap, load_label_map

BACKGROUND = "background"
#: distinct display colours for derived label maps (tab10, background black)
COLOURS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def class_name(value: str) -> str:
    """An attribute value -> a label-map class name (lower case, ``_`` for anything else)."""
    return re.sub(r"[^a-z0-9_]+", "_", value.strip().lower()).strip("_")


def entries(doc: Any, uri: str) -> list[dict[str, Any]]:
    """The per-image entries of a VIA 2 project or flat export."""
    if isinstance(doc, dict) and "_via_img_metadata" in doc:
        doc = doc["_via_img_metadata"]
    if not isinstance(doc, dict) or not all(isinstance(v, dict) and "filename" in v for v in doc.values()):
        raise ConvertError(f"{uri}: not a VIA 2 export (expected {{key: {{filename, regions}}}} or _via_img_metadata)")
    return list(doc.values())


def region_class(region: dict[str, Any], attribute: str, where: str) -> str:
    attrs = region.get("region_attributes") or {}
    if attribute not in attrs:
        raise ConvertError(f"{where}: no region attribute {attribute!r} (has {sorted(attrs)})")
    value = attrs[attribute]
    if isinstance(value, dict):  # checkbox / dropdown with several options
        chosen = [k for k, v in value.items() if v]
        if len(chosen) != 1:
            raise ConvertError(f"{where}: attribute {attribute!r} must have exactly one value, got {chosen}")
        value = chosen[0]
    name = class_name(str(value))
    if not name:
        raise ConvertError(f"{where}: attribute {attribute!r} is empty")
    return name


def polygon(shape: dict[str, Any], where: str) -> np.ndarray:
    """A VIA shape -> (K, 2) int32 vertices for cv2.fillPoly."""
    import cv2

    kind = shape.get("name")
    try:
        if kind == "polygon":
            pts = np.stack([shape["all_points_x"], shape["all_points_y"]], axis=1)
        elif kind == "rect":
            x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
            pts = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]])
        elif kind in ("circle", "ellipse"):
            cx, cy = float(shape["cx"]), float(shape["cy"])
            rx, ry = (float(shape["r"]),) * 2 if kind == "circle" else (float(shape["rx"]), float(shape["ry"]))
            angle = math.degrees(float(shape.get("theta", 0.0)))
            centre, axes = (round(cx), round(cy)), (round(rx), round(ry))
            return np.asarray(cv2.ellipse2Poly(centre, axes, round(angle), 0, 360, 1), dtype=np.int32)
        else:
            raise ConvertError(f"{where}: shape {kind!r} has no area (use polygon, rect, circle or ellipse)")
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"{where}: malformed {kind} shape ({e})") from e
    if len(pts) < 3:
        raise ConvertError(f"{where}: a polygon needs 3 or more points, got {len(pts)}")
    return np.rint(pts.astype(np.float64)).astype(np.int32)


def draw_order(classes: list[str], priority: tuple[str, ...]) -> list[int]:
    """Region indices in drawing order (later drawn over earlier)."""
    rank = {c: len(priority) - i for i, c in enumerate(priority)}  # strongest drawn last
    return sorted(range(len(classes)), key=lambda i: rank.get(classes[i], 0))


def rasterise(shape: tuple[int, int], regions: list[tuple[np.ndarray, int]], background: int) -> np.ndarray:
    """Fill each (vertices, class id) in order onto a background mask."""
    import cv2

    mask = np.full(shape, background, dtype=np.uint8)
    for pts, cid in regions:
        cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], int(cid))
    return mask


def _derived_label_map(names: set[str]) -> LabelMap:
    ordered = [BACKGROUND, *sorted(names - {BACKGROUND})]
    classes = tuple(
        LabelClass(i, n, (0, 0, 0) if i == 0 else COLOURS[(i - 1) % len(COLOURS)]) for i, n in enumerate(ordered)
    )
    return LabelMap("via", classes, LabelClass(255, "void", (255, 255, 255)))


def _json_files(src: str, default_split: str) -> list[tuple[str, str]]:
    """(split, JSON URI) pairs."""
    if src.lower().endswith(".json"):
        return [(default_split, src)]
    found = [(split_of(rel, default_split), uri) for rel, uri in relative_files(src, (".json",))]
    found = [(s, u) for s, u in found if posixpath.basename(u) != "labels.json"]
    if not found:
        raise ConvertError(f"{src}: no VIA JSON file found")
    return found


#: One annotated image: (split, image URI, [(shape attributes, class name, where), ...]).
Annotated = tuple[str, str, list[tuple[dict[str, Any], str, str]]]


def read_projects(src: str, attribute: str, default_split: str) -> list[Annotated]:
    """Every image entry of every VIA JSON under ``src``, each region with its class name."""
    raw: list[Annotated] = []
    for split, uri in _json_files(src, default_split):
        try:
            doc = json.loads(storage.read_bytes(uri))
        except json.JSONDecodeError as e:
            raise ConvertError(f"{uri}: not valid JSON ({e})") from e
        folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
        for entry in entries(doc, uri):
            regions = entry.get("regions") or []
            if isinstance(regions, dict):  # VIA 1 keeps regions in a dict keyed "0", "1", ...
                regions = list(regions.values())
            where = f"{uri}: {entry['filename']}"
            named = [
                (
                    r.get("shape_attributes") or {},
                    region_class(r, attribute, f"{where} region {i}"),
                    f"{where} region {i}",
                )
                for i, r in enumerate(regions)
            ]
            raw.append((split, storage.join(folder, entry["filename"]), named))
    return raw


def check_unique(raw: list[Annotated]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for split, image_uri, _ in raw:
        key = (split, stem(image_uri))
        if key in seen:
            raise ConvertError(f"{image_uri}: annotated twice (also as {seen[key]}) in split {split!r}")
        seen[key] = image_uri


def plan(src: str, options: ConvertOptions) -> Plan:
    if not options.attribute:
        raise ConvertError("via: --attribute is required (the region attribute that names each region's class)")
    attribute = options.attribute
    priority = tuple(class_name(p) for p in options.priority)
    raw = read_projects(src, attribute, options.split)
    names = {c for _, _, regions in raw for _, c, _ in regions}
    label_map = load_label_map(options.labels) if options.labels else _derived_label_map(names)
    ids = {n: i for i, n in enumerate(label_map.names)}
    unknown = sorted(names - ids.keys())
    if unknown:
        raise ConvertError(f"{src}: attribute values {unknown} are not classes of label map {label_map.name!r}")
    if BACKGROUND not in ids:
        raise ConvertError(
            f"label map {label_map.name!r}: VIA masks need a {BACKGROUND!r} class for unannotated pixels"
        )
    check_unique(raw)
    samples = []
    for split, image_uri, regions in raw:
        order = draw_order([c for _, c, _ in regions], priority)
        samples.append(Sample(split, stem(image_uri), image_uri, [regions[i] for i in order]))

    def load(s: Sample) -> Converted:
        if not storage.exists(s.image_uri):
            raise ConvertError(f"{s.image_uri}: image named in the VIA JSON does not exist")
        data, rgb = read_rgb(s.image_uri)
        drawn = [(polygon(shape, where), ids[c]) for shape, c, where in s.source]
        return Converted(data, image_ext(s.image_uri), rasterise(rgb.shape[:2], drawn, ids[BACKGROUND]))

    return Plan(label_map, samples, load, {"attribute": attribute, "priority": list(priority)})
