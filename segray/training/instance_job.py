"""The Mask R-CNN training driver (``model.arch: maskrcnn``): check, run ``TorchTrainer``, export.

As :mod:`segray.training.job` for semantic models: every input is checked before a worker starts
(recipe, the canonical instance layout of both splits, backbone, weights file, a writable run
folder), rerunning the same recipe continues from the latest checkpoint, and when every epoch is
done the best checkpoint (by val mask AP50) is exported as an instance artifact
(``task: instance``, see :mod:`segray.models.artifact`). Data: ``data.root`` in the canonical
instance layout (``segray data convert --format via-instances|coco``), ``data.train``/``data.val``
as ``{split: NAME}``. Instance training runs on Ray only.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from typing import Any

from segray import storage
from segray.datasets.instances import InstanceFrame, instance_label_map, list_frames, read_frame
from segray.labels import LabelMap
from segray.training.config import TrainConfig

log = logging.getLogger("segray.train")


@dataclass
class InstancePlan:
    label_map: LabelMap
    train_frames: list[InstanceFrame]
    val_frames: list[InstanceFrame]
    init: str


def _split(cfg: TrainConfig, which: str) -> str:
    d = getattr(cfg.data, which)
    if set(d) - {"split", "root"} or "split" not in d:
        raise ValueError(f"data.{which}: instance training reads a split of data.root ({{split: NAME}}), got {d}")
    return str(d["split"])


def plan(cfg: TrainConfig) -> InstancePlan:
    """Every check that can fail, before any worker starts; records the run's identity and recipe."""
    from segray.models.artifact import RECIPE
    from segray.models.maskrcnn import INSTANCE_BACKBONES
    from segray.training.job import absolutise
    from segray.training.resume import check_or_record

    cfg.validate()
    if cfg.model.encoder not in INSTANCE_BACKBONES:
        raise ValueError(
            f"model.encoder {cfg.model.encoder!r}: a maskrcnn backbone is one of {sorted(INSTANCE_BACKBONES)}"
        )
    if cfg.model.init_artifact:
        raise ValueError("model.init_artifact: not supported for maskrcnn; start from model.encoder_weights")
    if not cfg.data.root:
        raise ValueError(
            "data.root: give the canonical instance dataset (segray data convert --format coco|via-instances)"
        )
    absolutise(cfg)
    label_map = instance_label_map(cfg.data.root)
    train = list_frames(cfg.data.root, _split(cfg, "train"))
    val = list_frames(cfg.data.root, _split(cfg, "val"))
    for frames in (train, val):  # one frame of each split decoded here: a foreign layout fails in seconds
        read_frame(frames[0], label_map.num_classes)
    if cfg.model.encoder_weights:
        storage.check_readable(cfg.model.encoder_weights)
    init = f"backbone from {cfg.model.encoder_weights}" if cfg.model.encoder_weights else "from scratch"
    storage.check_writable(cfg.run.storage)
    check_or_record(cfg, label_map, "ray")
    storage.write_bytes(storage.join(cfg.run_uri, RECIPE), cfg.to_yaml().encode())
    return InstancePlan(label_map, train, val, init)


def make_trainer(cfg: TrainConfig, p: InstancePlan) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from segray.training.instance_loop import SCORE, instance_train_loop

    fs, path = storage.resolve(cfg.run.storage)
    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    config = {
        "cfg": cfg.to_dict(),
        "label_map": p.label_map.to_dict(),
        "train_frames": [(f.image, f.ids, f.meta) for f in p.train_frames],
        "val_frames": [(f.image, f.ids, f.meta) for f in p.val_frames],
    }
    return TorchTrainer(
        instance_train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
    )


def export_checkpoint(
    ckpt_dir: str, cfg: TrainConfig, label_map: LabelMap, extra: dict[str, Any], dest: str | None = None
) -> Any:
    """The checkpoint's weights as an instance artifact at ``dest`` (default ``cfg.export_uri``)."""
    dest = dest or cfg.export_uri
    from segray.models.artifact import RECIPE, ModelArtifact
    from segray.models.maskrcnn import INSTANCE_ARCH
    from segray.models.preprocessing import Preprocessing
    from segray.training import checkpoint as ckpt_io
    from segray.training.instance_loop import build

    state = ckpt_io.load_state(ckpt_dir)
    model = build(cfg, label_map.num_classes, weights=False)
    model.load_state_dict(ckpt_io.load_model_weights(ckpt_dir), strict=True)
    model.eval()
    m = state["metrics"]
    metrics = {
        "source": "segray train",
        "run": cfg.run_uri,
        "epoch": m["epoch"],
        "epochs": cfg.run.epochs,
        "val_mask_ap": m["val_mask_ap"],
        "val_mask_ap50": m["val_mask_ap50"],
        "val_mask_ap75": m["val_mask_ap75"],
        "val_exact_count_fraction": m["val_exact_count_fraction"],
        "val_count_mae": m["val_count_mae"],
        "val_ap_per_class": {n: m[f"val_ap_{n}"] for n in label_map.names},
        **extra,
        "recipe": cfg.to_dict(),
    }
    art = ModelArtifact(
        model,
        label_map,
        Preprocessing(height=cfg.model.height, width=cfg.model.width),
        cfg.name,
        INSTANCE_ARCH,
        metrics=metrics,
        encoder_weights=cfg.model.encoder_weights,
        task="instance",
    )
    storage.write_bytes(storage.join(dest, RECIPE), cfg.to_yaml().encode())
    art.save(dest)  # segray.json last: the folder is an artifact only once it is complete
    return art


def _score(metrics: dict[str, Any]) -> float:
    """Val mask AP50 of a validated epoch, else -inf (NaN, or null once Ray Train's record restored it)."""
    v = metrics.get("val_mask_ap50")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def run_instance_training(cfg: TrainConfig, with_ray: bool = True) -> Any:
    """Train (or continue), then export the best checkpoint when all epochs are done; a ``TrainSummary``."""
    from segray.training import checkpoint as ckpt_io
    from segray.training.job import TrainSummary

    if not with_ray:
        raise ValueError("model.arch maskrcnn: instance training runs on Ray only (drop --no-ray)")
    p = plan(cfg)
    log.info("%s: %d train / %d val frames, %d classes (%s); %s; run folder %s", cfg.name, len(p.train_frames),
             len(p.val_frames), p.label_map.num_classes, p.label_map.name, p.init, cfg.run_uri)  # fmt: skip
    print(f"weights: {p.init}", flush=True)
    result = make_trainer(cfg, p).fit()
    latest, kept = result.checkpoint, result.best_checkpoints or []
    if latest is None:
        raise RuntimeError(f"{cfg.run_uri}: training reported no checkpoint")
    with tempfile.TemporaryDirectory(prefix="segray-latest-") as tmp:
        latest.to_directory(tmp)
        state = ckpt_io.load_state(tmp)
    done = int(state["epoch"])
    history = list(state.get("history", []))
    summary = TrainSummary(cfg.run_uri, done, cfg.run.epochs, done >= cfg.run.epochs, init=p.init, history=history)
    summary.task = "instance"
    scored = [(c, m) for c, m in kept if _score(m) > -math.inf]
    best = max(scored, key=lambda cm: _score(cm[1]))[0] if scored else latest
    if not summary.completed:
        log.info("stopped after epoch %d of %d; rerun the same command to continue", done, cfg.run.epochs)
        return summary
    extra = {
        "init": p.init,
        "train_data": f"{cfg.data.root} split {_split(cfg, 'train')}",
        "train_pairs": len(p.train_frames),
        "val_data": f"{cfg.data.root} split {_split(cfg, 'val')}",
        "val_pairs": len(p.val_frames),
    }
    with tempfile.TemporaryDirectory(prefix="segray-export-") as tmp:
        best.to_directory(tmp)
        art = export_checkpoint(tmp, cfg, p.label_map, extra)
    summary.artifact, summary.model_id = cfg.export_uri, art.model_id
    summary.best_epoch = int(art.metrics["epoch"])
    summary.best_val_mask_ap50 = float(art.metrics["val_mask_ap50"])
    log.info("exported %s (epoch %d, val mask AP50 %.4f) to %s", art.model_id, summary.best_epoch,
             summary.best_val_mask_ap50, cfg.export_uri)  # fmt: skip
    return summary
