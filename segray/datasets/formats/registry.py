"""Format name -> converter: one plain dict, as smp keeps its architectures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from segray.datasets.formats import camvid, cityscapes, cityscapes_pairs, coco, folders, kitti_road, via, via_instances
from segray.datasets.formats.base import ConvertOptions, Plan


@dataclass(frozen=True)
class Format:
    plan: Callable[[str, ConvertOptions], Plan]
    #: ConvertOptions fields this format reads (others given on the command line are refused).
    options: tuple[str, ...]
    summary: str
    #: writes the canonical instance layout (segray.datasets.instances) rather than class masks
    instances: bool = False


FORMATS: dict[str, Format] = {
    "camvid": Format(camvid.plan, (), "CamVid/SegNet layout: <split>/*.png + <split>annot/*.png"),
    "cityscapes": Format(
        cityscapes.plan, ("target",), "official leftImg8bit/ + gtFine/*_labelIds.png -> train ids or categories"
    ),
    "cityscapes-pairs": Format(
        cityscapes_pairs.plan,
        ("target", "tolerance", "split"),
        "Kaggle/pix2pix <split>/*.jpg: photo | colour labels, nearest official colour",
    ),
    "kitti-road": Format(
        kitti_road.plan, ("split",), "data_road: image_2/ + gt_image_2/*_road_*.png -> road / not road"
    ),
    "via": Format(
        via.plan,
        ("attribute", "priority", "labels", "split"),
        "VGG Image Annotator 2 JSON: polygons/rects/circles/ellipses rasterised, class from --attribute",
    ),
    "via-instances": Format(
        via_instances.plan,
        ("attribute", "labels", "split"),
        "VIA 2 JSON as instances: each region one object, class from --attribute",
        instances=True,
    ),
    "coco": Format(
        coco.plan,
        ("labels", "split"),
        "COCO instances: annotations/instances_<split>.json + <split>/ images (polygons or RLE)",
        instances=True,
    ),
    "folders": Format(
        folders.plan,
        ("labels", "images_dir", "masks_dir", "color_masks", "tolerance", "split"),
        "images/ + masks/ with the same stem, index or (--color-masks) RGB masks + label-map JSON",
    ),
}
