"""Score one artifact on a labelled split, exactly as the labelling job would predict.

Frames go through the labelling job's :class:`~segray.tasks.semantic.predict.Predictor` (the artifact's
resize policy, normalisation, device choice and bilinear logit resizing back to the frame's size),
so the figures describe the masks ``segray label`` writes. One confusion matrix over the whole
split at each mask's own resolution; ignored pixels never count. Runs in one process: a split is
hundreds of frames, and reading overlaps inference through a small thread pool.
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
from segray.datasets.pairs import Pair, PairSource, dataset_label_map, list_pairs
from segray.labels import LabelMap
from segray.metrics import confusion_matrix, scores

log = logging.getLogger("segray.evaluate")


@dataclass
class EvalOptions:
    model: str
    data: PairSource
    output: str | None = None
    labels: str | None = None
    batch_size: int = 8
    overlays: int = 6
    device: str = "auto"
    torch_threads: int = 0


@dataclass
class EvalResult:
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


def evaluate(opts: EvalOptions) -> EvalResult:
    """Predict every pair, accumulate one confusion matrix, write outputs if ``opts.output``."""
    from segray.datasets.pairs import read_pair
    from segray.models.artifact import read_info
    from segray.tasks.semantic.predict import Predictor, upsample_argmax

    info = read_info(opts.model)
    pairs = list_pairs(opts.data)
    data_map = dataset_label_map(opts.data.root, opts.labels) if (opts.labels or opts.data.root) else info.label_map
    check_label_maps(info.label_map, data_map, opts.model, opts.data.describe())
    if opts.output:
        storage.check_writable(opts.output)
    predictor = Predictor(opts.model, torch_threads=opts.torch_threads, device=opts.device)
    pre = info.preprocessing
    lm = info.label_map
    c = lm.num_classes
    cm = np.zeros((c, c), dtype=np.int64)
    show = set(np.linspace(0, len(pairs) - 1, min(opts.overlays, len(pairs))).round().astype(int).tolist())
    overlays: list[tuple[Pair, bytes]] = []
    t0 = time.monotonic()
    model_s = 0.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        loaded = pool.map(lambda p: read_pair(p, data_map), pairs)
        batch: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, (image, mask) in enumerate(loaded):
            batch.append((i, image, mask))
            if len(batch) == opts.batch_size or i == len(pairs) - 1:
                t = time.monotonic()
                logits = predictor.predict_logits(np.stack([pre.resize(im) for _, im, _ in batch]))
                preds = [upsample_argmax(logits[k : k + 1], *m.shape)[0][0] for k, (_, _, m) in enumerate(batch)]
                model_s += time.monotonic() - t
                for (j, im, m), pr in zip(batch, preds, strict=True):
                    cm += confusion_matrix(pr, m, c)
                    if j in show:
                        from segray.evaluation.figures import overlay_png

                        overlays.append((pairs[j], overlay_png(im, m, pr, lm)))
                batch = []
    seconds = time.monotonic() - t0
    result = EvalResult(
        opts.model,
        info.model_id,
        opts.data.describe(),
        len(pairs),
        scores(cm, lm.names),
        cm,
        seconds,
        model_s,
        {"input_size": [pre.height, pre.width], "device": str(predictor.device)},
    )
    log.info(
        "%s on %s: %d frames, mIoU %.4f (%.1f s)",
        info.model_id,
        result.data,
        len(pairs),
        result.scores["miou"],
        seconds,
    )
    if opts.output:
        write_outputs(opts.output, result, lm, overlays)
    return result


def write_outputs(output: str, r: EvalResult, label_map: LabelMap, overlays: list[tuple[Pair, bytes]]) -> None:
    """``metrics.json``, ``metrics.parquet`` (one row per class), ``confusion.png``, ``overlays/*.png``."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from segray.evaluation.figures import confusion_png

    storage.write_bytes(storage.join(output, "metrics.json"), json.dumps(r.to_dict(), indent=2).encode())
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
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(output, "metrics.parquet"), buf.getvalue())
    title = f"{r.model_id} on {r.data}: mIoU {100 * s['miou']:.1f}"
    storage.write_bytes(storage.join(output, "confusion.png"), confusion_png(cm, names, title))
    for pair, png in overlays:
        stem = pair.name.rsplit(".", 1)[0]
        storage.write_bytes(storage.join(output, "overlays", f"{stem}.png"), png)
