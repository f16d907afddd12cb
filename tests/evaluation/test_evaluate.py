"""Evaluation and comparison of artifacts on a labelled split (folder and S3), checked against the
labelling job's own masks and against counts made here."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.common import ROOT, TINY_ENCODER
from helpers.train_data import SHAPES, write_shapes_dataset
from PIL import Image

from segray import storage
from segray.datasets.pairs import PairSource
from segray.evaluation.compare import model_cost
from segray.evaluation.evaluate import EvalOptions, evaluate
from segray.models.artifact import init_artifact


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes_dataset(str(root), {"val": 5}, size=(48, 80), seed=3)


@pytest.fixture(scope="module")
def shapes_models(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = []
    for arch in ("unet", "pspnet"):
        path = str(tmp_path_factory.mktemp("models") / arch)
        init_artifact(arch, TINY_ENCODER, SHAPES, name=f"shapes-{arch}", height=64, width=64, seed=1).save(path)
        out.append(path)
    return out


def gt_masks(root: str) -> dict[str, np.ndarray]:
    folder = Path(root, "valannot")
    return {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))}


@pytest.mark.usefixtures("ray_session")
def test_evaluate_matches_the_labelling_jobs_masks(
    shapes_dir: str, shapes_models: list[str], s3_prefix: str, tmp_path: Path
) -> None:
    model = shapes_models[0]
    out = storage.join(s3_prefix, "eval")
    r = evaluate(EvalOptions(model=model, data=PairSource(root=shapes_dir, split="val"), output=out, overlays=3))
    # The same model through the labelling job; one confusion matrix from its masks, counted here.
    from segray.labelling.job import LabelOptions, run_label_job

    labels = tmp_path / "labels"
    run_label_job(LabelOptions(model=model, input=str(Path(shapes_dir, "val")), output=str(labels)))
    cm = np.zeros((3, 3), dtype=np.int64)
    valid = 0
    for name, gt in gt_masks(shapes_dir).items():
        pred = np.asarray(Image.open(labels / "masks" / f"{name}.png"))  # masks/<relative path>.png
        keep = gt != 255
        valid += int(keep.sum())
        np.add.at(cm, (gt[keep].astype(int), pred[keep].astype(int)), 1)
    assert r.confusion.tolist() == cm.tolist()
    assert r.scores["pixels"] == valid < 5 * 48 * 80  # ignored rim pixels excluded

    m = json.loads(storage.read_bytes(storage.join(out, "metrics.json")))
    assert m["frames"] == 5 and m["confusion"] == cm.tolist() and m["miou"] == pytest.approx(r.scores["miou"])
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, "metrics.parquet"))))
    assert table.column("class").to_pylist() == SHAPES.names
    assert table.column("gt_pixels").to_pylist() == cm.sum(axis=1).tolist()
    assert table.column("iou").to_pylist() == pytest.approx(
        [m["per_class"][n]["iou"] for n in SHAPES.names], nan_ok=True
    )
    assert storage.read_bytes(storage.join(out, "confusion.png"))[:4] == b"\x89PNG"
    overlays = storage.list_files(storage.join(out, "overlays"))
    assert len(overlays) == 3
    strip = cv2.imdecode(np.frombuffer(storage.read_bytes(f"s3://{overlays[0]}"), np.uint8), cv2.IMREAD_COLOR)
    assert strip.shape == (48, 3 * 80, 3)  # frame | ground truth | prediction


def test_filters_and_refusals(shapes_dir: str, shapes_models: list[str], tmp_path: Path, tiny_model: str) -> None:
    r = evaluate(
        EvalOptions(
            model=shapes_models[0], data=PairSource(root=shapes_dir, split="val", include_prefixes=["seq1"]), overlays=0
        )
    )
    assert r.frames == 2  # seq1_0001, seq1_0003: a held-out "sequence"
    with pytest.raises(ValueError, match=r"predicts classes \['sky'.*labelled with \['background'"):
        evaluate(EvalOptions(model=tiny_model, data=PairSource(root=shapes_dir, split="val")))
    with pytest.raises(ValueError, match="no .* pairs left"):
        evaluate(
            EvalOptions(
                model=shapes_models[0], data=PairSource(root=shapes_dir, split="val", include_prefixes=["nope"])
            )
        )


def test_compare_writes_a_markdown_table(shapes_dir: str, shapes_models: list[str], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "compare_models.py"),
            "--models",
            *shapes_models,
            "--data",
            shapes_dir,
            "--output",
            str(out),
            "--torch-threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (out / "comparison.md").read_text()
    assert md.strip() in proc.stdout
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["model_id"].split("@")[0] for r in rows] == ["shapes-unet", "shapes-pspnet"]
    for r, m in zip(rows, shapes_models, strict=True):
        cost = model_cost(m)
        assert r["params"] == cost.params > 0 and r["gflops_per_frame"] == pytest.approx(cost.gflops)
        assert r["frames_per_s"] > 0 and f"`{r['model_id']}`" in md
    assert rows[0]["gflops_per_frame"] > rows[1]["gflops_per_frame"]  # UNet decodes at full size, PSPNet at 1/8
    for name in SHAPES.names:
        assert f"| {name} |" in md
    assert (out / "1-unet" / "metrics.json").exists() and (out / "2-pspnet" / "metrics.json").exists()


def test_evaluate_cli_refuses_missing_data(shapes_models: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "evaluate.py"),
            "--model",
            shapes_models[0],
            "--data",
            str(tmp_path / "nowhere"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "nowhere/val" in proc.stderr, proc.stderr[-2000:]
