"""``segray data stats``: the exploratory figures tutorials compute by hand, for a canonical root.

Counts frames per split and image sizes, per-class pixel frequency (share of labelled pixels; for
the ignore id, share of all pixels),
frames per class, and SegNet's median-frequency class weights (``median(freq) / freq(c)`` with
``freq(c)`` = pixels of c / pixels of the frames where c appears), which training can use as loss
weights. Writes, under ``--out`` (default ``<root>/_eda``, skipped by every listing):

    summary.json          everything below, machine-readable
    class_stats.csv       one row per class (+ the ignore id): pixels, share, frames, weight
    class_frequency.png   bar chart of pixel share per class, in the classes' colours
    previews.png          a few frames beside their colour masks and an overlay

Masks are read with PIL (indices, never palette colours); image sizes from headers only.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.labels import LabelMap

OUT_DIR = "_eda"


@dataclass
class DatasetStats:
    root: str
    label_map: LabelMap
    frames: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    #: (256,) pixels per mask value over all frames
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    #: (256,) frames in which each mask value appears
    frames_with: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    #: (256,) pixels of the frames in which each value appears (median-frequency denominator)
    pixels_of_frames_with: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())

    def class_rows(self) -> list[dict[str, Any]]:
        lm = self.label_map
        labelled = int(self.pixels[: lm.num_classes].sum())
        freq = np.divide(
            self.pixels, self.pixels_of_frames_with, out=np.zeros(256), where=self.pixels_of_frames_with > 0
        )[: lm.num_classes]
        present = freq[freq > 0]
        median = float(np.median(present)) if present.size else 0.0
        rows = []
        for c in lm.classes:
            rows.append(
                {
                    "id": c.id,
                    "class": c.name,
                    "pixels": int(self.pixels[c.id]),
                    "pixel_share": float(self.pixels[c.id] / labelled) if labelled else 0.0,
                    "frames": int(self.frames_with[c.id]),
                    "frame_share": float(self.frames_with[c.id] / self.total_frames) if self.total_frames else 0.0,
                    "median_freq_weight": float(median / freq[c.id]) if freq[c.id] > 0 else 0.0,
                }
            )
        if lm.ignore is not None:
            i = lm.ignore.id
            rows.append(
                {
                    "id": i,
                    "class": f"{lm.ignore.name} (ignored)",
                    "pixels": int(self.pixels[i]),
                    # the ignore row's share is of all pixels (the classes' shares are of labelled ones)
                    "pixel_share": float(self.pixels[i] / self.pixels.sum()) if self.pixels.sum() else 0.0,
                    "frames": int(self.frames_with[i]),
                    "frame_share": float(self.frames_with[i] / self.total_frames) if self.total_frames else 0.0,
                    "median_freq_weight": 0.0,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "label_map": self.label_map.name,
            "frames": self.frames,
            "total_frames": self.total_frames,
            "image_sizes": self.sizes,
            "total_pixels": int(self.pixels.sum()),
            "classes": self.class_rows(),
        }


def splits_of(root: str, suffix: str = "annot") -> list[str]:
    """The splits of a canonical root: top-level folders that have a ``<split><suffix>`` beside them
    (``annot``: semantic masks; ``inst``: instance id maps)."""
    _, base = storage.resolve(root)
    tops = {p[len(base) + 1 :].split("/", 1)[0] for p in storage.list_files(root) if "/" in p[len(base) + 1 :]}
    return sorted(t for t in tops if f"{t}{suffix}" in tops)


def _one(image_uri: str, mask_uri: str) -> tuple[tuple[int, int], np.ndarray]:
    from PIL import Image

    from segray.datasets.formats.base import read_index_mask

    with Image.open(io.BytesIO(storage.read_bytes(image_uri))) as im:
        size = (int(im.width), int(im.height))
    mask = read_index_mask(mask_uri)
    if (mask.shape[1], mask.shape[0]) != size:
        raise ValueError(f"{mask_uri}: mask is {mask.shape[1]}x{mask.shape[0]} but its frame is {size[0]}x{size[1]}")
    return size, np.bincount(mask.ravel(), minlength=256)


def _count(stats: DatasetStats, pairs: list[tuple[str, str]], workers: int) -> None:
    """Adds the (image, mask) pairs' sizes and per-value pixel counts to ``stats``."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (w, h), counts in pool.map(lambda im: _one(*im), pairs):
            key = f"{w}x{h}"
            stats.sizes[key] = stats.sizes.get(key, 0) + 1
            stats.pixels += counts
            present = counts > 0
            stats.frames_with += present
            stats.pixels_of_frames_with += present * (w * h)


#: ``class_weights: auto`` reads at most this many training masks, evenly spread over the list:
#: the weights are ratios of class frequencies, which a few thousand frames pin down.
AUTO_WEIGHTS_MAX_MASKS = 2000


def median_frequency_weights(pairs: list[tuple[str, str]], label_map: LabelMap, workers: int = 8) -> list[float]:
    """SegNet's median-frequency class weights from training (image, mask) pairs, one per class;
    1.0 for a class no mask holds (its weight then changes nothing)."""
    if len(pairs) > AUTO_WEIGHTS_MAX_MASKS:
        step = len(pairs) / AUTO_WEIGHTS_MAX_MASKS
        pairs = [pairs[int(i * step)] for i in range(AUTO_WEIGHTS_MAX_MASKS)]
    stats = DatasetStats("", label_map, frames={"train": len(pairs)})
    _count(stats, pairs, workers)
    rows = stats.class_rows()[: label_map.num_classes]
    return [round(r["median_freq_weight"], 4) if r["median_freq_weight"] > 0 else 1.0 for r in rows]


def compute_stats(
    root: str, label_map: LabelMap | None = None, splits: list[str] | None = None, workers: int = 8
) -> tuple[DatasetStats, list[tuple[str, str]]]:
    """Stats over the given splits (default: all), and the (image, mask) URIs seen, in order."""
    from segray.datasets.pairs import dataset_label_map, list_folder_pairs

    storage.check_readable(root)
    lm = label_map or dataset_label_map(root)
    splits = splits or splits_of(root)
    if not splits:
        raise ValueError(
            f"{root}: no <split>/ + <split>annot/ folders (semantic) nor <split>/ + <split>inst/ (instances): "
            "not a canonical dataset root? (segray data convert makes one)"
        )
    stats = DatasetStats(root, lm)
    seen: list[tuple[str, str]] = []
    for split in splits:
        pairs = list_folder_pairs(storage.join(root, split), storage.join(root, f"{split}annot"))
        stats.frames[split] = len(pairs)
        seen.extend((p.image, p.mask) for p in pairs)
    _count(stats, seen, workers)
    bad = np.nonzero(stats.pixels[lm.num_classes :])[0] + lm.num_classes
    bad = bad[bad != lm.ignore_index]
    if bad.size:
        raise ValueError(f"{root}: masks hold ids {bad.tolist()} that label map {lm.name!r} does not define")
    return stats, seen


def format_table(stats: DatasetStats) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in stats.frames.items())
    sizes = ", ".join(f"{k} ({v})" for k, v in sorted(stats.sizes.items(), key=lambda kv: -kv[1]))
    lines = [
        f"{stats.root}: {stats.total_frames} frames ({splits}); label map {stats.label_map.name}",
        f"image sizes: {sizes}",
        f"{'id':>3}  {'class':<24}{'pixels':>14}{'share':>9}{'frames':>8}{'in %':>8}{'mf weight':>11}",
    ]
    for r in stats.class_rows():
        lines.append(
            f"{r['id']:>3}  {r['class']:<24}{r['pixels']:>14,}{r['pixel_share']:>9.2%}{r['frames']:>8}"
            f"{r['frame_share']:>8.0%}{r['median_freq_weight']:>11.3f}"
        )
    return "\n".join(lines)


def class_frequency_png(stats: DatasetStats) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in stats.class_rows() if not r["class"].endswith("(ignored)")]
    lm = stats.label_map
    fig = Figure(figsize=(8, 0.35 * len(rows) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    colours = [np.array(lm.classes[r["id"]].color) / 255 for r in rows]
    ax.barh(y, [r["pixel_share"] * 100 for r in rows], color=colours, edgecolor="black", linewidth=0.5)
    ax.set_yticks(y, [f"{r['class']} ({r['frames']} fr.)" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("share of labelled pixels (%)")
    ax.set_title(f"{lm.name}: class frequency over {stats.total_frames} frames")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def previews_png(pairs: list[tuple[str, str]], label_map: LabelMap, n: int = 4) -> bytes:
    """Up to ``n`` frames, evenly spread over the dataset: frame | colour mask | overlay."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from segray.datasets.formats.base import read_index_mask, read_rgb

    picks = [pairs[i] for i in np.linspace(0, len(pairs) - 1, min(n, len(pairs))).round().astype(int)]
    fig = Figure(figsize=(9, 2.6 * len(picks)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, (image_uri, mask_uri) in zip(axes, picks, strict=True):
        _, rgb = read_rgb(image_uri)
        colour = label_map.colorize(read_index_mask(mask_uri))
        overlay = (0.5 * rgb + 0.5 * colour).astype(np.uint8)
        for ax, img, title in zip(row, (rgb, colour, overlay), ("frame", "mask", "overlay"), strict=True):
            ax.imshow(img)
            ax.set_title(f"{title}: {image_uri.rsplit('/', 1)[-1]}" if title == "frame" else title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


def class_stats_csv(stats: DatasetStats) -> bytes:
    rows = stats.class_rows()
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def write_stats(
    root: str, out: str | None = None, splits: list[str] | None = None, previews: int = 4, labels: str | None = None
) -> tuple[DatasetStats, str]:
    """Compute the stats of a canonical root and write the figures; returns the stats and ``out``."""
    from segray.labels import load_label_map

    stats, pairs = compute_stats(root, load_label_map(labels) if labels else None, splits)
    out = out or storage.join(root, OUT_DIR)
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(stats.to_dict(), indent=2).encode())
    storage.write_bytes(storage.join(out, "class_stats.csv"), class_stats_csv(stats))
    storage.write_bytes(storage.join(out, "class_frequency.png"), class_frequency_png(stats))
    if previews > 0:
        storage.write_bytes(storage.join(out, "previews.png"), previews_png(pairs, stats.label_map, previews))
    return stats, out
