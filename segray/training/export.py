"""The best checkpoint -> a model artifact in exactly the format ``jobs/label_frames.py`` loads."""

from __future__ import annotations

import tempfile
from typing import Any

import torch

from segray.datasets.pairs import Pair
from segray.labels import LabelMap
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
    """Build the model, load the checkpoint's weights, save an artifact with label map and metrics.

    ``pairs`` (train, val): needed with ``loss.fit_offsets``, which fits offsets on the first and
    re-scores the second (the artifact's val figures are then those, the checkpoint's are kept apart),
    and with ``model.hflip_average``: validation during the run scored single passes, so the val
    frames are scored again as the artifact predicts (the fit, too, predicts flip-averaged).
    """
    from segray.models import build_model
    from segray.models.artifact import ModelArtifact
    from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    state = ckpt_io.load_state(ckpt_dir)
    model = build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **model_kwargs(cfg.model))
    model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir), strict=True)
    offsets = logit_offsets(cfg.loss.class_weights, cfg.loss.logit_adjustment)
    if offsets is not None:  # validation scored the adjusted logits: the artifact must predict them
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
    hflip = cfg.model.hflip_average
    size = (cfg.model.height, cfg.model.width)
    if cfg.loss.fit_offsets or hflip:
        from segray.training.calibrate import fit_and_fold, score_val

        if pairs is None:
            raise ValueError("loss.fit_offsets / model.hflip_average: the export needs the run's train and val pairs")
        train_pairs, val_pairs = pairs
        # Frames are scored on the model's device: the GPU where there is one (a driver without Ray
        # on a GPU machine), where these passes over the train and val frames are the export's cost.
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.loss.fit_offsets:
            fit = fit_and_fold(model, label_map, size, train_pairs, val_pairs, IMAGENET_MEAN, IMAGENET_STD, hflip)
            fitted = {
                "fitted_offsets": fit["offsets"],
                "fit_train_frames": fit["train_frames"],
                "fit_train_miou": [fit["train_miou_before"], fit["train_miou_after"]],
            }
            v = fit["val"]
        else:
            v = score_val(model, label_map, size, val_pairs, IMAGENET_MEAN, IMAGENET_STD, hflip)
        fitted["checkpoint_val_miou"] = m["val_miou"]  # as validation scored it during the run
        val = {
            "val_miou": v["miou"],
            "val_pixel_accuracy": v["pixel_accuracy"],
            "val_mean_dice": v["mean_dice"],
            "val_iou": v["iou"],
        }
        model.cpu()
    metrics = {
        "source": "segray train",
        "run": cfg.run_uri,
        "epoch": m["epoch"],
        "epochs": cfg.run.epochs,
        **val,
        "logit_adjustment": cfg.loss.logit_adjustment,
        "hflip_average": hflip,
        **fitted,
        **extra,
    }
    art = ModelArtifact(
        model,
        label_map,
        Preprocessing(height=cfg.model.height, width=cfg.model.width, hflip_average=hflip),
        cfg.model.name or cfg.name,
        cfg.model.arch,
        metrics=metrics,
    )
    art.save(cfg.export_uri)
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
