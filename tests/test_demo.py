"""``segray demo``: a trained model's masks, visibly right, through the real training and labelling."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest
from helpers.cli import run

from segray.datasets.synthetic import STREET
from segray.demo import score_masks
from segray.labelling.job import LabelOptions, run_label_job
from segray.models.artifact import init_artifact

pytestmark = pytest.mark.usefixtures("ray_session")

#: The demo's test-frame mIoU must clear this; an untrained model of the same architecture scores
#: far below it (checked below on the same frames).
THRESHOLD = 0.6


def test_demo_trains_labels_and_scores_above_what_an_untrained_model_can(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run(capsys, "demo", "--dir", str(tmp_path / "demo"))
    assert code == 0, text
    assert "16 test frames labelled (0 failed)" in text
    miou = float(re.search(r"mIoU of the job's masks against the ground truth: ([\d.]+)%", text).group(1)) / 100
    assert miou > THRESHOLD, text
    for name in ("sky", "road", "sidewalk", "building"):
        assert re.search(rf"\b{name}\s+[\d,]+\s+\d", text), f"no area row for {name}"
    overlay = cv2.imread(str(tmp_path / "demo" / "overlay.png"))
    assert overlay is not None and overlay.shape == (3 * 240, 3 * 320, 3)  # 3 frames: frame | truth | mask

    # The same frames labelled by an untrained model of the same architecture stay far below.
    model = tmp_path / "untrained"
    init_artifact("unet", "resnet18", STREET, name="untrained", height=128, width=160).save(str(model))
    data = tmp_path / "demo" / "data"
    run_label_job(LabelOptions(model=str(model), input=str(data / "test"), output=str(tmp_path / "untrained-out")))
    untrained, _ = score_masks(data, "test", str(tmp_path / "untrained-out"))
    assert untrained["miou"] < THRESHOLD / 2 < miou

    # The trained model says how it was trained: its recipe is the run folder's recipe.yaml.
    trained = tmp_path / "demo" / "runs" / "demo-unet"
    code, text = run(capsys, "model", "info", str(trained / "model"))
    assert code == 0 and "label map 'street-demo'" in text and "val metrics mIoU" in text
    recipe = (trained / "recipe.yaml").read_text()
    assert (trained / "model" / "recipe.yaml").read_text() == recipe
    assert " ".join(recipe.split()) in text
