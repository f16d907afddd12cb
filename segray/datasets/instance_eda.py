"""``segray data stats`` on the canonical instance layout: what a set holds before training on it.

Per split: frames and frame sizes. Per class: instances (crowd regions apart), frames holding one,
instances per frame, and instance area in pixels (median, 10th and 90th percentile, and the share
of small ones: under 32x32 pixels, COCO's "small", which mask AP finds hardest). Per frame: how
many instances, and how many frames hold none. Every id map and instance list is checked as
training reads it (:func:`segray.datasets.instances.read_instances`), so a set that passes here
trains. Writes ``summary.json`` and ``class_stats.csv`` under ``--output`` (default ``<root>/_eda``).
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.datasets.eda import OUT_DIR, splits_of
from segray.datasets.instances import INST_SUFFIX, InstanceFrame, instance_label_map, list_frames, read_instances
from segray.labels import LabelMap

#: COCO's small objects: area under 32 x 32 pixels.
SMALL_AREA = 32 * 32


def instance_splits(root: str) -> list[str]:
    """The splits of a canonical instance root: top-level folders with a ``<split>inst`` beside them."""
    return splits_of(root, INST_SUFFIX)


@dataclass
class InstanceStats:
    root: str
    label_map: LabelMap
    frames: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    #: per class: the area in pixels of each of its (non-crowd) instances
    areas: list[list[int]] = field(default_factory=list)
    #: per class: frames holding at least one of its instances
    frames_with: list[int] = field(default_factory=list)
    #: instances (crowd apart) in each frame, in listing order
    per_frame: list[int] = field(default_factory=list)
    crowd: int = 0

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())

    def class_rows(self) -> list[dict[str, Any]]:
        rows = []
        for c, name in enumerate(self.label_map.names):
            a = np.asarray(self.areas[c], np.int64)
            n = int(a.size)
            rows.append(
                {
                    "class": name,
                    "instances": n,
                    "frames_with": self.frames_with[c],
                    "per_frame": n / self.total_frames if self.total_frames else 0.0,
                    "median_px": float(np.median(a)) if n else None,
                    "p10_px": float(np.percentile(a, 10)) if n else None,
                    "p90_px": float(np.percentile(a, 90)) if n else None,
                    "small_share": float((a < SMALL_AREA).mean()) if n else None,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        per_frame = np.asarray(self.per_frame, np.int64)
        return {
            "root": self.root,
            "layout": "instances",
            "label_map": self.label_map.name,
            "frames": self.frames,
            "frame_sizes": self.sizes,
            "instances": int(per_frame.sum()),
            "crowd_regions": self.crowd,
            "instances_per_frame": {
                "mean": float(per_frame.mean()) if per_frame.size else 0.0,
                "max": int(per_frame.max()) if per_frame.size else 0,
                "frames_with_none": int((per_frame == 0).sum()),
            },
            "small_area_px": SMALL_AREA,
            "classes": self.class_rows(),
        }


def _one(frame: InstanceFrame, num_classes: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray]:
    """-> ((width, height), classes, crowd, area of each instance) of one frame, checked."""
    from PIL import Image

    with Image.open(io.BytesIO(storage.read_bytes(frame.image))) as im:
        size = (int(im.width), int(im.height))
    inst = read_instances(frame, num_classes)
    if inst.masks.shape[1:] != (size[1], size[0]):
        h, w = inst.masks.shape[1:]
        raise ValueError(f"{frame.ids}: id map is {w}x{h} but its frame is {size[0]}x{size[1]}")
    return size, inst.classes, inst.crowd, inst.masks.reshape(len(inst.masks), -1).sum(1)


def compute_instance_stats(
    root: str, labels: str | None = None, splits: list[str] | None = None, workers: int = 8
) -> InstanceStats:
    """Stats over the given splits (default: all) of a canonical instance root."""
    storage.check_readable(root)
    lm = instance_label_map(root, labels)
    splits = splits or instance_splits(root)
    if not splits:
        raise ValueError(f"{root}: no <split>/ + <split>{INST_SUFFIX}/ folders (not a canonical instance root?)")
    stats = InstanceStats(root, lm, areas=[[] for _ in lm.names], frames_with=[0] * lm.num_classes)
    frames: list[InstanceFrame] = []
    for split in splits:
        listed = list_frames(root, split)
        stats.frames[split] = len(listed)
        frames.extend(listed)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (w, h), classes, crowd, areas in pool.map(lambda f: _one(f, lm.num_classes), frames):
            key = f"{w}x{h}"
            stats.sizes[key] = stats.sizes.get(key, 0) + 1
            stats.crowd += int(crowd.sum())
            kept = ~crowd
            stats.per_frame.append(int(kept.sum()))
            for c, a in zip(classes[kept].tolist(), areas[kept].tolist(), strict=True):
                stats.areas[c].append(int(a))
            for c in set(classes[kept].tolist()):
                stats.frames_with[c] += 1
    return stats


def format_instance_table(stats: InstanceStats) -> str:
    d = stats.to_dict()
    splits = ", ".join(f"{k} {v}" for k, v in stats.frames.items())
    sizes = ", ".join(f"{k} ({v})" for k, v in sorted(stats.sizes.items(), key=lambda kv: -kv[1]))
    per = d["instances_per_frame"]

    def px(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    width = max([len("class")] + [len(n) for n in stats.label_map.names])
    lines = [
        f"instance set {stats.root}: {stats.total_frames} frames ({splits}); sizes {sizes}",
        f"{d['instances']} instances, {per['mean']:.2f} per frame (max {per['max']}), "
        f"{per['frames_with_none']} frames with none; {stats.crowd} crowd regions (left out of training and counts)",
        f"{'class':<{width}}  {'instances':>9}  {'frames':>6}  {'per frame':>9}  {'median px':>9}  "
        f"{'p10 px':>7}  {'p90 px':>8}  {'small':>6}",
    ]
    for r in d["classes"]:
        small = "-" if r["small_share"] is None else f"{r['small_share']:.0%}"
        lines.append(
            f"{r['class']:<{width}}  {r['instances']:>9,}  {r['frames_with']:>6,}  {r['per_frame']:>9.2f}  "
            f"{px(r['median_px']):>9}  {px(r['p10_px']):>7}  {px(r['p90_px']):>8}  {small:>6}"
        )
    return "\n".join(lines)


def class_stats_csv(stats: InstanceStats) -> bytes:
    keys = ["class", "instances", "frames_with", "per_frame", "median_px", "p10_px", "p90_px", "small_share"]
    lines = [",".join(keys)]
    for r in stats.class_rows():
        lines.append(",".join("" if r[k] is None else str(r[k]) for k in keys))
    return ("\n".join(lines) + "\n").encode()


def write_instance_stats(
    root: str, out: str | None = None, splits: list[str] | None = None, labels: str | None = None
) -> tuple[InstanceStats, str]:
    """Compute the stats of a canonical instance root and write them; returns the stats and ``out``."""
    stats = compute_instance_stats(root, labels, splits)
    out = out or storage.join(root, OUT_DIR)
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(stats.to_dict(), indent=2).encode())
    storage.write_bytes(storage.join(out, "class_stats.csv"), class_stats_csv(stats))
    return stats, out
