"""What the instance converters (``via-instances``, ``coco``) share: the object label map, the
bounds check and the rasterisation of annotations into one 16-bit instance id map.

Every polygon is filled with ``cv2.fillPoly`` on its vertices rounded to whole pixels, boundary
included, exactly as the semantic VIA converter does; so the same polygon drawn in VIA or written
in COCO gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segray.datasets.formats.base import ConvertError
from segray.datasets.instances import MAX_INSTANCES
from segray.labels import LabelClass, LabelMap, load_label_map

#: distinct display colours for derived label maps (tab10)
COLOURS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
#: the name of a derived instance label map
DERIVED_NAME = "instances"


@dataclass
class Annotation:
    """One instance to draw: its class index and either polygons or a ready (H, W) mask."""

    cls: int
    where: str
    polygons: list[np.ndarray] | None = None
    mask: np.ndarray | None = None
    crowd: bool = False


def object_label_map(names: list[str], labels: str | None) -> LabelMap:
    """The given label map, or one derived from the class names in order; object classes only."""
    if labels:
        return load_label_map(labels)
    classes = tuple(LabelClass(i, n, COLOURS[i % len(COLOURS)]) for i, n in enumerate(names))
    return LabelMap(DERIVED_NAME, classes)


def check_inside(pts: np.ndarray, shape: tuple[int, int], where: str) -> None:
    """Vertices must lie on the frame: x in [0, W], y in [0, H] (COCO's continuous coordinates)."""
    h, w = shape
    x, y = pts[:, 0], pts[:, 1]
    if x.min() < 0 or y.min() < 0 or x.max() > w or y.max() > h:
        raise ConvertError(
            f"{where}: polygon reaches ({x.min():g}, {y.min():g})-({x.max():g}, {y.max():g}), outside the {w}x{h} frame"
        )


def rasterise_instances(shape: tuple[int, int], annotations: list[Annotation]) -> tuple[np.ndarray, list[dict], int]:
    """(uint16 id map, instance list, instances dropped because later ones hide them entirely)."""
    import cv2

    if len(annotations) > MAX_INSTANCES:
        raise ConvertError(f"{annotations[0].where}: {len(annotations)} instances, more than a 16-bit map holds")
    ids = np.zeros(shape, np.uint16)
    for k, a in enumerate(annotations, start=1):
        if a.mask is not None:
            if a.mask.shape != shape:
                raise ConvertError(
                    f"{a.where}: mask is {a.mask.shape[1]}x{a.mask.shape[0]} but its frame is {shape[1]}x{shape[0]}"
                )
            ids[a.mask.astype(bool)] = k
        else:
            layer = np.zeros(shape, np.uint8)
            for pts in a.polygons or []:
                cv2.fillPoly(layer, [np.rint(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
            ids[layer.astype(bool)] = k
    present = set(np.unique(ids).tolist())
    instances: list[dict] = []
    renumber = np.zeros(len(annotations) + 1, np.uint16)
    for k, a in enumerate(annotations, start=1):
        if k in present:
            renumber[k] = len(instances) + 1
            instances.append({"id": len(instances) + 1, "class": a.cls, **({"crowd": True} if a.crowd else {})})
    return renumber[ids], instances, len(annotations) - len(instances)
