"""Every task in ``TASKS`` honours the interface the shared training, labelling and writing code relies on."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers.train_data import SHAPES

from segray.models import ARCHITECTURE_TASKS, task_of
from segray.tasks import TASKS, Task, task_named, task_of_arch

#: Labelling options as ``LabelOptions`` leaves them, none of a task's own given.
PLAIN = {"tile_window": None, "tile_overlap": None, "decode": "cpu", "min_score": None, "batch_size": 8,
         "max_pixels": 1 << 28, "tile_above": 2.0}  # fmt: skip


@pytest.fixture(params=sorted(TASKS), ids=str)
def task(request: pytest.FixtureRequest) -> Task:
    return TASKS[request.param]


def test_the_registry_names_each_task_by_its_name(task: Task) -> None:
    assert task_named(task.name) is task
    assert task.score_key in task.history_keys and task.score_key.startswith("val_")
    assert task.score({task.score_key: 0.25}) == 0.25
    assert task.score({task.score_key: float("nan")}) == task.score({task.score_key: None}) == float("-inf")
    assert task.score({}) == float("-inf")


def test_every_architecture_has_a_task() -> None:
    assert set(ARCHITECTURE_TASKS.values()) == set(TASKS)
    assert task_of_arch("unet").name == "semantic" and task_of_arch("maskrcnn").name == "instance"
    with pytest.raises(ValueError, match=r"unknown architecture 'unet2'"):
        task_of("unet2")
    with pytest.raises(ValueError, match=r"unknown task 'panoptic'; choose from \['instance', 'semantic'\]"):
        task_named("panoptic")


def test_the_predictor_takes_what_the_task_hands_it(task: Task) -> None:
    """The labelling job builds the actor with the shared arguments plus ``predictor_kwargs``: every one
    must be a parameter of the task's predictor, or the pool fails on its first actor."""
    predictor = task.predictor()
    params = inspect.signature(predictor.__init__).parameters
    given = {"model_uri", "torch_threads", "device", *task.predictor_kwargs(PLAIN)}
    assert given <= set(params), given - set(params)
    assert "__call__" in vars(predictor)  # a Ray Data callable class labels a batch in __call__


def test_options_of_the_other_task_are_refused_by_flag(task: Task) -> None:
    other = {"semantic": {"min_score": 0.3}, "instance": {"tile_window": (64, 64), "decode": "gpu"}}[task.name]
    with pytest.raises(ValueError, match=r"/m/tiny") as e:
        task.check_label_options("/m/tiny", {**PLAIN, **other})
    flags = {"semantic": ["--min-score"], "instance": ["--window", "--decode gpu"]}[task.name]
    assert all(f in str(e.value) for f in flags)
    filled = task.check_label_options("/m/tiny", PLAIN)
    assert set(filled) <= set(PLAIN)  # only options the run then records as used
    assert task.labelled_by("m@abc", {**PLAIN, **filled}).startswith("m@abc")


def test_a_mask_file_is_a_png_of_the_frame_size(task: Task) -> None:
    import io

    from PIL import Image

    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:5] = 1
    png = task.encode_mask(mask, SHAPES)
    back = np.array(Image.open(io.BytesIO(png)))  # palette indices, or 16-bit instance ids
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and back.shape == (5, 7)
    assert np.array_equal(back, mask)
