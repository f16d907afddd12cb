"""What ``segray train`` prints: one progress display, and Ray's own lines only with ``-v``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.cli import segray_process
from helpers.train_data import write_shapes_dataset
from helpers.training import recipe

pytestmark = pytest.mark.usefixtures("ray_session")

#: Ray Train's own per-epoch lines, which reach the driver only with ``-v``.
RAY_LINES = ("TrainingReport(", "(RayTrainWorker")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), {"train": 8, "val": 4})


def train(shapes: str, runs: Path, *flags: str) -> str:
    """``segray [flags] train`` of a tiny one-worker recipe validated on epoch 2 only; its output."""
    overrides = recipe(shapes, str(runs), "unet", "run.num_workers=1", "run.val_every=2", "run.epochs=2")
    config = runs.parent / "recipe.yaml"
    config.write_text("name: tiny-unet\n")  # the rest as overrides
    proc = segray_process(*flags, "--progress-every", "0", "train", "--config", str(config), *overrides)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout


def test_train_shows_progress_and_no_ray_dumps_or_nan_scores(shapes: str, tmp_path: Path) -> None:
    out = train(shapes, tmp_path / "runs")
    for line in RAY_LINES:
        assert line not in out, out
    assert not re.search(r"\bnan\b", out, re.I), out  # epoch 1 is not validated: no score shown for it
    # Progress lines through both epochs (2 steps each); epoch 2's validated score appears once it is known.
    assert re.search(r"^training tiny-unet: \d/4 steps, epoch 1/2, loss \d+\.\d{4}", out, re.M), out
    assert re.search(r"^training tiny-unet: 4/4 steps, epoch 2/2, loss \S+, val mIoU \d\.\d{4} \(epoch 2\)", out, re.M)
    assert "trained tiny-unet: 2 epochs" in out


def test_verbose_train_brings_ray_lines_back(shapes: str, tmp_path: Path) -> None:
    out = train(shapes, tmp_path / "runs", "-v")
    for line in RAY_LINES:
        assert line in out, out
