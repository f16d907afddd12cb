"""How an instance (Mask R-CNN) artifact is scored on a split of the canonical instance layout.

Each frame is resized to the artifact's input size (as labelling resizes it), predicted, and its
masks resized back to the frame's own size (bilinear on the mask probabilities, then > 0.5), so
the figures are at full resolution against the true instances. Scoring is the COCO protocol
through pycocotools (:mod:`segray.instance_metrics`): mask AP, AP50, AP75 overall and per class,
and per-frame counting (detections with score >= ``count_score`` against true instances).

Report: ``metrics.json`` (everything), ``metrics.parquet`` (one row per class) and
``counts.parquet`` (one row per frame and class: true and predicted count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segray.instance_metrics import COUNT_SCORE, InstanceScorer
from segray.tasks.scoring import Column, Comparison, EvalData, EvalOptions, EvalPredictor, EvalReport, EvalScorer, pct

if TYPE_CHECKING:
    from segray.labels import LabelMap
    from segray.models.artifact import ArtifactInfo


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

    def describe(self) -> str:
        s = self.scores
        return (f"{self.model_id} on {self.data}: {len(self.frames)} frames, mask AP {s['ap']:.4f} "
                f"AP50 {s['ap50']:.4f} AP75 {s['ap75']:.4f}, exact counts {s['exact_count_fraction']:.3f}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_id": self.model_id, "data": self.data, "task": "instance",
                **self.scores, "seconds": self.seconds, "model_frames_per_s": self.model_frames_per_s}  # fmt: skip


def eval_data(opts: EvalOptions, model_map: LabelMap) -> EvalData:
    """The frames of ``--data ROOT --split NAME`` (the canonical instance layout), first ``--limit``."""
    from segray.datasets.instances import instance_label_map, list_frames, read_frame

    d = opts.data
    if not (d.root and d.split) or d.images or d.manifest or d.include_prefixes or d.exclude_prefixes:
        raise ValueError("an instance model is evaluated on --data ROOT --split NAME (the canonical instance layout)")
    data_map = instance_label_map(d.root, opts.labels)
    if data_map.names != model_map.names:
        raise ValueError(
            f"{opts.model} predicts classes {model_map.names} but {d.root} is labelled with {data_map.names}"
        )
    frames = list_frames(d.root, d.split)[: d.limit]
    return EvalData(
        frames, lambda f: read_frame(f, data_map.num_classes), [f.name for f in frames], f"{d.root} split {d.split}"
    )


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


class InstanceEvalPredictor(EvalPredictor):
    """The artifact's Mask R-CNN on the chosen device, one frame at a time."""

    def __init__(self, opts: EvalOptions) -> None:
        import torch

        from segray.models.artifact import ModelArtifact
        from segray.models.precision import pick_device

        art = ModelArtifact.load(opts.model)
        if opts.torch_threads:
            torch.set_num_threads(opts.torch_threads)
        self.device = pick_device(opts.device)
        self.model = art.model.to(self.device).eval()
        self.size = (art.preprocessing.height, art.preprocessing.width)

    def predict(self, frames: list[np.ndarray], truths: list[Any]) -> list[Any]:
        return [predict_frame(self.model, rgb, self.size, self.device) for rgb in frames]


class InstanceEvalScorer(EvalScorer):
    """COCO mask AP and counts (:class:`segray.instance_metrics.InstanceScorer`)."""

    def __init__(self, opts: EvalOptions, info: ArtifactInfo, data: EvalData) -> None:
        self.opts, self.info, self.data = opts, info, data
        self.scorer = InstanceScorer(info.label_map.names, COUNT_SCORE)

    def add(self, index: int, frame: np.ndarray, truth: Any, prediction: Any) -> None:
        p = prediction
        self.scorer.add(truth.masks, truth.classes, truth.crowd, p["masks"], p["classes"], p["scores"])

    def result(self, seconds: float, model_seconds: float, details: dict[str, Any]) -> InstanceEvalResult:
        return InstanceEvalResult(
            self.opts.model, self.info.model_id, self.data.describe, self.scorer.result(), seconds, model_seconds,
            list(self.data.names), self.scorer.counts,
        )  # fmt: skip


def report(r: InstanceEvalResult, label_map: LabelMap) -> EvalReport:
    """``metrics.json``, ``metrics.parquet`` (a row per class), ``counts.parquet`` (a row per frame and class)."""
    import pyarrow as pa

    names = label_map.names
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
    counts = pa.table(
        {
            "frame": [f for f in r.frames for _ in names],
            "class": names * len(r.frames),
            "true_count": pa.array(true.ravel(), pa.int64()),
            "predicted_count": pa.array(pred.ravel(), pa.int64()),
        }
    )
    return EvalReport(r.to_dict(), {"metrics.parquet": per_class, "counts.parquet": counts})


def summary(r: InstanceEvalResult) -> list[str]:
    """The headline figures as a JSON line, then AP, AP50 and AP75 per class."""
    import json

    d = r.to_dict()
    keys = ("model_id", "data", "frames", "ap", "ap50", "ap75", "exact_count_fraction", "count_mae")
    return [json.dumps({k: d[k] for k in keys})] + [
        f"  {name:>16}: AP {100 * v['ap']:5.1f}  AP50 {100 * v['ap50']:5.1f}  AP75 {100 * v['ap75']:5.1f}"
        for name, v in d["per_class"].items()
    ]


def compare_row(r: InstanceEvalResult) -> dict[str, Any]:
    from segray.models.artifact import ModelArtifact

    art = ModelArtifact.load(r.model)
    sc = r.scores
    return {
        "model": r.model,
        "model_id": r.model_id,
        "input": f"{art.preprocessing.height}x{art.preprocessing.width}",
        "backbone": art.model.config["encoder_name"],  # type: ignore[index]
        "ap": sc["ap"],
        "ap50": sc["ap50"],
        "ap75": sc["ap75"],
        "count_mae": sc["count_mae"],
        "exact_count_fraction": sc["exact_count_fraction"],
        "count_score": sc.get("count_score"),
        "params": sum(p.numel() for p in art.model.parameters()),
        "frames_per_s": r.model_frames_per_s,
        "ap_per_class": {name: v["ap"] for name, v in sc["per_class"].items()},
        "frames": sc.get("frames", len(r.frames)),
    }


def comparison(first: InstanceEvalResult, first_row: dict[str, Any]) -> Comparison:
    """Mask AP (COCO protocol), counting error, size and speed per model; AP per class."""
    intro = (
        f"Evaluated on `{first.data}` ({first_row['frames']} frames). Mask AP in % (COCO protocol: AP over IoU "
        "0.50-0.95, AP50, AP75); count error: mean absolute difference between true and predicted instances per "
        f"frame, predictions scoring at least {first_row['count_score']}."
    )
    columns = [
        Column("model", "---", lambda r: f"`{r['model_id']}`"),
        Column("backbone", "---", lambda r: str(r["backbone"])),
        Column("input", "---", lambda r: r["input"]),
        Column("mask AP", "---:", lambda r: f"**{pct(r['ap'])}**"),
        Column("AP50", "---:", lambda r: pct(r["ap50"])),
        Column("AP75", "---:", lambda r: pct(r["ap75"])),
        Column("count MAE", "---:", lambda r: f"{r['count_mae']:.2f}"),
        Column("exact counts", "---:", lambda r: pct(r["exact_count_fraction"])),
        Column("params (M)", "---:", lambda r: f"{r['params'] / 1e6:.2f}"),
        Column("frames/s", "---:", lambda r: f"{r['frames_per_s']:.2f}"),
    ]
    return Comparison(intro, columns, "ap_per_class", "Mask AP per class (%):")
