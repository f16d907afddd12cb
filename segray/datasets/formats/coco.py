"""COCO instance annotations (``instances_*.json``) -> the canonical instance layout.

SRC: a folder holding ``annotations/instances_<split>.json`` with each split's images in
``<SRC>/<split>/`` (COCO's own layout, e.g. ``instances_val2017.json`` + ``val2017/``), or one JSON
file (-> ``--split``) whose ``file_name``s are relative to the JSON's folder.

Segmentations: polygons (a list of ``[x1, y1, x2, y2, ...]`` parts, filled as the VIA converters
fill them: ``cv2.fillPoly`` on rounded vertices, boundary included; vertices must lie on the frame)
or RLE (compressed or uncompressed, decoded with pycocotools; its size must be the image's).
Annotations overlap in file order, the later on top. ``iscrowd: 1`` annotations are kept as crowd
regions. Images without annotations are converted (frames with no instances teach the model too).

Classes: ``--labels`` (a label map listing the object classes), else the categories in id order,
their names lower-cased with ``_`` for anything but letters and digits. An annotation whose
category is not in ``categories``, or whose image is not in ``images``, is an error naming it.
"""

from __future__ import annotations

import json
import posixpath
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
    stem,
)
from segray.datasets.formats.instance_base import Annotation, check_inside, object_label_map, rasterise_instances
from segray.datasets.formats.via import class_name

PREFIX = "instances_"


def _json_files(src: str, default_split: str) -> list[tuple[str, str, str]]:
    """(split, JSON URI, image folder) triples."""
    if src.lower().endswith(".json"):
        return [(default_split, src, posixpath.dirname(src) or ".")]
    found = []
    for rel, uri in relative_files(storage.join(src, "annotations"), (".json",)):
        name = posixpath.basename(rel)
        if "/" in rel or not name.startswith(PREFIX):
            continue
        split = name[len(PREFIX) : -len(".json")]
        found.append((split, uri, storage.join(src, split)))
    if not found:
        raise ConvertError(f"{src}: no annotations/instances_<split>.json found (or give one COCO JSON file)")
    return found


def _load(uri: str) -> dict[str, Any]:
    try:
        doc = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{uri}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations")):
        raise ConvertError(f"{uri}: not a COCO instances file (expected 'images', 'annotations', 'categories' lists)")
    return doc


def _segmentation(ann: dict[str, Any], h: int, w: int, where: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Polygons as (K, 2) arrays, or an RLE decoded to an (H, W) mask."""
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        parts = []
        for part in seg:
            if not isinstance(part, list) or len(part) < 6 or len(part) % 2:
                raise ConvertError(f"{where}: a polygon part needs an even count of 6 or more coordinates")
            pts = np.asarray(part, np.float64).reshape(-1, 2)
            check_inside(pts, (h, w), where)
            parts.append(pts)
        if not parts:
            raise ConvertError(f"{where}: empty segmentation")
        return parts, None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        from pycocotools import mask as mask_utils

        if list(seg["size"]) != [h, w]:
            raise ConvertError(f"{where}: RLE size {seg['size']} but the image is {h}x{w} (height x width)")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else dict(seg)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        return [], mask_utils.decode(rle)
    raise ConvertError(f"{where}: segmentation must be polygons or RLE ({{'size', 'counts'}})")


def plan(src: str, options: ConvertOptions) -> Plan:
    files = _json_files(src, options.split)
    docs = [(split, uri, folder, _load(uri)) for split, uri, folder in files]
    categories: dict[int, str] = {}
    for _, uri, _, doc in docs:
        for c in doc.get("categories") or []:
            cid, name = int(c["id"]), class_name(str(c["name"]))
            if categories.get(cid, name) != name:
                raise ConvertError(f"{uri}: category {cid} is {name!r} here but {categories[cid]!r} in another file")
            categories[cid] = name
    if not categories:
        raise ConvertError(f"{src}: no categories in the COCO files")
    label_map = object_label_map([categories[k] for k in sorted(categories)], options.labels)
    ids = {n: i for i, n in enumerate(label_map.names)}
    unknown = sorted(set(categories.values()) - ids.keys())
    if unknown:
        raise ConvertError(f"{src}: categories {unknown} are not classes of label map {label_map.name!r}")
    samples = []
    for split, uri, folder, doc in docs:
        images: dict[int, dict[str, Any]] = {}
        for im in doc["images"]:
            try:
                images[int(im["id"])] = {"file": str(im["file_name"]), "h": int(im["height"]), "w": int(im["width"])}
            except (KeyError, TypeError, ValueError) as e:
                raise ConvertError(f"{uri}: image entry {im!r} lacks id, file_name, height or width") from e
        per_image: dict[int, list[dict[str, Any]]] = {k: [] for k in images}
        for ann in doc["annotations"]:
            where = f"{uri}: annotation {ann.get('id')}"
            if ann.get("image_id") not in images:
                raise ConvertError(f"{where}: image_id {ann.get('image_id')} is not in 'images'")
            if ann.get("category_id") not in categories:
                raise ConvertError(f"{where}: category_id {ann.get('category_id')} is not in 'categories'")
            per_image[ann["image_id"]].append(ann)
        for image_id, im in images.items():
            image_uri = storage.join(folder, im["file"])
            anns = [
                (a, ids[categories[a["category_id"]]], f"{uri}: annotation {a.get('id')}") for a in per_image[image_id]
            ]
            samples.append(Sample(split, stem(im["file"]), image_uri, (im["h"], im["w"], anns)))

    def load(s: Sample) -> Converted:
        h, w, anns = s.source
        if not storage.exists(s.image_uri):
            raise ConvertError(f"{s.image_uri}: image named in the COCO JSON does not exist")
        data, rgb = read_rgb(s.image_uri)
        if rgb.shape[:2] != (h, w):
            raise ConvertError(f"{s.image_uri}: image is {rgb.shape[1]}x{rgb.shape[0]} but the JSON says {w}x{h}")
        annotations = []
        for ann, cls, where in anns:
            polygons, mask = _segmentation(ann, h, w, where)
            crowd = bool(ann.get("iscrowd", 0))
            annotations.append(Annotation(cls, where, polygons=polygons or None, mask=mask, crowd=crowd))
        id_map, instances, hidden = rasterise_instances((h, w), annotations)
        return Converted(data, image_ext(s.image_uri), id_map, instances=instances, hidden=hidden)

    return Plan(label_map, samples, load, {"categories": {str(k): v for k, v in sorted(categories.items())}})
