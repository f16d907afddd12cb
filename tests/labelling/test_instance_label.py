"""Labelling with an instance (Mask R-CNN) artifact on the session's Ray: instance-id PNGs, the
instances table and ``count_<class>`` stats columns agree (ids in a PNG = rows in the table, pixel
areas equal), locally and on S3; ``--min-score`` filters and is part of the run's identity; reruns
count each frame once; the land-cover export sums counts.

The model is an untrained tiny Mask R-CNN whose class head is set from its own box-head features on
a few frames (their main direction of variation), so that it detects objects with varied scores
(a real model needs far more training than a test can afford on two cores); its mask head's bias
makes each detection's mask cover its box.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from helpers.instance_data import check_instance_output

from segray import storage
from segray.datasets.synthetic import CLASSES, make_frame
from segray.labelling.job import LabelOptions, preflight, run_label_job
from segray.labels import LabelClass, LabelMap
from segray.models.artifact import ModelArtifact, init_artifact, read_info
from segray.models.maskrcnn import INSTANCE_ARCH
from segray.outputs.read import read_instances, read_stats
from segray.tasks.instance.predict import paint_instances

pytestmark = pytest.mark.usefixtures("ray_session")

SIZE = 64
LABELS = LabelMap("shapes", tuple(LabelClass(i, n, (60 + 90 * i, 120, 200 - 90 * i)) for i, n in enumerate(CLASSES)))
#: (height, width) of the frames labelled: model-sized, other sizes (masks and boxes mapped back).
FRAME_SIZES = [(64, 64), (48, 80), (96, 64), (64, 64), (40, 40)]
#: A frame above --tile-above (2) times the model input: refused for instance models.
LARGE = (160, 160)
PIXEL_SIZE = 0.1


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img, _ = make_frame(rng, h, w)
    return img


@pytest.fixture(scope="session")
def detector(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Mask R-CNN artifact that finds objects with scores spread over (0, 1) (module docstring)."""
    art = init_artifact(
        INSTANCE_ARCH,
        "mobilenet_v3_small_fpn",
        LABELS,
        name="shapes",
        height=SIZE,
        width=SIZE,
        model_kwargs={"detections_per_img": 12},
    )
    heads = art.model.roi_heads  # type: ignore[union-attr]
    feats: list[torch.Tensor] = []
    hook = heads.box_head.register_forward_hook(lambda _m, _i, o: feats.append(o))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        art.model([torch.from_numpy(_rgb(rng, SIZE, SIZE)).permute(2, 0, 1).float() / 255 for _ in range(4)])
    hook.remove()
    f = torch.cat(feats)
    mu = f.mean(0)
    direction = torch.pca_lowrank(f - mu, q=2)[2][:, 0]
    k = 2.5 / float(((f - mu) @ direction).std())
    with torch.no_grad():
        cls = heads.box_predictor.cls_score
        cls.weight.zero_()
        cls.weight[1], cls.weight[2] = k * direction, -k * direction
        cls.bias.copy_(torch.tensor([1.0, -k * float(mu @ direction), k * float(mu @ direction)]))
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()
        heads.mask_predictor.mask_fcn_logits.bias.fill_(1.0)
    path = tmp_path_factory.mktemp("instance-models") / "shapes"
    art.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("instance-frames")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([*FRAME_SIZES, LARGE]):
        p = root / f"seq{i % 2}" / f"f{i:02d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(_rgb(rng, h, w), cv2.COLOR_RGB2BGR))
    return root


def large_name() -> str:
    return f"seq{len(FRAME_SIZES) % 2}/f{len(FRAME_SIZES):02d}.png"


def opts(model: str, input_: str, output: str, **kw: object) -> LabelOptions:
    return LabelOptions(model=model, input=input_, output=output, batch_size=4, pixel_size=PIXEL_SIZE, **kw)  # type: ignore[arg-type]


def check_consistent(output: str, model_id: str) -> tuple[pa.Table, pa.Table]:
    return check_instance_output(output, model_id, len(FRAME_SIZES), PIXEL_SIZE)


def test_labels_instances_locally(detector: str, frames: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    s = run_label_job(opts(detector, str(frames), out))
    assert s.model_id == f"{read_info(detector).model_id}+min0.5"
    assert (s.frames_in, s.labelled, s.failed) == (len(FRAME_SIZES) + 1, len(FRAME_SIZES), 1)
    stats, inst = check_consistent(out, s.model_id)
    assert inst.num_rows > len(FRAME_SIZES)  # the model found objects, in every class
    assert set(inst.column("class").to_pylist()) == set(LABELS.names)
    assert min(inst.column("score").to_pylist()) >= 0.5
    record = json.loads(Path(out, "_runs", f"{s.run_id}.json").read_text())
    assert record["options"]["min_score"] == 0.5 and record["model_id"] == s.model_id
    errors = read_errors(out)
    assert errors["relative_path"] == [large_name()] and errors["stage"] == ["predict"]
    assert "instance models do not label in windows" in errors["error"][0]
    assert "raise --tile-above" in errors["error"][0]
    # A rerun labels nothing and counts nothing twice.
    again = run_label_job(opts(detector, str(frames), out))
    assert (again.labelled, again.skipped_done) == (0, len(FRAME_SIZES))
    assert read_instances(out, s.model_id).equals(inst)


def test_cli_label(detector: str, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segray import cli

    out = str(tmp_path / "out")
    argv = ["label", "--model", detector, "--input", str(frames), "--output", out, "--min-score", "0.7"]
    assert cli.main([*argv, "--batch-size", "4", "--print-table"]) == 0
    text = capsys.readouterr().out
    assert f"{len(FRAME_SIZES)} labelled, 1 failed" in text
    _, inst = check_instance_output(out, f"{read_info(detector).model_id}+min0.7", len(FRAME_SIZES))
    assert inst.num_rows and min(inst.column("score").to_pylist()) >= 0.7
    # The area table ends with an instances column: each class's rows in the instances table.
    table = text[text.index("class ") :].splitlines()
    assert table[0].split() == ["class", "pixels", "share", "instances"]
    printed = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in table[2 : 2 + len(LABELS.names)]}
    classes = inst.column("class").to_pylist()
    assert printed == {n: classes.count(n) for n in LABELS.names}


def read_errors(output: str) -> dict[str, list[object]]:
    parts = sorted(Path(output, "errors").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]).to_pydict()


def test_labels_instances_on_s3(detector: str, frames: Path, s3_prefix: str) -> None:
    model = f"{s3_prefix}/models/shapes"
    ModelArtifact.load(detector).save(model)
    src = f"{s3_prefix}/frames"
    for p in frames.rglob("*.png"):
        storage.write_bytes(f"{src}/{p.relative_to(frames).as_posix()}", p.read_bytes())
    out = f"{s3_prefix}/labels"
    s = run_label_job(opts(model, src, out, min_score=0.8))
    assert s.model_id.endswith("+min0.8") and s.labelled == len(FRAME_SIZES)
    _, inst = check_consistent(out, s.model_id)
    assert inst.num_rows and min(inst.column("score").to_pylist()) >= 0.8


def test_min_score_filters_monotonically_and_is_part_of_the_identity(
    detector: str, frames: Path, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    totals = []
    for score in (0.3, 0.6, 0.9):
        s = run_label_job(opts(detector, str(frames), out, min_score=score))
        # Another threshold is another model id: every frame is labelled again, none skipped.
        assert (s.labelled, s.skipped_done) == (len(FRAME_SIZES), 0)
        stats = read_stats(out, s.model_id)
        per_frame = {r["relative_path"]: sum(r[f"count_{n}"] for n in LABELS.names) for r in stats.to_pylist()}
        totals.append(per_frame)
        assert read_instances(out, s.model_id).num_rows == sum(per_frame.values())
    for low, high in zip(totals, totals[1:], strict=False):
        assert all(high[f] <= low[f] for f in low), (low, high)
    assert sum(totals[-1].values()) < sum(totals[0].values())
    # The masks on disk are the latest run's: consistent with its rows.
    check_consistent(out, s.model_id)


def test_interrupted_run_does_not_double_count_nor_does_compaction(
    detector: str, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that wrote instances but died before its stats rows: the rerun labels those frames
    again, and the first run's instance rows no longer count. ``segray compact`` then keeps the
    counted rows only, once each, and readers and reruns see the same output."""
    from segray import cli

    out = tmp_path / "out"
    s = run_label_job(opts(detector, str(frames), str(out)))
    before = read_instances(str(out), s.model_id)
    for part in (out / "stats").glob("*.parquet"):
        part.unlink()  # as if the run had died after writing masks and instances
    again = run_label_job(opts(detector, str(frames), str(out)))
    assert again.labelled == len(FRAME_SIZES)
    raw = sum(pq.read_table(p).num_rows for p in (out / "instances").glob("*.parquet"))
    after = read_instances(str(out), s.model_id)
    assert raw == 2 * before.num_rows  # both runs' rows are on disk...
    assert after.num_rows == before.num_rows  # ...and each frame's instances count once
    assert set(after.column("run_id").to_pylist()) == {again.run_id}
    check_consistent(str(out), s.model_id)
    # A retried write's copy of a part, also on disk: compaction keeps one of each row.
    part = sorted((out / "instances").glob("*.parquet"))[0]
    copied = pq.read_table(part).num_rows
    part.with_name("copy-" + part.name).write_bytes(part.read_bytes())
    assert read_instances(str(out), s.model_id).equals(after)
    capsys.readouterr()
    assert cli.main(["compact", str(out)]) == 0
    assert f"{raw + copied} rows -> 1 files, {after.num_rows} rows" in capsys.readouterr().out
    files = sorted((out / "instances").glob("*.parquet"))
    assert [f.name.startswith("compact-") for f in files] == [True]
    assert pq.read_table(files[0]).num_rows == after.num_rows
    assert read_instances(str(out), s.model_id).equals(after)
    check_consistent(str(out), s.model_id)
    rerun = run_label_job(opts(detector, str(frames), str(out)))
    assert (rerun.labelled, rerun.skipped_done) == (0, len(FRAME_SIZES))


def test_landcover_export_sums_counts(detector: str, frames: Path, tmp_path: Path) -> None:
    from segray.landcover.export import run_export

    out = str(tmp_path / "out")
    s = run_label_job(opts(detector, str(frames), out, tags={"region": "north", "date": "2026-11-30"}))
    stats = read_stats(out, s.model_id)
    run_export([out], str(tmp_path / "lc"), by=("region", "date"))
    totals = pq.read_table(tmp_path / "lc" / "totals" / "date=2026-11-30" / "part-0.parquet").to_pylist()
    assert len(totals) == 1
    row = totals[0]
    for n in LABELS.names:
        assert row[f"count_{n}"] == pc.sum(stats.column(f"count_{n}")).as_py()
        assert row[f"px_{n}"] == pc.sum(stats.column(f"px_{n}")).as_py()
    assert row["count_total"] == sum(row[f"count_{n}"] for n in LABELS.names) > 0
    assert (row["frames"], row["frames_failed"]) == (len(FRAME_SIZES), 1)


# --- options that do not apply, and the painting rule ---------------------------------------------


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"tile_window": (64, 64)}, "--window"), ({"tile_overlap": 8}, "--overlap"), ({"decode": "gpu"}, "--decode gpu")],
)
def test_semantic_only_options_refused(detector: str, frames: Path, tmp_path: Path, kw: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"is an instance model: {named} apply to semantic models only"):
        preflight(opts(detector, str(frames), str(tmp_path / "o"), **kw))
    assert not (tmp_path / "o").exists()


def test_min_score_refused_for_semantic_models(tiny_model: str, frames: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--min-score applies to instance models; .* is a semantic model"):
        preflight(opts(tiny_model, str(frames), str(tmp_path / "o"), min_score=0.5))


@pytest.mark.parametrize("score", [-0.1, 1.5])
def test_min_score_range(detector: str, score: float) -> None:
    with pytest.raises(ValueError, match=f"min_score must be within \\[0, 1\\], got {score}"):
        LabelOptions(model=detector, input=".", output=".", min_score=score)


def box_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[0, y0:y1, x0:x1] = 0.9
    return m


def test_painting_higher_scores_win_and_ids_have_no_gaps() -> None:
    masks = torch.stack(
        [
            box_mask(8, 8, 0, 4, 0, 4),  # score 0.9: id 1
            box_mask(8, 8, 1, 3, 1, 3),  # 0.8: entirely under the first: dropped
            box_mask(8, 8, 2, 8, 2, 8),  # 0.7: overlaps the first, which keeps the overlap: id 2
            box_mask(8, 8, 0, 0, 0, 0),  # 0.6: an empty mask: dropped
        ]
    )
    ids, kept, pixels = paint_instances(masks, torch.tensor([0.9, 0.8, 0.7, 0.6]), 8, 8)
    assert kept.tolist() == [0, 2]
    assert pixels.tolist() == [16, 36 - 4]
    assert ids.dtype == np.uint16 and ids[3, 3] == 1 and ids[7, 7] == 2 and ids[0, 7] == 0
    assert np.bincount(ids.ravel()).tolist() == [64 - 16 - 32, 16, 32]


def test_painting_resizes_to_the_frame() -> None:
    ids, kept, pixels = paint_instances(box_mask(8, 8, 0, 4, 0, 8)[None], torch.tensor([0.9]), 16, 32)
    assert ids.shape == (16, 32) and kept.tolist() == [0]
    assert int(pixels[0]) == int((ids == 1).sum()) == 8 * 32


def test_painting_refuses_unsorted_scores() -> None:
    with pytest.raises(ValueError, match="sorted by decreasing score"):
        paint_instances(torch.zeros(2, 1, 4, 4), torch.tensor([0.5, 0.9]), 4, 4)


# --- compare: instance models get their own table --------------------------------------------------


def test_compare_instance_models(detector: str, tmp_path: Path) -> None:
    from helpers.instance_data import write_instance_dataset

    from segray.datasets.pairs import PairSource
    from segray.evaluation.compare import compare
    from segray.evaluation.evaluate import EvalOptions

    data = write_instance_dataset(str(tmp_path / "set"), {"val": 3})
    other = tmp_path / "other"
    art = ModelArtifact.load(detector)
    art.name = "shapes-copy"
    art.save(str(other))
    out = tmp_path / "cmp"
    md, rows = compare(
        [detector, str(other)], EvalOptions(model=detector, data=PairSource(root=data, split="val"), output=str(out))
    )
    ids = [read_info(detector).model_id, read_info(str(other)).model_id]
    assert [r["model_id"] for r in rows] == ids
    for r in rows:
        assert 0.0 <= r["ap50"] <= 1.0 and r["count_mae"] >= 0 and r["params"] > 0
        assert list(r["ap_per_class"]) == list(LABELS.names)
    # the same weights: the same scores
    assert rows[0]["ap"] == pytest.approx(rows[1]["ap"], nan_ok=True)
    assert "| model | backbone | input | mask AP | AP50 | AP75 | count MAE |" in md
    assert "Mask AP per class (%):" in md and all(f"| {n} |" in md for n in LABELS.names)
    assert "mIoU" not in md
    assert (out / "comparison.md").read_text() == md
    assert json.loads((out / "comparison.json").read_text())[0]["model_id"] == ids[0]


def test_compare_refuses_mixed_tasks(detector: str, tiny_model: str, tmp_path: Path) -> None:
    from segray.datasets.pairs import PairSource
    from segray.evaluation.compare import compare
    from segray.evaluation.evaluate import EvalOptions

    eo = EvalOptions(model=tiny_model, data=PairSource(root=str(tmp_path), split="val"))
    with pytest.raises(ValueError, match=r"\(semantic\), .* \(instance\): semantic and instance models are scored"):
        compare([tiny_model, detector], eo)


def test_semantic_predictor_refuses_instance_models(detector: str) -> None:
    from segray.tasks.semantic.predict import Predictor

    with pytest.raises(ValueError, match="an instance model; this predicts a class per pixel"):
        Predictor(detector)


def test_painting_matches_full_frame_resizing() -> None:
    """Resizing each mask around its own pixels gives what resizing it whole gives."""
    g = torch.Generator().manual_seed(11)
    masks = torch.zeros(4, 1, 16, 16)
    for j, (y, x, s) in enumerate([(2, 3, 5), (6, 6, 8), (0, 0, 16), (12, 1, 3)]):
        masks[j, 0, y : y + s, x : x + s] = torch.rand(min(s, 16 - y), min(s, 16 - x), generator=g)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    for height, width in [(37, 53), (16, 16), (9, 11), (64, 40)]:
        ids, kept, pixels = paint_instances(masks, scores, height, width)
        want = torch.zeros(height, width, dtype=torch.int64)
        for j in range(3, -1, -1):
            up = torch.nn.functional.interpolate(masks[j : j + 1], size=(height, width), mode="bilinear")
            want[up[0, 0] > 0.5] = j + 1
        ranks = np.zeros(5, np.int64)
        ranks[kept + 1] = np.arange(1, len(kept) + 1)
        assert np.array_equal(ids, ranks[want.numpy()]), (height, width)
        assert pixels.tolist() == np.bincount(ids.ravel(), minlength=len(kept) + 1)[1:].tolist()
