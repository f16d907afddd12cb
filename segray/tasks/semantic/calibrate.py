"""``export.fit_offsets``: per-class logit offsets fitted on the training frames at export.

The logit adjustment (``logit_adjust.py``) moves every class by the same multiple of its log class
weight; the classes do not all need that (on the CamVid UNet the fit raises pole and lowers
pedestrian). So, at export, the best checkpoint predicts the training frames as labelling
would (resized to the model input, logits resized back to the mask), :func:`fit_offsets` searches
per-class offsets that raise their mIoU, and the export folds them into the head's bias like the
adjustment: the artifact format and the labelling cost stay the same. Only training frames choose
the offsets; the val frames are then scored once with them, and those are the artifact's figures.
Cost: one inference pass over the training frames (at most ``FIT_FRAMES``) in the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.metrics import scores
from segray.models.preprocessing import normalise, pixel_stats
from segray.tasks.semantic.logit_adjust import fit_offsets, fold_offsets
from segray.tasks.semantic.validate import validate

log = logging.getLogger("segray.train")

#: At most this many training frames (evenly spaced) are predicted for the fit.
FIT_FRAMES = 1000
#: Labelled pixels drawn (seeded) from the frames in all: enough for a few dozen offsets, and it
#: bounds the fit's memory (pixels x classes logits) whatever the frame count and size.
FIT_PIXELS = 4_000_000


def _loader(pairs: list[Pair], label_map: LabelMap, height: int, width: int) -> Any:
    from torch.utils.data import DataLoader

    from segray.tasks.semantic.data import PairDataset, collate_val

    ds = PairDataset(pairs, label_map, height, width, train=False, cache=False)
    return DataLoader(ds, batch_size=4, collate_fn=collate_val, num_workers=0)


@torch.inference_mode()
def predict_pixels(
    model: nn.Module, loader: Any, num_classes: int, mean: torch.Tensor, std: torch.Tensor, per_frame: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, C) half-precision logits and their class ids: up to ``per_frame`` labelled pixels
    of each frame, drawn with a fixed seed, scored at the mask's size as validation does."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    logits, targets = [], []
    for images, masks in loader:
        out = model(normalise(images.to(mean.device), mean, std)).float()
        for i, m in enumerate(masks):
            up = F.interpolate(out[i : i + 1], size=m.shape, mode="bilinear", align_corners=False)[0].cpu()
            keep = ((m >= 0) & (m < num_classes)).flatten().nonzero().squeeze(1)
            if len(keep) > per_frame:
                keep = keep[torch.randperm(len(keep), generator=g)[:per_frame]]
            logits.append(up.flatten(1)[:, keep].T.half())
            targets.append(m.flatten()[keep])
    return torch.cat(logits), torch.cat(targets)


def score_val(
    model: nn.Module,
    label_map: LabelMap,
    size: tuple[int, int],
    val_pairs: list[Pair],
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    """The val frames scored in the driver as validation scores them (``metrics.scores``' dict)."""
    device = next(model.parameters()).device
    m, s = pixel_stats(mean, std, device)
    cm, _ = validate(model, _loader(val_pairs, label_map, *size), label_map, m, s, device)
    model.eval()
    return scores(cm.cpu().numpy(), label_map.names)


def fit_and_fold(
    model: nn.Module,
    label_map: LabelMap,
    size: tuple[int, int],
    train_pairs: list[Pair],
    val_pairs: list[Pair],
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    """Fit offsets on the training frames, fold them into ``model``, score the val frames with them."""
    c = label_map.num_classes
    m, s = pixel_stats(mean, std, next(model.parameters()).device)
    step = max(1, -(-len(train_pairs) // FIT_FRAMES))
    frames = train_pairs[::step]
    log.info("fitting per-class logit offsets on %d training frames", len(frames))
    per_frame = FIT_PIXELS // len(frames)
    logits, target = predict_pixels(model, _loader(frames, label_map, *size), c, m, s, per_frame)
    offsets, before, after = fit_offsets(logits, target)
    del logits, target
    fold_offsets(model, offsets)
    val = score_val(model, label_map, size, val_pairs, mean, std)
    log.info(
        "fitted offsets %s: train mIoU %.4f -> %.4f; val mIoU with them %.4f",
        [round(float(v), 2) for v in offsets],
        before,
        after,
        val["miou"],
    )
    return {
        "offsets": dict(zip(label_map.names, [round(float(v), 4) for v in offsets], strict=True)),
        "train_frames": len(frames),
        "train_miou_before": before,
        "train_miou_after": after,
        "val": val,
    }
