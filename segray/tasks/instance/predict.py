"""Stage 2 for instance models (Mask R-CNN): objects per frame, painted into an instance-id mask.

The read stage is the semantic one: each frame arrives resized to the model input. The model's
detections are kept when their score is at least ``min_score``; each kept mask (a probability map
at the model input) is resized to the frame's own size and thresholded at ``MASK_THRESHOLD``; boxes
are scaled the same way.

Painting: instances are painted from the lowest score to the highest, so where masks overlap the
pixel belongs to the higher-scoring instance. Ids then number the instances that kept at least one
pixel, 1 for the highest score, with no gaps; an instance left with no pixel (entirely under
higher-scoring ones, or below the mask threshold everywhere) is dropped. So every id in the mask
has exactly one row in the instances table, and each row's ``area_px`` is its id's pixel count.

Frames above ``--tile-above`` times the reference size are not labelled in windows (objects would
be cut at window edges and counted twice): they are recorded in ``errors/`` with a message that
says how to label them resized instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segray.models.artifact import ModelArtifact
from segray.models.maskrcnn import to_class_index
from segray.models.precision import amp_dtype, pick_device
from segray.tasks.batch import predicted_batch

log = logging.getLogger(__name__)

#: A detection's mask covers the pixels where its probability is above this (torchvision's usual 0.5).
MASK_THRESHOLD = 0.5
#: Instances kept per frame by default: detections scoring below are dropped.
DEFAULT_MIN_SCORE = 0.5
#: Instance ids are written as 16-bit PNGs: up to this many instances per frame.
MAX_INSTANCES = 65535


def resized_mask(prob: torch.Tensor, height: int, width: int) -> tuple[tuple[int, int], torch.Tensor] | None:
    """A (h, w) probability map resized (bilinear, as ``F.interpolate`` with ``align_corners=False``)
    to (height, width) and thresholded, computed only around where it is above the threshold: the
    (y0, x0) of that region in the frame and its boolean mask; None when no pixel is above.

    A detection covers a small part of a frame, so this costs its box, not the frame."""
    h, w = prob.shape
    on = prob > MASK_THRESHOLD
    rows, cols = torch.nonzero(on.any(1)).flatten(), torch.nonzero(on.any(0)).flatten()
    if not len(rows):
        return None
    # A frame pixel samples source coordinate (y + 0.5) * h / height - 0.5, between two source rows:
    # it can be above the threshold only within one source row of the rows that are.
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    y0 = max(0, math.floor((r0 - 0.5) * height / h - 0.5))
    y1 = min(height, math.ceil((r1 + 1.5) * height / h - 0.5) + 1)
    x0 = max(0, math.floor((c0 - 0.5) * width / w - 0.5))
    x1 = min(width, math.ceil((c1 + 1.5) * width / w - 0.5) + 1)
    dev = prob.device
    ys = (torch.arange(y0, y1, device=dev, dtype=torch.float32) * 2 + 1) / height - 1
    xs = (torch.arange(x0, x1, device=dev, dtype=torch.float32) * 2 + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    part = F.grid_sample(prob[None, None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (y0, x0), part[0, 0] > MASK_THRESHOLD


def paint_instances(
    masks: torch.Tensor, scores: torch.Tensor, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``masks`` (K, 1, h, w) probabilities of detections sorted by decreasing score, at the model input
    -> (height, width) uint16 ids (0 = none), the indices (into the K) of the instances kept, in id
    order, and their pixel counts.

    One instance is resized at a time, around its own pixels (:func:`resized_mask`).
    """
    k = masks.shape[0]
    if k > MAX_INSTANCES:
        raise ValueError(f"{k} instances in one frame: more than a 16-bit id mask holds ({MAX_INSTANCES})")
    if k and bool((scores[:-1] < scores[1:]).any()):
        raise ValueError("detections must be sorted by decreasing score")
    ranks = torch.zeros((height, width), dtype=torch.int32, device=masks.device)
    for j in range(k - 1, -1, -1):  # lowest score first: higher scores paint over it
        piece = resized_mask(masks[j, 0], height, width)
        if piece is not None:
            (y0, x0), on = piece
            ranks[y0 : y0 + on.shape[0], x0 : x0 + on.shape[1]][on] = j + 1
    pixels = torch.bincount(ranks.flatten(), minlength=k + 1)[1:].cpu().numpy()
    kept = np.flatnonzero(pixels > 0)
    lut = torch.zeros(k + 1, dtype=torch.int32, device=masks.device)
    lut[torch.from_numpy(kept + 1).to(masks.device)] = torch.arange(1, len(kept) + 1, dtype=torch.int32).to(
        masks.device
    )
    ids = lut[ranks].to(torch.int32).cpu().numpy().astype(np.uint16)
    return ids, kept, pixels[kept].astype(np.int64)


class InstancePredictor:
    """Ray Data callable class for instance artifacts: ``__init__`` loads the model once,
    ``__call__`` labels a batch (the columns :class:`segray.tasks.semantic.predict.Predictor` gives, plus
    ``instances``: one JSON list per frame, and ``instance_counts``)."""

    def __init__(
        self,
        model_uri: str,
        min_score: float = DEFAULT_MIN_SCORE,
        torch_threads: int = 0,
        device: str = "auto",
        amp: bool = True,
        tile_above: float | None = None,
    ) -> None:
        self.torch_threads = torch_threads
        self._apply_threads()
        self.device = pick_device(device)
        art = ModelArtifact.load(model_uri, map_location=self.device)
        if art.task != "instance":
            raise ValueError(f"{model_uri}: a {art.task} model, not an instance model")
        self.model = art.model.eval()
        self.num_classes = art.label_map.num_classes
        self.input_size = (art.preprocessing.height, art.preprocessing.width)
        self.min_score = min_score
        self.tile_above = tile_above
        self.amp_dtype = amp_dtype(self.device, amp)
        log.info(
            "instance predictor pid=%s model=%s device=%s threads=%s amp=%s min score=%s",
            os.getpid(),
            art.model_id,
            self.device,
            torch.get_num_threads(),
            self.amp_dtype,
            min_score,
        )

    def _apply_threads(self) -> None:
        # As in Predictor: OpenMP's thread count is per calling thread.
        if self.torch_threads > 0 and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """(N, H, W, 3) uint8 at the model input -> torchvision's detections, those below
        ``min_score`` dropped, sorted by decreasing score."""
        self._apply_threads()
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255
        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                out = self.model(list(x))
        else:
            out = self.model(list(x))
        kept = []
        for d in out:
            order = torch.argsort(d["scores"].float(), descending=True, stable=True)
            order = order[d["scores"][order].float() >= self.min_score]
            kept.append({k: v[order] for k, v in d.items()})
        return kept

    def frame_instances(self, det: dict[str, torch.Tensor], height: int, width: int) -> tuple[np.ndarray, list]:
        """One frame's detections -> its id mask and instance records (id order)."""
        ids, kept, pixels = paint_instances(det["masks"], det["scores"].float(), height, width)
        h_in, w_in = self.input_size
        scale = torch.tensor([width / w_in, height / h_in, width / w_in, height / h_in], device=det["boxes"].device)
        boxes = (det["boxes"].float() * scale).cpu().numpy()
        classes = to_class_index(det["labels"]).cpu().numpy()
        scores = det["scores"].float().cpu().numpy()
        records = [
            [int(classes[j]), float(scores[j]), *(float(v) for v in boxes[j]), int(px)]
            for j, px in zip(kept, pixels, strict=True)
        ]
        return ids, records

    @torch.inference_mode()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["uri"])
        errors = np.array([str(e) for e in batch["error"]], dtype=object)
        stages = np.array([str(s) for s in batch["error_stage"]], dtype=object)
        encoded = batch["encoded"] if "encoded" in batch else np.full(n, b"", dtype=object)
        for i in range(n):
            if not errors[i] and len(encoded[i]) > 0:
                errors[i], stages[i] = (
                    f"{int(batch['width'][i])}x{int(batch['height'][i])} is above --tile-above "
                    f"({self.tile_above:g}) times the reference size, and instance models do not label in windows "
                    "(objects would be cut at window edges): raise --tile-above to label it resized to the model "
                    "input, or cut it into frames first",
                    "predict",
                )
        masks = np.empty(n, dtype=object)
        instances = np.full(n, "[]", dtype=object)
        class_pixels = np.zeros((n, self.num_classes), dtype=np.int64)
        counts = np.zeros((n, self.num_classes), dtype=np.int64)
        confidence = np.full(n, np.nan, dtype=np.float64)
        idx = np.flatnonzero(errors == "")
        if len(idx):
            for row, det in zip(idx, self.detect(batch["image"][idx]), strict=True):
                ids, records = self.frame_instances(det, int(batch["height"][row]), int(batch["width"][row]))
                masks[row] = ids
                instances[row] = json.dumps(records)
                for cls, _score, *_box, px in records:
                    class_pixels[row, cls] += px
                    counts[row, cls] += 1
                if records:
                    confidence[row] = float(np.mean([r[1] for r in records]))
        return predicted_batch(
            batch,
            errors,
            stages,
            masks,
            np.uint16,
            class_pixels=class_pixels,
            instance_counts=counts,
            instances=instances,
            mean_confidence=confidence,
            windowed=np.zeros(n, dtype=bool),
        )


#: The fields of each record in the ``instances`` column (JSON lists, in this order), id order.
RECORD_FIELDS = ("class_id", "score", "x0", "y0", "x1", "y1", "area_px")
