"""Every task in ``TASKS`` honours the interface the shared training, labelling and writing code relies on."""

from __future__ import annotations

import inspect
from pathlib import Path

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


# --- evaluation: segray evaluate and compare ask the task ----------------------------------------------

EVALUATION_METHODS = ("eval_data", "eval_predictor", "eval_scorer", "eval_report", "eval_summary", "compare_row",
                      "comparison")  # fmt: skip


def test_every_task_implements_the_evaluation_methods(task: Task) -> None:
    assert set(EVALUATION_METHODS) <= Task.__abstractmethods__
    for name in EVALUATION_METHODS:
        assert getattr(type(task), name) is not getattr(Task, name), name
    assert "metrics.json" in task.eval_files


def scored_split(task: Task, root: Path) -> tuple[str, str]:
    """A tiny untrained artifact of ``task`` and a labelled split of its data layout: (model, data root)."""
    from helpers.common import TINY_ENCODER
    from helpers.instance_data import write_instance_dataset
    from helpers.train_data import write_shapes_dataset

    from segray.datasets.instances import instance_label_map
    from segray.models.artifact import init_artifact

    if task.name == "semantic":
        data = write_shapes_dataset(str(root / "data"), {"val": 3}, size=(32, 48), seed=1)
        art = init_artifact("unet", TINY_ENCODER, SHAPES, name="tiny", height=32, width=32, seed=1)
    else:
        data = write_instance_dataset(str(root / "set"), {"val": 3}, size=(48, 48))
        art = init_artifact("maskrcnn", "mobilenet_v3_small_fpn", instance_label_map(data), name="tiny", height=64,
                            width=64)  # fmt: skip
    art.save(str(root / "model"))
    return str(root / "model"), data


def test_the_one_evaluation_writes_what_the_task_names(task: Task, tmp_path: Path) -> None:
    """Evaluate and compare a model of each task: its report files, its per-class table and rows."""
    import json

    import pyarrow.parquet as pq

    from segray.datasets.pairs import PairSource
    from segray.evaluation.compare import compare
    from segray.evaluation.evaluate import EvalOptions, evaluate
    from segray.models.artifact import read_info

    model, data = scored_split(task, tmp_path)
    info = read_info(model)
    assert info.task == task.name
    out = tmp_path / "eval"
    source = PairSource(root=data, split="val")
    r = evaluate(EvalOptions(model=model, data=source, output=str(out), overlays=2, torch_threads=1))
    for name in task.eval_files:
        assert (out / name).exists(), name
    assert set(p.name for p in out.iterdir()) == {f.rstrip("/") for f in task.eval_files}
    if task.eval_overlays:
        assert len(list((out / "overlays").iterdir())) == 2
    assert pq.read_table(out / "metrics.parquet").column("class").to_pylist() == info.label_map.names
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(r.to_dict()) and metrics["model_id"] == info.model_id
    head, *per_class = task.eval_summary(r)
    assert json.loads(head)["model_id"] == info.model_id and len(per_class) == info.label_map.num_classes

    md, rows = compare([model], EvalOptions(model="", data=source, overlays=0, torch_threads=1))
    assert [row["model_id"] for row in rows] == [info.model_id]
    table = task.comparison([r], rows)
    assert md.startswith(table.intro) and "| " + " | ".join(c.header for c in table.columns) + " |" in md
    assert list(rows[0][table.per_class]) == info.label_map.names
    assert all(f"| {name} |" in md for name in info.label_map.names)
