"""The synthetic instance set (:mod:`segray.datasets.synthetic`) written and converted for tests."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pytest

from segray import storage
from segray.datasets.formats import ConvertOptions, convert
from segray.datasets.synthetic import ATTRIBUTE, CLASSES, write_synthetic_instances
from segray.labels import LabelMap
from segray.outputs.read import read_instances, read_stats

__all__ = [
    "ATTRIBUTE",
    "CLASSES",
    "check_instance_output",
    "read_ids",
    "write_instance_dataset",
    "write_synthetic_instances",
]


def write_instance_dataset(
    root: str, splits: dict[str, int], size: tuple[int, int] = (64, 64), seed: int = 0, fmt: str = "coco"
) -> str:
    """Sources under ``<root>/src``, converted from ``fmt`` into the canonical layout at ``<root>/data``."""
    src = write_synthetic_instances(storage.join(root, "src"), splits, size, seed)
    options = ConvertOptions(attribute=ATTRIBUTE) if fmt == "via-instances" else ConvertOptions()
    dst = storage.join(root, "data")
    convert(fmt, src["via" if fmt == "via-instances" else "coco"], dst, options)
    return dst


def read_ids(output: str, mask_path: str) -> np.ndarray:
    data = storage.read_bytes(storage.join(output, mask_path))
    ids = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert ids is not None and ids.dtype == np.uint16 and ids.ndim == 2, mask_path
    return ids


def check_instance_output(
    output: str, model_id: str, frames: int, pixel_size: float | None = None
) -> tuple[pa.Table, pa.Table]:
    """Every frame of an instance model's output (local or S3): PNG ids == table rows, pixel areas
    equal, counts and px per class equal the table's. Returns (stats, instances)."""
    stats = read_stats(output, model_id)
    inst = read_instances(output, model_id)
    names = LabelMap.from_json(stats.schema.metadata[b"segray.label_map"].decode()).names
    assert stats.num_rows == frames
    assert set(inst.column("relative_path").to_pylist()) <= set(stats.column("relative_path").to_pylist())
    for row in stats.to_pylist():
        ids = read_ids(output, row["mask_path"])
        assert ids.shape == (row["height"], row["width"])
        rows = [r for r in inst.to_pylist() if r["relative_path"] == row["relative_path"]]
        present = np.unique(ids[ids > 0]).tolist()
        assert present == [r["instance_id"] for r in rows] == list(range(1, len(rows) + 1))
        pixels = np.bincount(ids.ravel(), minlength=len(rows) + 1)
        assert [r["area_px"] for r in rows] == pixels[1:].tolist()
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)  # id 1 = highest score
        for r in rows:
            if pixel_size is None:
                assert r["area_m2"] is None
            else:
                assert r["area_m2"] == pytest.approx(r["area_px"] * pixel_size**2)
            assert 0 <= r["x0"] <= r["x1"] <= row["width"] + 1e-3 and 0 <= r["y0"] <= r["y1"] <= row["height"] + 1e-3
            assert r["class"] == names[r["class_id"]]
        for c, name in enumerate(names):
            of_class = [r for r in rows if r["class_id"] == c]
            assert row[f"count_{name}"] == len(of_class)
            assert row[f"px_{name}"] == sum(r["area_px"] for r in of_class)
            if pixel_size is not None:
                assert row[f"area_m2_{name}"] == pytest.approx(row[f"px_{name}"] * pixel_size**2)
        covered = int((ids > 0).sum())
        assert sum(row[f"px_{n}"] for n in names) == covered
    return stats, inst
