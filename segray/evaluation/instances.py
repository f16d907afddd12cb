"""Score an instance (Mask R-CNN) artifact on a split of the canonical instance layout.

Each frame is resized to the artifact's input size (as labelling resizes it), predicted, and its
masks resized back to the frame's own size (bilinear on the mask probabilities, then > 0.5), so
the figures are at full resolution against the true instances. Scoring is the COCO protocol
through pycocotools (:mod:`segray.instance_metrics`): mask AP, AP50, AP75 overall and per class,
and per-frame counting (detections with score >= ``count_score`` against true instances).

Outputs (``--output``): ``metrics.json`` (everything), ``metrics.parquet`` (one row per class) and
``counts.parquet`` (one row per frame and class: true and predicted count).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.datasets.instances import instance_label_map, list_frames, read_frame
from segray.instance_metrics import COUNT_SCORE, InstanceScorer

log = logging.getLogger("segray.evaluate")


@dataclass
class InstanceEvalOptions:
    model: str
    root: str
    split: str = "val"
    output: str | None = None
    labels: str | None = None
    limit: int | None = None
    count_score: float = COUNT_SCORE
    device: str = "auto"
    torch_threads: int = 0


@dataclass
class InstanceEvalResult:
    model: str
    model_id: str
    data: str
    scores: dict[str, Any]
    seconds: float
    #: seconds in the model call alone (resize, forward, masks back to the frame's size)
    model_seconds: float = 0.0
    frames: list[str] = field(default_factory=list)
    counts: list[tuple[list[int], list[int]]] = field(default_factory=list)

    @property
    def model_frames_per_s(self) -> float:
        return len(self.frames) / self.model_seconds if self.model_seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_id": self.model_id, "data": self.data, "task": "instance",
                **self.scores, "seconds": self.seconds, "model_frames_per_s": self.model_frames_per_s}  # fmt: skip


def from_eval_options(opts: Any) -> InstanceEvalOptions:
    """The instance options of an ``evaluate.EvalOptions`` (its data must be a root and a split)."""
    d = opts.data
    if not (d.root and d.split) or d.images or d.manifest or d.include_prefixes or d.exclude_prefixes:
        raise ValueError("an instance model is evaluated on --data ROOT --split NAME (the canonical instance layout)")
    return InstanceEvalOptions(model=opts.model, root=d.root, split=d.split, output=opts.output, labels=opts.labels,
                               limit=d.limit, device=opts.device, torch_threads=opts.torch_threads)  # fmt: skip


def predict_frame(model: Any, rgb: np.ndarray, size: tuple[int, int], device: Any) -> dict[str, np.ndarray]:
    """One frame -> ``masks`` (N, H, W) bool at the frame's size, ``classes`` (label-map indices), ``scores``."""
    import cv2
    import torch
    import torch.nn.functional as F

    from segray.models.maskrcnn import to_class_index

    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA) if (h, w) != size else rgb
    x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1).float().div(255).to(device)
    with torch.inference_mode():
        out = model([x])[0]
    probs = out["masks"].float()
    if probs.shape[-2:] != (h, w) and len(probs):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return {
        "masks": (probs[:, 0] > 0.5).cpu().numpy() if len(probs) else np.zeros((0, h, w), bool),
        "classes": to_class_index(out["labels"]).cpu().numpy(),
        "scores": out["scores"].float().cpu().numpy(),
    }


def evaluate_instances(opts: InstanceEvalOptions) -> InstanceEvalResult:
    """Predict every frame of the split, score once with COCOeval, write outputs if ``opts.output``."""
    import torch

    from segray.models.artifact import ModelArtifact
    from segray.models.precision import pick_device

    art = ModelArtifact.load(opts.model)
    if art.task != "instance":
        raise ValueError(f"{opts.model}: a {art.task} model; instance evaluation needs an instance artifact")
    data_map = instance_label_map(opts.root, opts.labels)
    if data_map.names != art.label_map.names:
        raise ValueError(
            f"{opts.model} predicts classes {art.label_map.names} but {opts.root} is labelled with {data_map.names}"
        )
    frames = list_frames(opts.root, opts.split)[: opts.limit]
    if opts.output:
        storage.check_writable(opts.output)
    if opts.torch_threads:
        torch.set_num_threads(opts.torch_threads)
    device = pick_device(opts.device)
    model = art.model.to(device).eval()
    size = (art.preprocessing.height, art.preprocessing.width)
    scorer = InstanceScorer(art.label_map.names, opts.count_score)
    t0 = time.monotonic()
    model_s = 0.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for rgb, inst in pool.map(lambda f: read_frame(f, data_map.num_classes), frames):
            t = time.monotonic()
            p = predict_frame(model, rgb, size, device)
            model_s += time.monotonic() - t
            scorer.add(inst.masks, inst.classes, inst.crowd, p["masks"], p["classes"], p["scores"])
    scores = scorer.result()
    data = f"{opts.root} split {opts.split}"
    result = InstanceEvalResult(
        opts.model, art.model_id, data, scores, time.monotonic() - t0, model_s, [f.name for f in frames], scorer.counts
    )
    log.info("%s on %s: %d frames, mask AP %.4f AP50 %.4f AP75 %.4f, exact counts %.3f", art.model_id, data,
             len(frames), scores["ap"], scores["ap50"], scores["ap75"], scores["exact_count_fraction"])  # fmt: skip
    if opts.output:
        write_outputs(opts.output, result, art.label_map.names)
    return result


def write_outputs(output: str, r: InstanceEvalResult, names: list[str]) -> None:
    """``metrics.json``, ``metrics.parquet`` (a row per class), ``counts.parquet`` (a row per frame and class)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(table: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    storage.write_bytes(storage.join(output, "metrics.json"), json.dumps(r.to_dict(), indent=2).encode())
    s = r.scores
    true = np.array([t for t, _ in r.counts], np.int64).reshape(-1, len(names))
    pred = np.array([p for _, p in r.counts], np.int64).reshape(-1, len(names))
    per_class = pa.table(
        {
            "model_id": [r.model_id] * len(names),
            "class_id": pa.array(range(len(names)), pa.int32()),
            "class": names,
            "ap": [s["per_class"][n]["ap"] for n in names],
            "ap50": [s["per_class"][n]["ap50"] for n in names],
            "ap75": [s["per_class"][n]["ap75"] for n in names],
            "true_instances": pa.array(true.sum(axis=0), pa.int64()),
            "predicted_instances": pa.array(pred.sum(axis=0), pa.int64()),
            "count_mae": [s["count_mae_per_class"][n] for n in names],
        }
    )
    storage.write_bytes(storage.join(output, "metrics.parquet"), parquet(per_class))
    frames = [f for f in r.frames for _ in names]
    counts = pa.table(
        {
            "frame": frames,
            "class": names * len(r.frames),
            "true_count": pa.array(true.ravel(), pa.int64()),
            "predicted_count": pa.array(pred.ravel(), pa.int64()),
        }
    )
    storage.write_bytes(storage.join(output, "counts.parquet"), parquet(counts))
