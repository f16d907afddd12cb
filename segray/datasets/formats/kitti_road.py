"""KITTI road (``data_road``): ``training/image_2/<cat>_<n>.png`` with ground truth
``training/gt_image_2/<cat>_road_<n>.png`` (``um``, ``umm``, ``uu``; the ``_lane_`` files are not
used). Colours: magenta (255,0,255) = road -> 1, red (255,0,0) = not road -> 0, black = outside the
region of interest -> ignore (255). The label map is :data:`segray.labels.KITTI_ROAD`: two output
channels, so a binary model trains, evaluates and labels like any other (softmax, argmax).

``testing/`` has no ground truth and is skipped (the report says how many frames). SRC may be
``data_road`` or a folder that holds ``image_2`` and ``gt_image_2`` itself (-> ``--split``).
Any other colour in a ground-truth PNG is an error naming the file.
"""

from __future__ import annotations

import posixpath

from segray.datasets.formats.base import (
    Converted,
    ConvertError,
    ConvertOptions,
    Plan,
    Sample,
    read_rgb,
    relative_files,
)
from segray.datasets.formats.colours import Palette, map_colours, unknown_colours
from segray.labels import KITTI_ROAD

IMAGES, GT = "image_2", "gt_image_2"
#: KITTI's folder -> canonical split
SPLITS = {"training": "train"}
PALETTE = Palette.of([((255, 0, 255), 1), ((255, 0, 0), 0), ((0, 0, 0), 255)])


def gt_name(image_name: str) -> str:
    """``um_000000.png`` -> ``um_road_000000.png``."""
    cat, _, num = image_name.rpartition("_")
    return f"{cat}_road_{num}"


def plan(src: str, options: ConvertOptions) -> Plan:
    files = relative_files(src, (".png",))
    gts = {rel: uri for rel, uri in files if posixpath.basename(posixpath.dirname(rel)) == GT}
    with_gt = {posixpath.dirname(posixpath.dirname(rel)) for rel in gts}
    samples, skipped = [], 0
    for rel, uri in files:
        folder = posixpath.dirname(rel)
        if posixpath.basename(folder) != IMAGES:
            continue
        parent = posixpath.dirname(folder)
        gt = posixpath.join(parent, GT, gt_name(posixpath.basename(rel)))
        if gt not in gts:
            if parent not in with_gt:
                skipped += 1  # a split without ground truth (testing/)
                continue
            raise ConvertError(f"{uri}: no ground truth {gt} for this frame")
        split = SPLITS.get(posixpath.basename(parent), posixpath.basename(parent)) if parent else options.split
        samples.append(Sample(split, posixpath.splitext(posixpath.basename(rel))[0], uri, gts[gt]))
    if not samples and not skipped:
        raise ConvertError(f"{src}: no {IMAGES}/*.png frames (not a KITTI road folder?)")

    def load(s: Sample) -> Converted:
        data, rgb = read_rgb(s.image_uri)
        _, gt = read_rgb(s.source)
        if gt.shape != rgb.shape:
            raise ConvertError(f"{s.source}: ground truth size {gt.shape[:2]} differs from its frame's {rgb.shape[:2]}")
        mask, unmatched = map_colours(gt, PALETTE, 0, 255)
        if unmatched:
            raise ConvertError(
                f"{s.source}: {unmatched} pixels are neither road (255,0,255), not road (255,0,0) nor "
                f"outside the ROI (0,0,0), e.g. {unknown_colours(gt, PALETTE)}"
            )
        return Converted(data, ".png", mask)

    return Plan(KITTI_ROAD, samples, load, {"skipped_without_ground_truth": skipped})
