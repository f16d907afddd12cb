"""The best checkpoint's model -> a semantic artifact in exactly the format ``segray label`` loads.

The recipe's ``export:`` steps run in order on the checkpoint's weights: the logit adjustment
(validation during the run scored the adjusted logits, so the artifact must predict them), then
the offsets fitted on the training frames. Both fold into the head's bias.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.models.artifact import ModelArtifact, band_preprocessing
from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from segray.recipe import TrainConfig
from segray.tasks.semantic.logit_adjust import fold_offsets, logit_offsets


def export_model(
    model: nn.Module,
    m: dict[str, Any],
    cfg: TrainConfig,
    label_map: LabelMap,
    pairs: tuple[list[Pair], list[Pair]],
) -> ModelArtifact:
    """Run the export steps on ``model`` (the checkpoint's weights; ``m`` its epoch's metrics).

    ``pairs`` (train, val): ``export.fit_offsets`` fits offsets on the first and re-scores the second
    (the artifact's val figures are then those; the checkpoint's are kept apart).
    """
    offsets = logit_offsets(cfg.class_weights, cfg.export.logit_adjustment)
    if offsets is not None:
        fold_offsets(model, offsets)
    model.eval()
    val = {
        "val_miou": m["val_miou"],
        "val_pixel_accuracy": m["val_pixel_accuracy"],
        "val_mean_dice": m["val_mean_dice"],
        "val_iou": {n: m[f"val_iou_{n}"] for n in label_map.names},
    }
    fitted: dict[str, Any] = {}
    if cfg.export.fit_offsets:
        from segray.tasks.semantic.calibrate import fit_and_fold

        # Frames are scored on the GPU where there is one: these passes are the export's cost.
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        size = (cfg.model.height, cfg.model.width)
        fit = fit_and_fold(model, label_map, size, pairs[0], pairs[1], IMAGENET_MEAN, IMAGENET_STD)
        v = fit["val"]
        fitted = {
            "fitted_offsets": fit["offsets"],
            "fit_train_frames": fit["train_frames"],
            "fit_train_miou": [fit["train_miou_before"], fit["train_miou_after"]],
            "checkpoint_val_miou": m["val_miou"],  # as validation scored it during the run
        }
        val = {"val_miou": v["miou"], "val_pixel_accuracy": v["pixel_accuracy"], "val_mean_dice": v["mean_dice"],
               "val_iou": v["iou"]}  # fmt: skip
        model.cpu()
    metrics = {**val, "logit_adjustment": cfg.export.logit_adjustment, **fitted}
    pre = Preprocessing(height=cfg.model.height, width=cfg.model.width)
    if cfg.data.from_scenes:  # a band model: one channel per band, normalised in the scenes' raw units
        stats = cfg.data.band_stats
        if not isinstance(stats, dict):
            raise ValueError(f"data.band_stats {stats!r} was not resolved to mean and std before the export")
        bands = [str(b) for b in cfg.data.bands or []]
        pre = band_preprocessing(cfg.model.height, cfg.model.width, bands, stats["mean"], stats["std"])
    return ModelArtifact(model, label_map, pre, cfg.name, cfg.model.arch, metrics=metrics)
