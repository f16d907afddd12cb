"""The training driver, for every task: check everything, run ``TorchTrainer``, export the best checkpoint.

Everything that can be wrong with the inputs (recipe keys, data layout, unmatched frames, masks,
label map, init weights, a storage path that cannot be written) fails here, before any worker
starts: the task (:mod:`segray.tasks`, from ``model.arch``) checks its data, the driver the rest.
Rerunning the same recipe (same ``name`` and ``run.storage``) continues from the latest
checkpoint: Ray Train V2 restores its checkpoint manager from ``<storage>/<name>``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any

from segray import progress, storage
from segray.recipe import TrainConfig
from segray.tasks import Task, TaskPlan, task_of_arch

log = logging.getLogger("segray.train")


@dataclass
class TrainSummary:
    run_uri: str
    epochs_done: int
    epochs: int
    completed: bool
    #: The model's task (``semantic``, ``instance``): :mod:`segray.tasks`.
    task: str = "semantic"
    #: The task's val score (val mIoU, val mask AP50) and how messages name it.
    score_label: str = "val mIoU"
    best_epoch: int | None = None
    best_score: float | None = None
    artifact: str | None = None
    model_id: str | None = None
    init: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


def plan(cfg: TrainConfig, runner: str = "ray") -> tuple[Task, TaskPlan]:
    """Every check that can fail, before any worker starts; records (or checks) the run's identity
    and saves the resolved recipe in the run folder."""
    from segray.models.artifact import RECIPE
    from segray.training.resume import check_or_record

    cfg.validate()
    task = task_of_arch(cfg.model.arch)
    if runner != "ray" and not task.trains_without_ray:
        raise ValueError(f"model.arch {cfg.model.arch}: {task.name} training runs on Ray only (drop --no-ray)")
    absolutise(cfg)
    p = task.plan(cfg, runner)
    storage.check_writable(cfg.run.storage)
    check_or_record(cfg, p.label_map, runner)
    storage.write_bytes(storage.join(cfg.run_uri, RECIPE), cfg.to_yaml().encode())
    return task, p


def absolutise(cfg: TrainConfig) -> None:
    """Local paths made absolute on the driver: Ray workers may run in another working directory."""
    from segray.models.artifact import is_weights_name

    def fix(uri: str | None) -> str | None:
        return None if uri is None else storage.absolute(uri)

    cfg.run.storage = fix(cfg.run.storage) or cfg.run.storage
    if cfg.model.encoder_weights and not is_weights_name(cfg.model.encoder_weights):  # a file, not e.g. imagenet
        cfg.model.encoder_weights = fix(cfg.model.encoder_weights)
    cfg.model.init_artifact = fix(cfg.model.init_artifact)


def loop_config(task: Task, cfg: TrainConfig, p: TaskPlan, board: Any = None) -> dict[str, Any]:
    """What every worker's ``train_loop`` gets: plain data, so it travels to Ray workers as is, and the
    board rank 0 posts its progress to (:mod:`segray.progress`)."""
    from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
    from segray.training.session import fault_drill_epoch

    return {
        "task": task.name,
        "cfg": cfg.to_dict(),
        "label_map": p.label_map.to_dict(),
        "train": p.train,
        "val": p.val,
        "noun": p.noun,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "fault_drill_epoch": fault_drill_epoch(),
        "progress": board,
    }


def make_trainer(task: Task, cfg: TrainConfig, p: TaskPlan, board: Any = None) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from segray.training.loop import train_loop
    from segray.training.session import CHECKPOINT_SCORE

    fs, path = storage.resolve(cfg.run.storage)
    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_config(task, cfg, p, board),
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
            # Ray Train's own ``ray.train`` logs (controller and workers): as loud as segray's -v says. A
            # Ray Train V2 field (V2 is what ``ray.train`` gives); the type checker sees V1's RunConfig.
            logging_config=LoggingConfig(log_level=logging.getLevelName(progress.ray_log_level())),  # type: ignore[call-arg]
        ),
    )


def fit_without_ray(
    task: Task, cfg: TrainConfig, p: TaskPlan, board: Any = None
) -> tuple[Any, list[tuple[Any, dict[str, Any]]]]:
    """The per-worker training function as one worker in this process: (latest, kept checkpoints)."""
    from segray.training.loop import train_loop
    from segray.training.session import LocalSession

    if cfg.run.num_workers != 1:
        raise ValueError(
            f"run.num_workers={cfg.run.num_workers}: without Ray the loop runs as one worker in this process; "
            "set run.num_workers=1, or train on Ray"
        )
    session = LocalSession(cfg.run_uri, cfg.run.keep_checkpoints, cfg.run.use_gpu)
    train_loop(loop_config(task, cfg, p, board), session)
    return session.results()


def best_checkpoint(task: Task, kept: list[tuple[Any, dict[str, Any]]]) -> Any:
    """The kept checkpoint with the task's highest val score among validated epochs, or None."""
    scored = [(c, task.score(m)) for c, m in kept if task.score(m) > float("-inf")]
    return max(scored, key=lambda cs: cs[1])[0] if scored else None


def export(checkpoint: Any, task: Task, cfg: TrainConfig, p: TaskPlan, dest: str | None = None) -> Any:
    """``checkpoint`` (a ``ray.train.Checkpoint``, local or S3) -> the task's artifact at ``dest`` (default
    ``cfg.export_uri``), with the run's record in its metrics and the resolved recipe beside it."""
    dest = dest or cfg.export_uri
    from segray.models.artifact import RECIPE
    from segray.training import checkpoint as ckpt_io

    with tempfile.TemporaryDirectory(prefix="segray-export-") as tmp:
        checkpoint.to_directory(tmp)
        state = ckpt_io.load_state(tmp)
        model = task.build_model(cfg, p.label_map)
        model.load_state_dict(ckpt_io.load_model_weights(tmp), strict=True)
    m = state["metrics"]
    art = task.export(model, m, cfg, p.label_map, p)
    head = {"source": "segray train", "run": cfg.run_uri, "epoch": m["epoch"], "epochs": cfg.run.epochs}
    art.metrics = {**head, **art.metrics, "init": p.init, **p.data, "recipe": cfg.to_dict()}
    storage.write_bytes(storage.join(dest, RECIPE), cfg.to_yaml().encode())
    art.save(dest)  # segray.json last: the folder is an artifact only once it is complete
    return art


def show_progress(display: progress.Progress, state: dict[str, Any]) -> None:
    """Rank 0's latest post (``loop._post``) on the driver's display: steps of this run, the epoch and
    its mean loss so far, and the last validated epoch's score (an epoch without validation has none)."""
    steps, done_epochs = int(state["steps"]), int(state["epoch"]) - 1 - int(state["start"])
    text = f"epoch {state['epoch']}/{state['epochs']}, loss {state['loss']:.4f}"
    if state.get("validated"):
        epoch, score = state["validated"]
        text += f", {state['score_label']} {score:.4f} (epoch {epoch})"
    display.update(done_epochs * steps + int(state["step"]), (int(state["stop"]) - int(state["start"])) * steps, text)


def run_training(cfg: TrainConfig, with_ray: bool = True) -> TrainSummary:
    """Train (or continue training), then export the best checkpoint when all epochs are done.

    ``with_ray=False``: the same worker function as one process without Ray (``fit_without_ray``).
    """
    from segray.training import checkpoint as ckpt_io

    task, p = plan(cfg, "ray" if with_ray else "local")
    log.info("%s: %d train %s (%s), %d val %s (%s), %d classes (%s); %s; run folder %s", cfg.name, len(p.train),
             p.noun, p.data.get("train_data"), len(p.val), p.noun, p.data.get("val_data"), p.label_map.num_classes,
             p.label_map.name, p.init, cfg.run_uri)  # fmt: skip
    print(f"weights: {p.init}", flush=True)
    board = progress.board_actor() if with_ray else progress.Board()
    display = progress.Progress(f"training {cfg.name}", unit="steps")
    with display, progress.Watcher(board, lambda state: show_progress(display, state)):
        if with_ray:
            result = make_trainer(task, cfg, p, board).fit()
            latest, kept = result.checkpoint, result.best_checkpoints or []
        else:
            latest, kept = fit_without_ray(task, cfg, p, board)
    if latest is None:
        raise RuntimeError(f"{cfg.run_uri}: training reported no checkpoint")
    with tempfile.TemporaryDirectory(prefix="segray-latest-") as tmp:
        latest.to_directory(tmp)
        state = ckpt_io.load_state(tmp)
    done = int(state["epoch"])
    history = list(state.get("history", []))
    summary = TrainSummary(cfg.run_uri, done, cfg.run.epochs, done >= cfg.run.epochs, task.name, task.score_label,
                           init=p.init, history=history)  # fmt: skip
    scored = [h for h in history if task.score(h) > float("-inf")]
    if scored:
        best_h = max(scored, key=task.score)
        summary.best_epoch, summary.best_score = int(best_h["epoch"]), task.score(best_h)
    if not summary.completed:
        log.info("stopped after epoch %d of %d; rerun the same command to continue", done, cfg.run.epochs)
        return summary
    art = export(best_checkpoint(task, kept) or latest, task, cfg, p)
    summary.artifact, summary.model_id = cfg.export_uri, art.model_id
    summary.best_epoch = int(art.metrics["epoch"])
    summary.best_score = float(art.metrics[task.score_key])
    log.info("exported %s (epoch %d, %s %.4f) to %s", art.model_id, summary.best_epoch, task.score_label,
             summary.best_score, cfg.export_uri)  # fmt: skip
    return summary
