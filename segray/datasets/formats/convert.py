"""``convert(format, src, dst)``: plan the samples, then load and write them on a thread pool.

Frames are independent and the work is mostly I/O (S3 reads and writes) plus OpenCV/PIL decoding,
which release the GIL: threads in one process are enough, and the command needs no Ray cluster.
The first bad sample stops the run with an error naming its file; files already written stay
(a rerun overwrites them), and ``labels.json`` and ``_convert.json`` are written only at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from segray import storage
from segray.datasets.formats.base import ConvertError, ConvertOptions, Sample
from segray.datasets.formats.registry import FORMATS
from segray.datasets.formats.writer import CanonicalWriter


@dataclass
class ConvertReport:
    format: str
    src: str
    dst: str
    label_map: str
    frames: dict[str, int]
    mask_pixels: int
    #: pixels set to ignore because their colour matched no class within the tolerance
    ambiguous_pixels: int
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)
    #: instance formats: instances written per class, and those dropped as hidden entirely by later ones
    instances: dict[str, int] | None = None
    hidden_instances: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "converted_at": datetime.now(timezone.utc).isoformat()}

    def summary(self) -> str:
        splits = ", ".join(f"{k}: {v}" for k, v in sorted(self.frames.items()))
        share = self.ambiguous_pixels / self.mask_pixels if self.mask_pixels else 0.0
        if self.instances is not None:
            counts = ", ".join(f"{k} {v}" for k, v in self.instances.items())
            return (
                f"converted {sum(self.frames.values())} frames ({splits}) from {self.format} {self.src} to {self.dst} "
                f"in {self.seconds:.1f} s; label map {self.label_map}; instances: {counts}; hidden by later "
                f"annotations (dropped): {self.hidden_instances}"
            )
        return (
            f"converted {sum(self.frames.values())} frames ({splits}) from {self.format} {self.src} to {self.dst} "
            f"in {self.seconds:.1f} s; label map {self.label_map}; ambiguous pixels set to ignore: "
            f"{self.ambiguous_pixels:,} ({share:.3%})"
        )


def _check_unique(samples: list[Sample]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for s in samples:
        key = (s.split, s.stem)
        if key in seen:
            raise ConvertError(f"{s.image_uri}: same split and name ({s.split}/{s.stem}) as {seen[key]}")
        seen[key] = s.image_uri


def convert(fmt: str, src: str, dst: str, options: ConvertOptions | None = None, workers: int = 8) -> ConvertReport:
    """Convert ``src`` (in format ``fmt``) into the canonical layout under ``dst``."""
    if fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose from {sorted(FORMATS)}")
    options = options or ConvertOptions()
    start = time.perf_counter()
    storage.check_readable(src)
    storage.check_writable(dst)
    plan = FORMATS[fmt].plan(src, options)
    if not plan.samples:
        raise ConvertError(f"{src}: no frames found for format {fmt}")
    _check_unique(plan.samples)
    lm = plan.label_map
    valid = np.zeros(256, dtype=bool)
    valid[: lm.num_classes] = True
    if lm.ignore_id is not None:
        valid[lm.ignore_id] = True
    writer = CanonicalWriter(dst)

    def one(s: Sample) -> tuple[int, int, list[int]]:
        item = plan.load(s)
        if item.instances is not None:  # instance ids, checked by the format against its instance list
            writer.write(s.split, s.stem, item)
            return item.mask.size, item.hidden, [c["class"] for c in item.instances]
        bad = np.unique(item.mask[~valid[item.mask]])
        if bad.size:  # a converter bug, never the user's data: every format validates its input
            raise ConvertError(f"{s.image_uri}: converted mask holds ids {bad.tolist()} outside {lm.name!r}")
        writer.write(s.split, s.stem, item)
        return item.mask.size, item.ambiguous, []

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, plan.samples))
    writer.write_label_map(lm)
    report = ConvertReport(
        fmt,
        src,
        dst,
        lm.name,
        dict(Counter(s.split for s in plan.samples)),
        sum(r[0] for r in results),
        0 if FORMATS[fmt].instances else sum(r[1] for r in results),
        round(time.perf_counter() - start, 3),
        plan.notes,
    )
    if FORMATS[fmt].instances:
        per_class = Counter(c for r in results for c in r[2])
        report.instances = {lm.names[c]: per_class[c] for c in range(lm.num_classes)}
        report.hidden_instances = sum(r[1] for r in results)
    writer.write_report(report.to_dict())
    return report
