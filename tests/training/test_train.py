"""Training on Ray Train: real 2-worker TorchTrainer runs on the session's Ray and SeaweedFS S3."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.common import ROOT
from helpers.train_data import SHAPES, write_shapes_dataset
from helpers.training import SIZE, checkpoint_dirs, recipe

from segray import storage
from segray.labelling.job import LabelOptions, run_label_job
from segray.models.artifact import ModelArtifact
from segray.recipe import load_config
from segray.training import checkpoint as ckpt_io
from segray.training.job import run_training

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def shapes_s3(s3) -> str:  # noqa: ANN001 - the session's SeaweedFS fixture
    import uuid

    from helpers.common import BUCKET

    return write_shapes_dataset(f"s3://{BUCKET}/shapes-{uuid.uuid4().hex[:8]}", {"train": 16, "val": 5})


def test_unet_trains_on_s3_exports_and_labels(shapes_s3: str, s3_prefix: str, tmp_path) -> None:  # noqa: ANN001
    # Progressive resizing: epoch 1 on half-size frames and crops, epoch 2 at the model size.
    cfg = load_config(None, recipe(shapes_s3, s3_prefix, "unet", "augment.small_epochs=1", "augment.small_scale=0.5"))
    s = run_training(cfg)
    assert s.completed and s.epochs_done == 2 and [h["epoch"] for h in s.history] == [1, 2]
    assert [(h["train_height"], h["train_width"]) for h in s.history] == [(SIZE // 2, SIZE // 2), (SIZE, SIZE)]
    run = cfg.run_uri
    assert run.startswith("s3://")
    # Checkpoints on S3: safetensors + JSON only, never a pickle.
    dirs = checkpoint_dirs(run)
    assert dirs == ["epoch-0001", "epoch-0002"]
    for d in dirs:
        files = sorted(p.rsplit("/", 1)[-1] for p in storage.list_files(storage.join(run, d)))
        assert files == sorted([ckpt_io.MODEL, ckpt_io.OPTIMIZER, ckpt_io.STATE]), files
    state = json.loads(storage.read_bytes(storage.join(run, "epoch-0002", ckpt_io.STATE)))
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert np.asarray(state["val_confusion"]).sum() > 0
    assert storage.read_bytes(storage.join(run, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    # The export is a real artifact with the data's own label map (from labels.json) and metrics.
    art = ModelArtifact.load(s.artifact)
    assert s.artifact == storage.join(run, "model")
    assert art.label_map == SHAPES and art.arch == "unet"
    assert art.metrics["epoch"] == s.best_epoch and 0 <= art.metrics["val_miou"] <= 1
    assert set(art.metrics["val_iou"]) == {"background", "box", "disc"}
    assert (art.preprocessing.height, art.preprocessing.width) == (SIZE, SIZE)
    # ... which the labelling job labels with.
    out = str(tmp_path / "labels")
    job = run_label_job(LabelOptions(model=s.artifact, input=storage.join(shapes_s3, "val"), output=out))
    assert (job.labelled, job.failed) == (5, 0) and job.model_id == art.model_id
    import pyarrow.dataset as pads

    stats = pads.dataset(f"{out}/stats", format="parquet").to_table()
    assert set(stats.column_names) >= {"px_background", "px_box", "px_disc"}


def test_pspnet_stopped_after_epoch_1_continues_at_epoch_2(shapes_s3: str, s3_prefix: str, tmp_path) -> None:  # noqa: ANN001
    # val_every=2: the stop comes after an epoch that was not validated, whose NaN score Ray Train
    # stores (as null) and the rerun must restore and rank.
    overrides = recipe(shapes_s3, s3_prefix, "pspnet", "run.val_every=2")
    first = run_training(load_config(None, [*overrides, "run.max_epochs_this_run=1"]))
    assert (first.completed, first.epochs_done, first.artifact) == (False, 1, None)
    assert [h["epoch"] for h in first.history] == [1]
    run = load_config(None, overrides).run_uri
    assert checkpoint_dirs(run) == ["epoch-0001"]
    assert not storage.exists(storage.join(run, "model", "segray.json"))

    second = run_training(load_config(None, overrides))
    assert second.completed and second.epochs_done == 2
    # Continued, not restarted: epoch 1's record is the first run's, and only epoch 2 was added.
    assert json.dumps(second.history[0]) == json.dumps(first.history[0])  # NaN-aware
    assert math.isnan(first.history[0]["val_miou"])
    assert [h["epoch"] for h in second.history] == [1, 2]
    state = json.loads(storage.read_bytes(storage.join(run, "epoch-0002", ckpt_io.STATE)))
    s1 = json.loads(storage.read_bytes(storage.join(run, "epoch-0001", ckpt_io.STATE)))
    assert state["step"] == 2 * s1["step"]  # the LR schedule and step count carried on
    assert ModelArtifact.load(second.artifact).arch == "pspnet"

    # The exported PSPNet labels frames through the real job entry point.
    out = tmp_path / "labels"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "label_frames.py"),
            "--model",
            second.artifact,
            "--input",
            storage.join(shapes_s3, "val"),
            "--output",
            str(out),
            "--cpus-per-actor",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 labelled, 0 failed" in proc.stdout
    assert len(list((out / "masks").rglob("*.png"))) == 5


@pytest.mark.slow
def test_lost_worker_resumes_from_last_checkpoint(
    shapes_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FailureConfig: rank 0 is SIGKILLed mid-epoch 2; the worker group restarts from epoch 1's checkpoint."""
    from segray.training.session import FAULT_DRILL_ENV

    cfg = load_config(None, recipe(shapes_s3, str(tmp_path / "runs"), "unet", "run.max_failures=1"))
    monkeypatch.setenv(FAULT_DRILL_ENV, "2")  # read by the driver, handed to the workers with the recipe
    s = run_training(cfg)
    assert storage.exists(storage.join(cfg.run_uri, "_injected_failure_epoch_2"))
    assert s.completed and [h["epoch"] for h in s.history] == [1, 2]
    assert s.artifact and ModelArtifact.load(s.artifact).metrics["epochs"] == 2


def test_validation_every_other_epoch_still_checkpoints_and_exports_a_scored_epoch(tmp_path) -> None:  # noqa: ANN001
    """``run.val_every=2`` over 3 epochs: epoch 1 is trained and checkpointed but not scored (NaN);
    epochs 2 and 3 (the last) are scored, and the export is the better of those two. The run also
    trains with a two-term loss (class-weighted cross-entropy plus Dice), and validates with a logit
    adjustment that the export folds into the model: evaluating the artifact gives exactly the
    validation's figures."""
    from segray.datasets.pairs import PairSource
    from segray.evaluation.evaluate import EvalOptions, evaluate
    from segray.tasks.semantic.logit_adjust import head_conv

    shapes = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 5})
    extra = [
        "loss=[{type: ce, class_weights: [0.2, 3.0, 3.0]}, {type: dice, weight: 0.5}]",
        "export.logit_adjustment=1.0",
    ]
    cfg = load_config(None, recipe(shapes, str(tmp_path / "runs"), "unet", "run.epochs=3", "run.val_every=2", *extra))
    s = run_training(cfg)
    assert s.completed and [h["epoch"] for h in s.history] == [1, 2, 3]
    scored = [h["epoch"] for h in s.history if math.isfinite(h["val_miou"])]
    assert scored == [2, 3]
    # keep_checkpoints=2: the unscored epoch 1 ranked lowest and made room for the scored ones.
    assert checkpoint_dirs(cfg.run_uri) == ["epoch-0002", "epoch-0003"]
    best = max((h for h in s.history if h["epoch"] in scored), key=lambda h: h["val_miou"])
    art = ModelArtifact.load(s.artifact)
    assert art.metrics["epoch"] == best["epoch"] == s.best_epoch
    assert art.metrics["val_miou"] == pytest.approx(best["val_miou"])
    assert storage.read_bytes(storage.join(cfg.run_uri, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    # The artifact's head bias is the checkpoint's minus log(weights); evaluation reproduces validation.
    trained = ckpt_io.load_model_weights(str(tmp_path / "runs" / "tiny-unet" / f"epoch-{best['epoch']:04d}"))
    conv = head_conv(art.model, 3)
    name = next(n for n, m in art.model.named_modules() if m is conv)
    offsets = (conv.bias.detach() - trained[f"{name}.bias"]).tolist()
    assert offsets == pytest.approx([-math.log(0.2), -math.log(3.0), -math.log(3.0)], abs=1e-5)
    r = evaluate(EvalOptions(model=s.artifact, data=PairSource(root=shapes, split="val"), overlays=0))
    assert r.scores["miou"] == pytest.approx(art.metrics["val_miou"], abs=1e-9)
    assert art.metrics["logit_adjustment"] == 1.0
