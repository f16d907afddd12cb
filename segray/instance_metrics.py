"""Instance metrics: mask AP with the COCO protocol (pycocotools ``COCOeval``, ``iouType="segm"``)
plus counting error per frame.

One :class:`InstanceScorer` takes frames one by one (ground-truth masks and classes, predicted
masks, classes and scores) and keeps them as COCO RLE, so scorers filled on several workers merge
by concatenation. ``result()`` runs ``COCOeval`` once over the whole split:

- ``ap`` (mean over IoU 0.50:0.95), ``ap50``, ``ap75``: over all classes and per class (the
  protocol's mean over classes; a class with no ground truth in the split is NaN and left out);
- counting: on each frame, the predicted instances per class (score >= ``count_score``) against
  the true ones (crowd regions not counted); ``exact_count_fraction`` is the share of frames where
  every class's count is exact, ``count_mae`` the mean absolute error per frame and class.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The score above which a detection counts as an instance (the labelling job's default too).
COUNT_SCORE = 0.5


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # plain data: travels between workers and into JSON
    return rle


@dataclass
class InstanceScorer:
    names: list[str]
    count_score: float = COUNT_SCORE
    images: list[dict[str, Any]] = field(default_factory=list)
    gt: list[dict[str, Any]] = field(default_factory=list)
    dt: list[dict[str, Any]] = field(default_factory=list)
    #: per frame: (true counts, predicted counts), each a list over classes
    counts: list[tuple[list[int], list[int]]] = field(default_factory=list)

    def add(
        self,
        gt_masks: np.ndarray,
        gt_classes: np.ndarray,
        gt_crowd: np.ndarray | None,
        pred_masks: np.ndarray,
        pred_classes: np.ndarray,
        pred_scores: np.ndarray,
    ) -> None:
        """One frame: (N, H, W) bool masks with class indices (0-based), and the predictions'."""
        from pycocotools import mask as mask_utils

        c = len(self.names)
        image_id = len(self.images) + 1
        h, w = gt_masks.shape[1:] if gt_masks.ndim == 3 else pred_masks.shape[1:]
        self.images.append({"id": image_id, "height": int(h), "width": int(w)})
        crowd = np.zeros(len(gt_classes), bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
        for m, k, cr in zip(gt_masks, gt_classes, crowd, strict=True):
            rle = _rle(m)
            self.gt.append(
                {
                    "id": len(self.gt) + 1,
                    "image_id": image_id,
                    "category_id": int(k) + 1,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": mask_utils.toBbox({**rle, "counts": rle["counts"].encode()}).tolist(),
                    "iscrowd": int(cr),
                }
            )
        for m, k, s in zip(pred_masks, pred_classes, pred_scores, strict=True):
            self.dt.append(
                {"image_id": image_id, "category_id": int(k) + 1, "segmentation": _rle(m), "score": float(s)}
            )
        true = np.bincount(np.asarray(gt_classes, np.int64)[~crowd], minlength=c)[:c]
        keep = np.asarray(pred_scores) >= self.count_score
        pred = np.bincount(np.asarray(pred_classes, np.int64)[keep], minlength=c)[:c]
        self.counts.append((true.tolist(), pred.tolist()))

    def state(self) -> dict[str, Any]:
        return {"images": self.images, "gt": self.gt, "dt": self.dt, "counts": self.counts}

    @classmethod
    def merged(cls, names: list[str], states: list[dict[str, Any]], count_score: float = COUNT_SCORE) -> InstanceScorer:
        """One scorer from several (e.g. one per worker), image ids renumbered."""
        out = cls(names, count_score)
        for st in states:
            offset = len(out.images)
            out.images += [{**im, "id": im["id"] + offset} for im in st["images"]]
            out.gt += [
                {**a, "id": len(out.gt) + i + 1, "image_id": a["image_id"] + offset} for i, a in enumerate(st["gt"])
            ]
            out.dt += [{**d, "image_id": d["image_id"] + offset} for d in st["dt"]]
            out.counts += [tuple(x) for x in st["counts"]]
        return out

    def result(self) -> dict[str, Any]:
        """AP, AP50, AP75 overall and per class; counting figures. Needs at least one frame."""
        if not self.images:
            raise ValueError("no frames scored")
        per_class = {n: {"ap": math.nan, "ap50": math.nan, "ap75": math.nan} for n in self.names}
        overall = {"ap": math.nan, "ap50": math.nan, "ap75": math.nan}
        with_gt = sorted({a["category_id"] - 1 for a in self.gt if not a["iscrowd"]})
        if with_gt and not self.dt:  # nothing detected: COCOeval cannot load zero results; AP is 0
            overall = dict.fromkeys(overall, 0.0)
            for k in with_gt:
                per_class[self.names[k]] = dict.fromkeys(overall, 0.0)
        elif with_gt:
            precision = self._coco_precision()  # [T=10 IoUs, R=101 recalls, K classes, A areas, M max dets]
            for k in with_gt:
                p = precision[:, :, k, 0, -1]
                per_class[self.names[k]] = {"ap": _mean(p), "ap50": _mean(p[0]), "ap75": _mean(p[5])}
            for key in overall:
                overall[key] = float(np.mean([per_class[self.names[k]][key] for k in with_gt]))
        true = np.array([t for t, _ in self.counts], np.int64)
        pred = np.array([p for _, p in self.counts], np.int64)
        err = np.abs(pred - true)
        return {
            **overall,
            "per_class": per_class,
            "frames": len(self.images),
            "true_instances": int(true.sum()),
            "predicted_instances": int(pred.sum()),
            "count_score": self.count_score,
            "exact_count_fraction": float((err.sum(axis=1) == 0).mean()),
            "count_mae": float(err.mean()),
            "count_mae_per_class": {n: float(err[:, k].mean()) for k, n in enumerate(self.names)},
        }

    def _coco_precision(self) -> np.ndarray:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = COCO()
        gt.dataset = {
            "images": self.images,
            "annotations": self.gt,
            "categories": [{"id": k + 1, "name": n} for k, n in enumerate(self.names)],
        }
        with quiet_pycocotools():
            gt.createIndex()
            dt = gt.loadRes([{**d, "segmentation": dict(d["segmentation"])} for d in self.dt])
            ev = COCOeval(gt, dt, iouType="segm")
            ev.evaluate()
            ev.accumulate()
        return ev.eval["precision"]


@contextlib.contextmanager
def quiet_pycocotools() -> Iterator[None]:
    """pycocotools prints its progress; a module-level ``print`` silences it (Ray's workers patch the
    builtin ``print``, so redirecting stdout alone is not enough)."""
    import pycocotools.coco
    import pycocotools.cocoeval

    modules = (pycocotools.coco, pycocotools.cocoeval)
    for m in modules:
        m.print = lambda *a, **k: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for m in modules:
            del m.print


def _mean(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else math.nan
