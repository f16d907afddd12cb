"""The best checkpoint -> a model artifact in exactly the format ``jobs/label_frames.py`` loads."""

from __future__ import annotations

import tempfile
from typing import Any

from segray.labels import LabelMap
from segray.training import checkpoint as ckpt_io
from segray.training.config import TrainConfig
from segray.training.init import model_kwargs
from segray.training.logit_adjust import fold_offsets, logit_offsets


def export_checkpoint(ckpt_dir: str, cfg: TrainConfig, label_map: LabelMap, extra: dict[str, Any]) -> Any:
    """Build the model, load the checkpoint's weights, save an artifact with label map and metrics."""
    from segray.models import build_model
    from segray.models.artifact import ModelArtifact
    from segray.models.preprocessing import Preprocessing

    state = ckpt_io.load_state(ckpt_dir)
    model = build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **model_kwargs(cfg.model))
    model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir), strict=True)
    offsets = logit_offsets(cfg.loss.class_weights, cfg.loss.logit_adjustment)
    if offsets is not None:  # validation scored the adjusted logits: the artifact must predict them
        fold_offsets(model, offsets)
    model.eval()
    m = state["metrics"]
    metrics = {
        "source": "segray train",
        "run": cfg.run_uri,
        "epoch": m["epoch"],
        "epochs": cfg.run.epochs,
        "val_miou": m["val_miou"],
        "val_pixel_accuracy": m["val_pixel_accuracy"],
        "val_mean_dice": m["val_mean_dice"],
        "val_iou": {n: m[f"val_iou_{n}"] for n in label_map.names},
        "logit_adjustment": cfg.loss.logit_adjustment,
        **extra,
    }
    art = ModelArtifact(
        model,
        label_map,
        Preprocessing(height=cfg.model.height, width=cfg.model.width),
        cfg.model.name or cfg.name,
        cfg.model.arch,
        metrics=metrics,
    )
    art.save(cfg.export_uri)
    return art


def export_best(checkpoint: Any, cfg: TrainConfig, label_map: LabelMap, extra: dict[str, Any]) -> Any:
    """``checkpoint``: a ``ray.train.Checkpoint`` (local or S3); downloaded to a temporary folder first."""
    with tempfile.TemporaryDirectory(prefix="segray-export-") as tmp:
        checkpoint.to_directory(tmp)
        return export_checkpoint(tmp, cfg, label_map, extra)
