"""How a semantic artifact is scored on a labelled split, exactly as the labelling job would predict.

Frames go through the labelling job's :class:`~segray.tasks.semantic.predict.Predictor` (the artifact's
resize policy, normalisation, device choice and bilinear logit resizing back to the frame's size),
so the figures describe the masks ``segray label`` writes. One confusion matrix over the whole
split at each mask's own resolution; ignored pixels never count (:mod:`segray.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segray.metrics import confusion_matrix, scores
from segray.tasks.scoring import (
    Column,
    Comparison,
    EvalData,
    EvalOptions,
    EvalPredictor,
    EvalReport,
    EvalScorer,
    model_cost,
    pct,
)

if TYPE_CHECKING:
    from segray.labels import LabelMap
    from segray.models.artifact import ArtifactInfo


@dataclass
class SemanticEvalResult:
    model: str
    model_id: str
    data: str
    frames: int
    scores: dict[str, Any]
    confusion: np.ndarray
    seconds: float
    model_seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds else float("nan")

    @property
    def model_frames_per_s(self) -> float:
        """Frames/s of the model call alone (normalise, forward, resize logits, argmax)."""
        return self.frames / self.model_seconds if self.model_seconds else float("nan")

    def describe(self) -> str:
        return (f"{self.model_id} on {self.data}: {self.frames} frames, mIoU {self.scores['miou']:.4f} "
                f"({self.seconds:.1f} s)")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        s = self.scores
        return {
            "model": self.model,
            "model_id": self.model_id,
            "data": self.data,
            "frames": self.frames,
            "pixels": s["pixels"],
            "miou": s["miou"],
            "mean_dice": s["mean_dice"],
            "pixel_accuracy": s["pixel_accuracy"],
            "per_class": {
                n: {"iou": s["iou"][n], "dice": s["dice"][n], "gt_pixels": s["gt_pixels"][n]} for n in s["iou"]
            },
            "confusion": self.confusion.tolist(),
            "seconds": self.seconds,
            "frames_per_s": self.frames_per_s,
            "model_frames_per_s": self.model_frames_per_s,
            **self.info,
        }


def check_label_maps(model_map: LabelMap, data_map: LabelMap, model: str, data: str) -> None:
    if model_map.names != data_map.names:
        raise ValueError(
            f"{model} predicts classes {model_map.names} but {data} is labelled with {data_map.names}; "
            "evaluate on data with the model's label map"
        )


def eval_data(opts: EvalOptions, model_map: LabelMap) -> EvalData:
    """The split's image/mask pairs (``--data``/``--split``, a manifest, or ``--images``/``--masks``)."""
    from segray.datasets.pairs import dataset_label_map, list_pairs, read_pair

    pairs = list_pairs(opts.data)
    data_map = dataset_label_map(opts.data.root, opts.labels) if (opts.labels or opts.data.root) else model_map
    check_label_maps(model_map, data_map, opts.model, opts.data.describe())
    return EvalData(pairs, lambda p: read_pair(p, data_map), [p.name for p in pairs], opts.data.describe())


class SemanticEvalPredictor(EvalPredictor):
    """The labelling job's predictor; logits resized to each mask's size, then argmax."""

    def __init__(self, opts: EvalOptions, info: ArtifactInfo) -> None:
        from segray.tasks.semantic.predict import Predictor

        self.predictor = Predictor(opts.model, torch_threads=opts.torch_threads, device=opts.device)
        self.pre = info.preprocessing

    def predict(self, frames: list[np.ndarray], truths: list[Any]) -> list[Any]:
        from segray.tasks.semantic.predict import upsample_argmax

        logits = self.predictor.predict_logits(np.stack([self.pre.resize(im) for im in frames]))
        return [upsample_argmax(logits[k : k + 1], *m.shape)[0][0] for k, m in enumerate(truths)]

    def details(self) -> dict[str, Any]:
        return {"input_size": [self.pre.height, self.pre.width], "device": str(self.predictor.device)}


class SemanticScorer(EvalScorer):
    """One confusion matrix over the split."""

    def __init__(self, opts: EvalOptions, info: ArtifactInfo, data: EvalData) -> None:
        self.opts, self.info, self.data = opts, info, data
        c = info.label_map.num_classes
        self.cm = np.zeros((c, c), dtype=np.int64)

    def add(self, index: int, frame: np.ndarray, truth: Any, prediction: Any) -> None:
        self.cm += confusion_matrix(prediction, truth, self.info.label_map.num_classes)

    def result(self, seconds: float, model_seconds: float, details: dict[str, Any]) -> SemanticEvalResult:
        return SemanticEvalResult(
            self.opts.model, self.info.model_id, self.data.describe, len(self.data.items),
            scores(self.cm, self.info.label_map.names), self.cm, seconds, model_seconds, details,
        )  # fmt: skip


def report(r: SemanticEvalResult, label_map: LabelMap) -> EvalReport:
    """``metrics.json``, ``metrics.parquet`` (one row per class) and the confusion picture."""
    import pyarrow as pa

    s, cm = r.scores, r.confusion
    names = label_map.names
    table = pa.table(
        {
            "model_id": [r.model_id] * len(names),
            "class_id": pa.array(range(len(names)), pa.int32()),
            "class": names,
            "iou": [s["iou"][n] for n in names],
            "dice": [s["dice"][n] for n in names],
            "gt_pixels": pa.array(cm.sum(axis=1), pa.int64()),
            "predicted_pixels": pa.array(cm.sum(axis=0), pa.int64()),
            "true_positives": pa.array(np.diag(cm), pa.int64()),
            "miou": [s["miou"]] * len(names),
            "pixel_accuracy": [s["pixel_accuracy"]] * len(names),
        }
    ).replace_schema_metadata({"segray.label_map": label_map.to_json(), "segray.data": r.data})
    title = f"{r.model_id} on {r.data}: mIoU {100 * s['miou']:.1f}"
    return EvalReport(r.to_dict(), {"metrics.parquet": table}, (cm, names, title))


def summary(r: SemanticEvalResult) -> list[str]:
    """The headline figures as a JSON line, then IoU per class."""
    import json

    d = r.to_dict()
    lines = [json.dumps({k: d[k] for k in ("model_id", "data", "frames", "miou", "pixel_accuracy", "mean_dice")})]
    return lines + [f"  {name:>16}: IoU {100 * v['iou']:5.1f}" for name, v in d["per_class"].items()]


def compare_row(r: SemanticEvalResult) -> dict[str, Any]:
    c = model_cost(r.model)
    return {
        "model": r.model,
        "model_id": r.model_id,
        "input": f"{r.info['input_size'][0]}x{r.info['input_size'][1]}",
        "miou": r.scores["miou"],
        "pixel_accuracy": r.scores["pixel_accuracy"],
        "params": c.params,
        "gflops_per_frame": c.gflops,
        "frames_per_s": r.model_frames_per_s,
        "iou": r.scores["iou"],
    }


def comparison(first: SemanticEvalResult) -> Comparison:
    """mIoU, pixel accuracy, size, cost and speed per model; IoU per class."""
    intro = (f"Evaluated on `{first.data}` ({first.frames} frames, {first.info.get('device', '?')}). "
             "mIoU and IoU in %, one confusion matrix per model.")  # fmt: skip
    columns = [
        Column("model", "---", lambda r: f"`{r['model_id']}`"),
        Column("input", "---", lambda r: r["input"]),
        Column("mIoU", "---:", lambda r: f"**{pct(r['miou'])}**"),
        Column("pixel acc.", "---:", lambda r: pct(r["pixel_accuracy"])),
        Column("params (M)", "---:", lambda r: f"{r['params'] / 1e6:.2f}"),
        Column("GFLOPs/frame", "---:", lambda r: f"{r['gflops_per_frame']:.2f}"),
        Column("frames/s", "---:", lambda r: f"{r['frames_per_s']:.2f}"),
    ]
    return Comparison(intro, columns, "iou", "Per-class IoU (%):")
