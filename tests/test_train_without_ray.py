"""``segray train --no-ray``: the per-worker training function as one process, with no Ray at all.

For a lone GPU machine where Ray is not installed. Same checkpoints, resume and export as on Ray;
what it lacks (restarting a lost worker) is said in ``segray.training.session``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from test_train import SIZE, checkpoint_dirs, recipe
from train_data import write_shapes_dataset

from segray import storage
from segray.models.artifact import ModelArtifact
from segray.training import checkpoint as ckpt_io
from segray.training.config import load_config
from segray.training.job import run_training
from segray.training.session import INDEX

# The command as a machine without Ray runs it: any import of ray fails.
WITHOUT_RAY = """
import importlib.abc, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r} (this test's machine has no Ray)")
        return None

sys.meta_path.insert(0, NoRay())
from segray.cli import main
sys.exit(main(sys.argv[1:]))
"""


def checkpoints_with_files(run_uri: str) -> list[str]:
    """Checkpoint folders that hold files (SeaweedFS's filer lists a deleted folder's empty directory
    when listing its parent by delimiter; S3 has no directories to leave behind)."""
    _, root = storage.resolve(run_uri)
    rel = (f[len(root) + 1 :] for f in storage.list_files(run_uri))
    return sorted({r.split("/")[0] for r in rel if r.startswith("epoch-")})


def one_worker(data: str, runs: str, arch: str, *extra: str) -> list[str]:
    return [*recipe(data, runs, arch), "run.num_workers=1", "run.torch_threads=2", *extra]


def train_without_ray(config: str, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY, "train", "--no-ray", "--config", config, *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


def test_trains_resumes_keeps_the_best_and_exports_with_ray_unimportable(tmp_path) -> None:  # noqa: ANN001
    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 4})
    runs = str(tmp_path / "runs")
    config = tmp_path / "recipe.yaml"
    config.write_text("{}\n")  # everything in the overrides
    overrides = one_worker(data, runs, "unet", "run.epochs=3", "run.keep_checkpoints=1")
    first = train_without_ray(str(config), [*overrides, "run.max_epochs_this_run=1"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after epoch 1 of 3" in first.stdout
    run = load_config(None, overrides).run_uri
    assert checkpoint_dirs(run) == ["epoch-0001"]
    first_state = storage.read_bytes(f"{run}/epoch-0001/{ckpt_io.STATE}")

    second = train_without_ray(str(config), overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from epoch 1's checkpoint" in second.stderr
    state = ckpt_io.load_state(f"{run}/epoch-0003")
    s1 = state["history"][0]
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3] and state["step"] == 3 * 2  # 8 frames, batch 4
    # keep_checkpoints=1: the best scored epoch and the latest stay, the index names exactly those.
    kept = json.loads(storage.read_bytes(f"{run}/{INDEX}"))["kept"]
    top = max(state["history"], key=lambda h: h["val_miou"])
    expected = sorted({f"epoch-{top['epoch']:04d}", "epoch-0003"})
    assert checkpoint_dirs(run) == checkpoints_with_files(run) == expected == [k["name"] for k in kept]
    assert [k["metrics"]["epoch"] for k in kept] == [int(e[-4:]) for e in expected]
    # Epoch 1's record is the first command's: the second continued, it did not start again.
    assert s1["epoch"] == 1 and s1["train_loss"] == json.loads(first_state)["history"][0]["train_loss"]
    # The export is the best checkpoint's weights, in the artifact format the labelling job loads.
    art = ModelArtifact.load(f"{run}/model")
    assert art.metrics["epoch"] == top["epoch"] and art.arch == "unet"
    assert (art.preprocessing.height, art.preprocessing.width) == (SIZE, SIZE)
    weights = ckpt_io.load_model_weights(f"{run}/epoch-{top['epoch']:04d}")
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert "trained tiny-unet: 3 epochs" in second.stdout


def test_on_s3_and_the_refusals(s3, s3_prefix: str, tmp_path) -> None:  # noqa: ANN001
    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 4})
    overrides = one_worker(data, s3_prefix, "pspnet", "run.epochs=2", "run.keep_checkpoints=1")
    cfg = load_config(None, overrides)
    s = run_training(cfg, with_ray=False)
    assert s.completed and [h["epoch"] for h in s.history] == [1, 2]
    assert cfg.run_uri.startswith("s3://")
    best = max(s.history, key=lambda h: h["val_miou"])
    assert checkpoints_with_files(cfg.run_uri) == sorted({f"epoch-{best['epoch']:04d}", "epoch-0002"})
    assert ModelArtifact.load(s.artifact).metrics["epoch"] == best["epoch"] == s.best_epoch

    # The same run on Ray would not see these checkpoints: refused before any worker starts.
    with pytest.raises(ValueError, match=r"started with --no-ray: continue it so, or give this run a new name="):
        run_training(load_config(None, overrides))
    # Without Ray there is one worker.
    two = load_config(None, [*overrides, "name=two-workers", "run.num_workers=2"])
    with pytest.raises(ValueError, match=r"run.num_workers=2: without Ray the loop runs as one worker"):
        run_training(two, with_ray=False)
    gpu = load_config(None, [*overrides, "name=on-gpu", "run.use_gpu=true"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"run.use_gpu is set but torch sees no GPU here"):
            run_training(gpu, with_ray=False)


def test_a_refused_resume_leaves_no_copy_of_the_checkpoint(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Resuming copies the checkpoint to a temporary folder; a refusal must not leave it behind."""
    import tempfile

    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 4, "val": 2})
    overrides = one_worker(data, str(tmp_path / "runs"), "unet", "run.epochs=2", "run.batch_size=2")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    first = run_training(load_config(None, [*overrides, "run.max_epochs_this_run=1"]), with_ray=False)
    assert first.epochs_done == 1
    with pytest.raises(ValueError, match=r"optim.ema_decay"):
        run_training(load_config(None, [*overrides, "optim.ema_decay=0.9"]), with_ray=False)
    assert not list(scratch.glob("segray-resume-*"))
    done = run_training(load_config(None, overrides), with_ray=False)  # the same recipe continues
    assert done.completed and not list(scratch.glob("segray-resume-*"))


def test_a_weight_average_resumes_only_with_the_same_decay(tmp_path) -> None:  # noqa: ANN001
    """The average's state is only meaningful under the decay it was built with: another one is refused."""
    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 4, "val": 2})
    overrides = one_worker(
        data, str(tmp_path / "runs"), "unet", "run.epochs=2", "run.batch_size=2", "optim.ema_decay=0.9"
    )
    first = run_training(load_config(None, [*overrides, "run.max_epochs_this_run=1"]), with_ray=False)
    assert first.epochs_done == 1
    changed = [*overrides, "optim.ema_decay=0.99"]
    with pytest.raises(ValueError, match=r"trained with optim.ema_decay=0.9: resume with it \(not 0.99\)"):
        run_training(load_config(None, changed), with_ray=False)
    done = run_training(load_config(None, overrides), with_ray=False)  # the same decay continues
    assert done.completed and [h["epoch"] for h in done.history] == [1, 2]
