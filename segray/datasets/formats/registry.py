"""Format name -> converter: one plain dict, as smp keeps its architectures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from segray.datasets.formats import camvid, cityscapes, cityscapes_pairs, folders, kitti_road, via
from segray.datasets.formats.base import ConvertOptions, Plan


@dataclass(frozen=True)
class Format:
    plan: Callable[[str, ConvertOptions], Plan]
    #: ConvertOptions fields this format reads (others given on the command line are refused).
    options: tuple[str, ...]
    summary: str


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
    "folders": Format(
        folders.plan,
        ("labels", "images_dir", "masks_dir", "color_masks", "tolerance", "split"),
        "images/ + masks/ with the same stem, index or (--color-masks) RGB masks + label-map JSON",
    ),
}
