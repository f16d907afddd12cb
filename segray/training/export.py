"""The best checkpoint -> a model artifact in exactly the format ``jobs/label_frames.py`` loads.

The recipe's ``export:`` steps run in order on the checkpoint's weights: the logit adjustment
(validation during the run scored the adjusted logits, so the artifact must predict them), then
the offsets fitted on the training frames. Both fold into the head's bias. The resolved recipe
travels with the artifact as ``recipe.yaml`` (and under ``metrics.recipe`` in ``segray.json``).
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from segray import storage
from segray.datasets.pairs import Pair
from segray.labels import LabelMap
from segray.models.artifact import RECIPE
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.init import model_kwargs
from segray.training.logit_adjust import fold_offsets, logit_offsets


def export_checkpoint(
    ckpt_dir: str,
    cfg: TrainConfig,
    label_map: LabelMap,
    extra: dict[str, Any],
    pairs: tuple[list[Pair], list[Pair]] | None = None,
) -> Any:
    """Build the model, load the checkpoint's weights, run the export steps, save the artifact.

    ``pairs`` (train, val): needed with ``export.fit_offsets``, which fits offsets on the first and
    re-scores the second (the artifact's val figures are then those; the checkpoint's are kept apart).
    """
    from segray.models import build_model
    from segray.models.artifact import ModelArtifact
    from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    state = ckpt_io.load_state(ckpt_dir)
    model = build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **model_kwargs(cfg.model))
    model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir), strict=True)
    offsets = logit_offsets(cfg.class_weights, cfg.export.logit_adjustment)
    if offsets is not None:
        fold_offsets(model, offsets)
    model.eval()
    m = state["metrics"]
    val = {
        "val_miou": m["val_miou"],
        "val_pixel_accuracy": m["val_pixel_accuracy"],
        "val_mean_dice": m["val_mean_dice"],
        "val_iou": {n: m[f"val_iou_{n}"] for n in label_map.names},
    }
    fitted: dict[str, Any] = {}
    if cfg.export.fit_offsets:
        from segray.training.calibrate import fit_and_fold

        if pairs is None:
            raise ValueError("export.fit_offsets: the export needs the run's train and val pairs")
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
    metrics = {
        "source": "segray train",
        "run": cfg.run_uri,
        "epoch": m["epoch"],
        "epochs": cfg.run.epochs,
        **val,
        "logit_adjustment": cfg.export.logit_adjustment,
        **fitted,
        **extra,
        "recipe": cfg.to_dict(),
    }
    art = ModelArtifact(
        model,
        label_map,
        Preprocessing(height=cfg.model.height, width=cfg.model.width),
        cfg.name,
        cfg.model.arch,
        metrics=metrics,
    )
    storage.write_bytes(storage.join(cfg.export_uri, RECIPE), cfg.to_yaml().encode())
    art.save(cfg.export_uri)  # segray.json last: the folder is an artifact only once it is complete
    return art


def export_best(
    checkpoint: Any,
    cfg: TrainConfig,
    label_map: LabelMap,
    extra: dict[str, Any],
    pairs: tuple[list[Pair], list[Pair]] | None = None,
) -> Any:
    """``checkpoint``: a ``ray.train.Checkpoint`` (local or S3); downloaded to a temporary folder first."""
    with tempfile.TemporaryDirectory(prefix="segray-export-") as tmp:
        checkpoint.to_directory(tmp)
        return export_checkpoint(tmp, cfg, label_map, extra, pairs)
