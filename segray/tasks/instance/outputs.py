"""An instance model's output rows: one ``instances/`` row per object (``INSTANCES_SCHEMA``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa

from segray.labels import LabelMap
from segray.outputs.schema import INSTANCES_SCHEMA


def instances_table(
    batch: Mapping[str, Any], ok: list[int], lm: LabelMap, model_id: str, run_id: str, now: datetime
) -> pa.Table:
    """The ``instances`` column's records of frames ``ok`` -> one row per instance (INSTANCES_SCHEMA)."""

    cols: dict[str, list[Any]] = {name: [] for name in INSTANCES_SCHEMA.names}
    for i in ok:
        records = json.loads(str(batch["instances"][i]))
        px_area = float(batch["pixel_area_m2"][i]) if "pixel_area_m2" in batch else float("nan")
        for k, (cls, score, x0, y0, x1, y1, px) in enumerate(records):
            cols["relative_path"].append(str(batch["relative_path"][i]))
            cols["instance_id"].append(k + 1)
            cols["class_id"].append(cls)
            cols["class"].append(lm.names[cls])
            cols["score"].append(score)
            for name, v in zip(("x0", "y0", "x1", "y1"), (x0, y0, x1, y1), strict=True):
                cols[name].append(v)
            cols["area_px"].append(px)
            cols["area_m2"].append(None if px_area != px_area else px * px_area)
    n = len(cols["relative_path"])
    cols["model_id"], cols["run_id"], cols["processed_at"] = [model_id] * n, [run_id] * n, [now] * n
    return pa.table(cols, schema=INSTANCES_SCHEMA)
