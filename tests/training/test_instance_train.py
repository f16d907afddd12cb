"""Mask R-CNN training on Ray Train (2 CPU workers, checkpoints on SeaweedFS S3, resume by rerun,
export) and its evaluation with the COCO protocol."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.common import BUCKET
from helpers.instance_data import CLASSES, check_instance_output, write_instance_dataset

from segray import storage
from segray.cli import main
from segray.datasets.instances import list_frames, read_frame
from segray.instance_metrics import InstanceScorer
from segray.models.artifact import ModelArtifact
from segray.recipe import load_config
from segray.training import checkpoint as ckpt_io
from segray.training.job import run_training

SIZE = 64


@pytest.fixture(scope="module")
def instances_s3(s3) -> str:  # noqa: ANN001 - the session's SeaweedFS fixture
    return write_instance_dataset(f"s3://{BUCKET}/inst-{uuid.uuid4().hex[:8]}", {"train": 8, "val": 4}, (SIZE, SIZE))


def recipe(data: str, storage_uri: str, *extra: str) -> list[str]:
    """A tiny 2-worker CPU recipe sharing the test Ray's 2 CPUs (0.5 CPU, 1 thread per worker)."""
    return [
        "name=tiny-maskrcnn",
        f"data.root={data}",
        "model.arch=maskrcnn",
        "model.encoder=mobilenet_v3_small_fpn",
        f"model.height={SIZE}",
        f"model.width={SIZE}",
        f"run.storage={storage_uri}",
        "run.epochs=2",
        "run.batch_size=2",
        "run.val_batch_size=2",
        "run.num_workers=2",
        "run.cpus_per_worker=0.5",
        "run.torch_threads=1",
        "run.max_failures=0",
        "optim.warmup_epochs=0.5",
        *extra,
    ]


def checkpoint_dirs(run_uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(run_uri)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)) if i.base_name.startswith("epoch-"))


@pytest.mark.usefixtures("ray_session")
def test_maskrcnn_trains_on_s3_resumes_by_rerun_exports_and_evaluates(
    instances_s3: str, s3_prefix: str, tmp_path, capsys: pytest.CaptureFixture
) -> None:  # noqa: ANN001
    # Epoch 1 is not validated (val_every=2): its NaN score is stored by Ray Train and restored by the rerun.
    overrides = recipe(instances_s3, s3_prefix, "run.val_every=2")
    first = run_training(load_config(None, [*overrides, "run.max_epochs_this_run=1"]))
    assert (first.completed, first.epochs_done, first.artifact, first.task) == (False, 1, None, "instance")
    run = load_config(None, overrides).run_uri
    assert run.startswith("s3://") and checkpoint_dirs(run) == ["epoch-0001"]
    files = sorted(p.rsplit("/", 1)[-1] for p in storage.list_files(storage.join(run, "epoch-0001")))
    assert files == sorted([ckpt_io.MODEL, ckpt_io.OPTIMIZER, ckpt_io.STATE])  # safetensors + JSON, no pickle
    assert not storage.exists(storage.join(run, "model", "segray.json"))

    second = run_training(load_config(None, overrides))
    assert second.completed and second.epochs_done == 2
    # Continued, not restarted: epoch 1's record is the first run's, and only epoch 2 was added.
    assert second.history[0] == first.history[0] and [h["epoch"] for h in second.history] == [1, 2]
    s1 = json.loads(storage.read_bytes(storage.join(run, "epoch-0001", ckpt_io.STATE)))
    s2 = json.loads(storage.read_bytes(storage.join(run, "epoch-0002", ckpt_io.STATE)))
    assert s2["step"] == 2 * s1["step"] == 2 * 2  # 8 frames / 2 workers / batch 2, schedule carried on
    assert storage.read_bytes(storage.join(run, "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"

    art = ModelArtifact.load(second.artifact)
    assert (art.task, art.arch, art.label_map.names) == ("instance", "maskrcnn", list(CLASSES))
    assert art.metrics["epoch"] == second.best_epoch and 0 <= art.metrics["val_mask_ap50"] <= 1
    assert set(art.metrics["val_ap_per_class"]) == set(CLASSES)

    out = str(tmp_path / "eval")
    assert (
        main(["evaluate", "--model", second.artifact, "--data", instances_s3, "--split", "val", "--output", out]) == 0
    )
    printed = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert printed["ap50"] == m["ap50"] and m["frames"] == 4 and m["task"] == "instance"
    for v in (m["ap"], m["ap50"], m["ap75"], m["exact_count_fraction"]):
        assert 0 <= v <= 1
    counts = pq.read_table(tmp_path / "eval" / "counts.parquet").to_pylist()
    assert len(counts) == 4 * len(CLASSES)
    frames = list_frames(instances_s3, "val")
    true = [int(n) for f in frames for n in read_frame(f, len(CLASSES))[1].counts(len(CLASSES))]
    assert [r["true_count"] for r in counts] == true
    assert sum(r["predicted_count"] for r in counts) == m["predicted_instances"]

    # The trained artifact labels through the labelling job: instance PNGs, the instances table and
    # count_ columns agree frame by frame (a low --min-score: two epochs on 8 frames score low).
    labels = str(tmp_path / "labels")
    argv = ["label", "--model", second.artifact, "--input", storage.join(instances_s3, "val"), "--output", labels]
    assert main([*argv, "--min-score", "0.05", "--cpus-per-actor", "0.5"]) == 0
    _, inst = check_instance_output(labels, f"{art.model_id}+min0.05", frames=4)
    assert inst.num_rows > 0


def test_instance_recipe_refusals_name_the_problem(instances_s3: str, tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=r"model.encoder 'resnet34': a maskrcnn backbone is one of"):
        run_training(load_config(None, recipe(instances_s3, str(tmp_path), "model.encoder=resnet34")))
    with pytest.raises(ValueError, match="instance training runs on Ray only"):
        run_training(load_config(None, recipe(instances_s3, str(tmp_path))), with_ray=False)
    semantic = tmp_path / "semantic"
    (semantic / "train").mkdir(parents=True)
    classes = [{"id": i, "name": n, "color": [i, i, i]} for i, n in enumerate(CLASSES)]
    (semantic / "labels.json").write_text(json.dumps({"name": "x", "classes": classes}))
    from segray.datasets.instances import InstanceDataError

    with pytest.raises(InstanceDataError, match=r"semantic/train: no frames"):
        run_training(load_config(None, recipe(str(semantic), str(tmp_path))))


def test_scorer_follows_the_coco_protocol_and_counts_per_frame(instances_s3: str) -> None:
    frames = [read_frame(f, 2)[1] for f in list_frames(instances_s3, "train")]
    perfect, partial, empty = (
        InstanceScorer(list(CLASSES)),
        InstanceScorer(list(CLASSES)),
        InstanceScorer(list(CLASSES)),
    )
    dropped = 0
    for i, inst in enumerate(frames):
        ones = np.ones(len(inst.classes))
        perfect.add(inst.masks, inst.classes, inst.crowd, inst.masks, inst.classes, ones)
        # Odd frames: the last instance missed, and a low-score false positive (below the count threshold).
        keep = len(inst.classes) - (i % 2)
        dropped += i % 2
        fp = np.roll(inst.masks[:1], 7, axis=2)
        partial.add(inst.masks, inst.classes, inst.crowd, np.concatenate([inst.masks[:keep], fp]),
                    np.concatenate([inst.classes[:keep], inst.classes[:1]]), np.append(ones[:keep], 0.1))  # fmt: skip
        empty.add(inst.masks, inst.classes, inst.crowd, inst.masks[:0], inst.classes[:0], ones[:0])
    p = perfect.result()
    assert (p["ap"], p["ap50"], p["ap75"], p["exact_count_fraction"], p["count_mae"]) == (1.0, 1.0, 1.0, 1.0, 0.0)
    q = partial.result()
    assert 0 < q["ap50"] < 1 and q["exact_count_fraction"] == pytest.approx(1 - dropped / len(frames))
    assert q["predicted_instances"] == q["true_instances"] - dropped  # the 0.1-score detections are not counted
    e = empty.result()
    assert (e["ap"], e["ap50"], e["exact_count_fraction"]) == (0.0, 0.0, 0.0)
    # Merging per-worker scorers gives the same figures as one scorer over all frames.
    half = [InstanceScorer(list(CLASSES)), InstanceScorer(list(CLASSES))]
    for i, inst in enumerate(frames):
        half[i % 2].add(
            inst.masks, inst.classes, inst.crowd, inst.masks[:-1], inst.classes[:-1], np.ones(len(inst.classes) - 1)
        )
    whole = InstanceScorer(list(CLASSES))
    for i in (*range(0, len(frames), 2), *range(1, len(frames), 2)):
        inst = frames[i]
        whole.add(
            inst.masks, inst.classes, inst.crowd, inst.masks[:-1], inst.classes[:-1], np.ones(len(inst.classes) - 1)
        )
    merged = InstanceScorer.merged(list(CLASSES), [h.state() for h in half]).result()
    assert merged == whole.result() and not math.isnan(merged["ap"])
