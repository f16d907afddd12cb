"""The training driver: check everything, run ``TorchTrainer``, export the best checkpoint.

Everything that can be wrong with the inputs (recipe keys, data layout, unmatched frames, masks,
label map, init weights, a storage path that cannot be written) fails here, before any worker
starts. Rerunning the same recipe (same ``name`` and ``run.storage``) continues from the latest
checkpoint: Ray Train V2 restores its checkpoint manager from ``<storage>/<name>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.datasets.pairs import Pair, dataset_label_map, list_pairs
from segray.labels import LabelMap
from segray.metrics import is_scored
from segray.training.config import TrainConfig

log = logging.getLogger("segray.train")


@dataclass
class TrainSummary:
    run_uri: str
    epochs_done: int
    epochs: int
    completed: bool
    best_epoch: int | None = None
    best_val_miou: float | None = None
    artifact: str | None = None
    model_id: str | None = None
    init: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ``semantic``, or ``instance`` (Mask R-CNN: the best epoch is scored by val mask AP50)
    task: str = "semantic"
    best_val_mask_ap50: float | None = None


@dataclass
class Plan:
    """What the driver resolved before starting: label map, pairs, how the weights start."""

    label_map: LabelMap
    train_pairs: list[Pair]
    val_pairs: list[Pair]
    init: str
    #: (height, width) of the training frames (the median of a sample): labelling resizes frames up
    #: to ``tile_above`` times this size rather than windowing them.
    train_frame_size: tuple[int, int] | None = None


def plan(cfg: TrainConfig, runner: str = "ray") -> Plan:
    """Every check that can fail, before any worker starts; records (or checks) the run's identity
    and saves the resolved recipe in the run folder."""
    from segray.datasets.pairs import read_pair
    from segray.models.artifact import RECIPE
    from segray.training.init import describe_init
    from segray.training.resume import check_or_record

    cfg.validate()
    absolutise(cfg)
    label_map = dataset_label_map(cfg.data.root)
    cfg.check_data(label_map.num_classes, label_map.name)
    train_pairs = list_pairs(cfg.data.source("train"))
    val_pairs = list_pairs(cfg.data.source("val"))
    resolve_auto_weights(cfg, label_map, train_pairs)
    # One pair of each split decoded here: a colour mask or a foreign label map fails in seconds.
    read_pair(train_pairs[0], label_map)
    read_pair(val_pairs[0], label_map)
    if cfg.model.encoder_weights and is_weights_file(cfg.model.encoder_weights):
        storage.check_readable(cfg.model.encoder_weights)
    init = describe_init(cfg.model, label_map)
    storage.check_writable(cfg.run.storage)
    check_or_record(cfg, label_map, runner)
    storage.write_bytes(storage.join(cfg.run_uri, RECIPE), cfg.to_yaml().encode())
    return Plan(label_map, train_pairs, val_pairs, init, frame_size(train_pairs))


#: Training frames whose headers are read for :func:`frame_size`.
FRAME_SIZE_SAMPLE = 50


def frame_size(pairs: list[Pair], sample: int = FRAME_SIZE_SAMPLE) -> tuple[int, int] | None:
    """The median (height, width) of up to ``sample`` frames evenly spread over ``pairs``."""
    from concurrent.futures import ThreadPoolExecutor

    from segray.frames.decode import header_size

    step = max(1, len(pairs) // sample)
    chosen = pairs[::step][:sample]
    with ThreadPoolExecutor(8) as pool:
        sizes = [s for s in pool.map(lambda p: header_size(storage.read_bytes(p.image)), chosen) if s]
    if not sizes:
        return None
    return int(np.median([h for _, h in sizes])), int(np.median([w for w, _ in sizes]))


def resolve_auto_weights(cfg: TrainConfig, label_map: LabelMap, train_pairs: list[Pair] | None = None) -> None:
    """``class_weights: auto`` -> median-frequency weights from the training masks, printed, and
    written into the recipe (so recipe.yaml and the run's identity hold the numbers used)."""
    from segray.datasets.eda import AUTO_WEIGHTS_MAX_MASKS, median_frequency_weights
    from segray.training.config import AUTO

    terms = [(i, t) for i, t in enumerate(cfg.loss) if t.class_weights == AUTO]
    if not terms:
        return
    pairs = train_pairs if train_pairs is not None else list_pairs(cfg.data.source("train"))
    weights = median_frequency_weights([(p.image, p.mask) for p in pairs], label_map)
    used = min(len(pairs), AUTO_WEIGHTS_MAX_MASKS)
    for i, term in terms:
        term.class_weights = list(weights)
        print(
            f"loss[{i}].class_weights: auto -> median frequency over {used} training masks: "
            + ", ".join(f"{c.name} {w:g}" for c, w in zip(label_map.classes, weights, strict=True)),
            flush=True,
        )


def is_weights_file(value: str) -> bool:
    """``model.encoder_weights`` names a file (a path or URI) rather than weights smp knows by name."""
    from segray.models.artifact import is_weights_name

    return not is_weights_name(value)


def absolutise(cfg: TrainConfig) -> None:
    """Local paths made absolute on the driver: Ray workers may run in another working directory."""

    def fix(uri: str | None) -> str | None:
        return None if uri is None else storage.absolute(uri)

    cfg.run.storage = fix(cfg.run.storage) or cfg.run.storage
    if cfg.model.encoder_weights and is_weights_file(cfg.model.encoder_weights):  # not a name such as imagenet
        cfg.model.encoder_weights = fix(cfg.model.encoder_weights)
    cfg.model.init_artifact = fix(cfg.model.init_artifact)


def loop_config(cfg: TrainConfig, p: Plan) -> dict[str, Any]:
    """What every worker's ``train_loop`` gets: plain data, so it travels to Ray workers as is."""
    from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    return {
        "cfg": cfg.to_dict(),
        "label_map": p.label_map.to_dict(),
        "train_pairs": [(x.image, x.mask) for x in p.train_pairs],
        "val_pairs": [(x.image, x.mask) for x in p.val_pairs],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def make_trainer(cfg: TrainConfig, p: Plan) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from segray.training.loop import train_loop
    from segray.training.session import CHECKPOINT_SCORE

    fs, path = storage.resolve(cfg.run.storage)
    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config(cfg, p),
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.run.keep_checkpoints,
                checkpoint_score_attribute=CHECKPOINT_SCORE,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
        ),
    )


def fit_without_ray(cfg: TrainConfig, p: Plan) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
    """The per-worker training function as one worker in this process: (latest, kept checkpoints)."""
    from segray.training.loop import train_loop
    from segray.training.session import LocalSession

    if cfg.run.num_workers != 1:
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers}: without Ray the loop runs as one worker in this process; "
            "set run.num_workers=1, or train on Ray"
        )
    session = LocalSession(cfg.run_uri, cfg.run.keep_checkpoints, cfg.run.use_gpu)
    train_loop(loop_config(cfg, p), session)
    return session.results()


def best_checkpoint(kept: list[tuple[Any, dict[str, Any]]]) -> Any:
    """The kept checkpoint with the highest val mIoU among validated epochs, or None."""
    scored = [(c, m["val_miou"]) for c, m in kept if is_scored(m)]
    return max(scored, key=lambda cs: cs[1])[0] if scored else None


def run_training(cfg: TrainConfig, with_ray: bool = True) -> TrainSummary:
    """Train (or continue training), then export the best checkpoint when all epochs are done.

    ``with_ray=False``: the same worker function as one process without Ray (``fit_without_ray``).
    ``model.arch: maskrcnn`` trains an instance model (:mod:`segray.training.instance_job`).
    """
    from segray.models.maskrcnn import INSTANCE_ARCH

    if cfg.model.arch == INSTANCE_ARCH:
        from segray.training.instance_job import run_instance_training

        return run_instance_training(cfg, with_ray)
    from segray.training import checkpoint as ckpt_io
    from segray.training.export import export_best

    p = plan(cfg, "ray" if with_ray else "local")
    log.info(
        "%s: %d train pairs (%s), %d val pairs (%s), %d classes (%s); %s; run folder %s",
        cfg.name,
        len(p.train_pairs),
        cfg.data.source("train").describe(),
        len(p.val_pairs),
        cfg.data.source("val").describe(),
        p.label_map.num_classes,
        p.label_map.name,
        p.init,
        cfg.run_uri,
    )
    print(f"weights: {p.init}", flush=True)
    if with_ray:
        result = make_trainer(cfg, p).fit()
        latest, kept = result.checkpoint, result.best_checkpoints or []
    else:
        latest, kept = fit_without_ray(cfg, p)
    if latest is None:
        raise RuntimeError(f"{cfg.run_uri}: training reported no checkpoint")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="segray-latest-") as tmp:
        latest.to_directory(tmp)
        state = ckpt_io.load_state(tmp)
    done = int(state["epoch"])
    history = list(state.get("history", []))
    summary = TrainSummary(cfg.run_uri, done, cfg.run.epochs, done >= cfg.run.epochs, init=p.init, history=history)
    best = best_checkpoint(kept) or latest
    scored = [h for h in history if is_scored(h)]
    best_metrics = max(scored, key=lambda h: h["val_miou"]) if scored else None
    if best_metrics:
        summary.best_epoch, summary.best_val_miou = int(best_metrics["epoch"]), float(best_metrics["val_miou"])
    if not summary.completed:
        log.info("stopped after epoch %d of %d; rerun the same command to continue", done, cfg.run.epochs)
        return summary
    art = export_best(
        best,
        cfg,
        p.label_map,
        {
            "init": p.init,
            "train_data": cfg.data.source("train").describe(),
            "train_pairs": len(p.train_pairs),
            "val_data": cfg.data.source("val").describe(),
            "val_pairs": len(p.val_pairs),
            "train_frame_size": list(p.train_frame_size) if p.train_frame_size else None,
        },
        pairs=(p.train_pairs, p.val_pairs),
    )
    summary.artifact, summary.model_id = cfg.export_uri, art.model_id
    summary.best_epoch = int(art.metrics["epoch"])
    summary.best_val_miou = float(art.metrics["val_miou"])
    log.info(
        "exported %s (epoch %d, val mIoU %.4f) to %s",
        art.model_id,
        summary.best_epoch,
        summary.best_val_miou,
        cfg.export_uri,
    )
    return summary
