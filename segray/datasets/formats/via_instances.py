"""VIA 2 projects as instances: each region is one instance, its class from ``--attribute``.

Reads the same JSON files, shapes and attributes as the ``via`` format (see :mod:`.via`), and
writes the canonical instance layout (:mod:`segray.datasets.instances`) instead of a class mask.
Polygon and rect vertices must lie on the frame (an error names the region otherwise); circles and
ellipses are clipped to it. Regions overlap in file order, the later one on top.

Classes: ``--labels`` (a label map listing the object classes, no background), else the attribute
values found, sorted by name. A region whose class the label map lacks is an error.
"""

from __future__ import annotations

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
    stem,
)
from segray.datasets.formats.instance_base import Annotation, check_inside, object_label_map, rasterise_instances
from segray.datasets.formats.via import check_unique, polygon, read_projects


def plan(src: str, options: ConvertOptions) -> Plan:
    if not options.attribute:
        raise ConvertError(
            "via-instances: --attribute is required (the region attribute that names each region's class)"
        )
    raw = read_projects(src, options.attribute, options.split)
    names = sorted({c for _, _, regions in raw for _, c, _ in regions})
    label_map = object_label_map(names, options.labels)
    ids = {n: i for i, n in enumerate(label_map.names)}
    unknown = sorted(set(names) - ids.keys())
    if unknown:
        raise ConvertError(f"{src}: attribute values {unknown} are not classes of label map {label_map.name!r}")
    check_unique(raw)
    samples = [Sample(split, stem(image_uri), image_uri, regions) for split, image_uri, regions in raw]

    def load(s: Sample) -> Converted:
        if not storage.exists(s.image_uri):
            raise ConvertError(f"{s.image_uri}: image named in the VIA JSON does not exist")
        data, rgb = read_rgb(s.image_uri)
        shape = rgb.shape[:2]
        annotations = []
        region: tuple[dict[str, Any], str, str]
        for region in s.source:
            attrs, cls, where = region
            pts = polygon(attrs, where)
            if attrs.get("name") in ("polygon", "rect"):
                check_inside(pts, (shape[0] - 1, shape[1] - 1), where)  # VIA vertices are pixel indices
            annotations.append(Annotation(ids[cls], where, polygons=[pts.astype(np.float64)]))
        id_map, instances, hidden = rasterise_instances(shape, annotations)
        return Converted(data, image_ext(s.image_uri), id_map, instances=instances, hidden=hidden)

    return Plan(label_map, samples, load, {"attribute": options.attribute})
