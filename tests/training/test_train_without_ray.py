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
from helpers.common import ROOT
from helpers.train_data import write_shapes_dataset
from helpers.training import SIZE, checkpoint_dirs, recipe

from segray import storage
from segray.models.artifact import ModelArtifact
from segray.recipe import load_config
from segray.training import checkpoint as ckpt_io
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


def test_a_failed_resume_leaves_no_copy_of_the_checkpoint(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Resuming copies the checkpoint to a temporary folder; a resume that fails (here a damaged
    weights file) must not leave it behind, and the run continues once the file is whole again."""
    import tempfile

    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 4, "val": 2})
    overrides = one_worker(data, str(tmp_path / "runs"), "unet", "run.epochs=2", "run.batch_size=2")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    first = run_training(load_config(None, [*overrides, "run.max_epochs_this_run=1"]), with_ray=False)
    assert first.epochs_done == 1
    weights = tmp_path / "runs" / "tiny-unet" / "epoch-0001" / ckpt_io.MODEL
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(Exception, match=r"(?i)safetensor|header|incomplete|deserializ"):
        run_training(load_config(None, overrides), with_ray=False)
    assert not list(scratch.glob("segray-resume-*"))
    weights.write_bytes(whole)
    done = run_training(load_config(None, overrides), with_ray=False)  # the same recipe continues
    assert done.completed and not list(scratch.glob("segray-resume-*"))


def test_the_recipe_travels_with_the_run_and_the_model(tmp_path, capsys) -> None:  # noqa: ANN001
    """``recipe.yaml`` in the run folder and in the artifact (and under ``metrics.recipe``) equals
    ``--print-config``; the export's steps (logit adjustment, fitted offsets) give an artifact whose
    evaluation reproduces its recorded val figures; a class-weights list of the wrong length is
    refused on the driver, naming the loss term, before anything is written."""
    import yaml

    from segray.cli import main
    from segray.datasets.pairs import PairSource
    from segray.evaluation.evaluate import EvalOptions, evaluate

    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 4})
    overrides = one_worker(
        data, str(tmp_path / "runs"), "unet", "run.epochs=1",
        "loss=[{type: ce, class_weights: [0.5, 2.0, 3.0]}, {type: dice, weight: 0.5}]",
        "export.logit_adjustment=0.5", "export.fit_offsets=true",
    )  # fmt: skip
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("{}\n")
    assert main(["train", "--config", str(recipe_file), "--print-config", *overrides]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["loss"][1] == {"type": "dice", "weight": 0.5, "class_weights": None}
    s = run_training(load_config(str(recipe_file), overrides), with_ray=False)
    assert (tmp_path / "runs" / "tiny-unet" / "recipe.yaml").read_text() == printed
    assert (tmp_path / "runs" / "tiny-unet" / "model" / "recipe.yaml").read_text() == printed
    art = ModelArtifact.load(s.artifact)
    assert art.metrics["recipe"] == yaml.safe_load(printed)
    assert set(art.metrics["fitted_offsets"]) == {"background", "box", "disc"}
    r = evaluate(EvalOptions(model=s.artifact, data=PairSource(root=data, split="val"), overlays=0))
    assert r.scores["miou"] == pytest.approx(art.metrics["val_miou"], abs=1e-9)

    wrong = load_config(None, [*overrides, "name=wrong", "loss.0.class_weights=[1.0, 2.0]"])
    with pytest.raises(ValueError, match=r"loss\[0\]\.class_weights has 2 values, but label map 'shapes' has 3"):
        run_training(wrong, with_ray=False)
    assert not (tmp_path / "runs" / "wrong").exists()


@pytest.mark.parametrize("arch", ["unet", "pspnet"])
def test_the_gpu_recipes_run_an_epoch_on_the_cpu(tmp_path, arch: str) -> None:  # noqa: ANN001
    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 4, "val": 2})
    cfg = load_config(
        str(ROOT / "configs" / f"camvid-{arch}-gpu.yaml"),
        [f"data.root={data}", f"run.storage={tmp_path / 'runs'}", "run.use_gpu=false", "run.amp=false",
         "run.epochs=1", "run.batch_size=2", "run.val_batch_size=2", "run.torch_threads=2", "data.loader_workers=1",
         f"model.height={SIZE}", f"model.width={SIZE}", "loss.0.class_weights=[0.5, 2.0, 3.0]"],
    )  # fmt: skip
    s = run_training(cfg, with_ray=False)
    assert s.completed and s.epochs_done == 1
    assert ModelArtifact.load(s.artifact).arch == arch
