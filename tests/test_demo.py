"""``segray demo``: a trained model's masks, visibly right, through the real training and labelling."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest
from helpers.cli import run, segray_process

from segray.datasets.synthetic import STREET
from segray.demo import score_masks
from segray.labelling.job import LabelOptions, run_label_job
from segray.models.artifact import init_artifact

pytestmark = pytest.mark.usefixtures("ray_session")

#: The demo's test-frame mIoU must clear this; an untrained model of the same architecture scores
#: far below it (checked below on the same frames).
THRESHOLD = 0.6

#: ``segray demo``'s whole output at the default verbosity fits on one screen.
MAX_LINES = 40


@dataclass
class DemoRun:
    folder: Path
    #: What ``segray demo`` printed (stdout and stderr, as a pipe sees them).
    output: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """One ``segray demo`` run at the default verbosity, as its own process on the session's Ray. Progress
    lines every 10 minutes: each stage then prints its first and last line whatever the machine's speed
    (at the default 30 s a 2-3 minute demo prints about 6 more)."""
    folder = tmp_path_factory.mktemp("demo") / "demo"
    proc = segray_process("--progress-every", "600", "demo", "--dir", str(folder))
    (folder.parent / "output.txt").write_text(proc.stdout)  # kept beside the run, to read after a failure
    assert proc.returncode == 0, proc.stdout[-5000:]
    return DemoRun(folder, proc.stdout)


def test_demo_output_fits_on_one_screen(demo: DemoRun) -> None:
    """At most 40 lines, still with the mIoU, the area table and the overlay's path; none of Ray's own
    per-result dumps, checkpoint notices or worker lines, and no score for an epoch that was not validated."""
    lines = demo.output.splitlines()
    assert len(lines) <= MAX_LINES, demo.output
    assert "mIoU of the job's masks against the ground truth" in demo.output
    assert re.search(r"\bsky\s+[\d,]+\s+\d", demo.output), demo.output
    assert f"frame | ground truth | predicted mask: {demo.folder / 'overlay.png'}" in demo.output
    for ray_line in ("TrainingReport(", "Checkpoint successfully created", "(RayTrainWorker", "(TrainController"):
        assert ray_line not in demo.output
    assert not re.search(r"\bnan\b", demo.output, re.I), demo.output
    # Each long stage shows its progress, as plain lines (the output is not a terminal).
    assert re.search(r"^training demo-unet: \d+/\d+ steps, epoch \d+/16", demo.output, re.M), demo.output
    assert re.search(r"^labelling run \S+: 16/16 frames, 0 failed", demo.output, re.M), demo.output


def test_demo_trains_labels_and_scores_above_what_an_untrained_model_can(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo: DemoRun
) -> None:
    text = " ".join(demo.output.split())
    assert "16 test frames labelled (0 failed)" in text
    miou = float(re.search(r"mIoU of the job's masks against the ground truth: ([\d.]+)%", text).group(1)) / 100
    assert miou > THRESHOLD, text
    for name in ("sky", "road", "sidewalk", "building"):
        assert re.search(rf"\b{name}\s+[\d,]+\s+\d", text), f"no area row for {name}"
    overlay = cv2.imread(str(demo.folder / "overlay.png"))
    assert overlay is not None and overlay.shape == (3 * 240, 3 * 320, 3)  # 3 frames: frame | truth | mask

    # The same frames labelled by an untrained model of the same architecture stay far below.
    model = tmp_path / "untrained"
    init_artifact("unet", "resnet18", STREET, name="untrained", height=128, width=160).save(str(model))
    data = demo.folder / "data"
    run_label_job(LabelOptions(model=str(model), input=str(data / "test"), output=str(tmp_path / "untrained-out")))
    untrained, _ = score_masks(data, "test", str(tmp_path / "untrained-out"))
    assert untrained["miou"] < THRESHOLD / 2 < miou

    # The trained model says how it was trained: its recipe is the run folder's recipe.yaml.
    trained = demo.folder / "runs" / "demo-unet"
    code, text = run(capsys, "model", "info", str(trained / "model"))
    assert code == 0 and "label map 'street-demo'" in text and "val metrics mIoU" in text
    recipe = (trained / "recipe.yaml").read_text()
    assert (trained / "model" / "recipe.yaml").read_text() == recipe
    assert " ".join(recipe.split()) in text
