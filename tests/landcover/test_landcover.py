"""The land-cover export on a real S3 server and Ray: totals per region and date equal the rows' sums."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers.common import ROOT
from PIL import Image

from segray import storage
from segray.labelling.write import write_outputs
from segray.labels import LabelMap
from segray.landcover.export import run_export

pytestmark = pytest.mark.usefixtures("ray_session")

VINEYARD = LabelMap.from_dict(
    {
        "name": "vineyard",
        "classes": [
            {"id": 0, "name": "vine", "color": [40, 120, 40]},
            {"id": 1, "name": "soil", "color": [150, 110, 70]},
            {"id": 2, "name": "grass", "color": [120, 200, 90]},
        ],
    }
)
REGIONS = ["north", "south"]
DATES = ["2026-05-01", "2026-06-01", "2026-07-01"]


def write_labelled(output: str, model_id: str, seed: int) -> None:
    """Stats and errors parts exactly as labelling jobs write them (write_outputs), several per group."""
    rng = np.random.default_rng(seed)
    for r_i, region in enumerate(REGIONS):
        for d_i, day in enumerate(DATES):
            n = 3 + (r_i + d_i) % 2
            h, w = 16 + d_i, 24
            masks = [
                rng.choice(3, (h, w), p=[0.2 + 0.1 * d_i, 0.5 - 0.1 * d_i, 0.3]).astype(np.uint8) for _ in range(n)
            ]
            errors = ["", "decode: truncated PNG"] + [""] * (n - 2) if (r_i, d_i) == (0, 1) else [""] * n
            area = np.full(n, 0.25 if region == "north" else 0.04)
            if (region, day) == ("south", DATES[2]):
                area[0] = np.nan  # one frame without a pixel size: this group's areas are null
            batch = {
                "uri": np.array([f"s3://x/{region}/{day}/{i}.png" for i in range(n)], dtype=object),
                "relative_path": np.array([f"{region}/{day}/{i}.png" for i in range(n)], dtype=object),
                "error": np.array(errors, dtype=object),
                "error_stage": np.array(["decode" if e else "" for e in errors], dtype=object),
                "mask": np.array(masks + [None], dtype=object)[:n],
                "class_pixels": np.stack([np.bincount(m.ravel(), minlength=3) for m in masks]),
                "width": np.full(n, w, np.int32),
                "height": np.full(n, h, np.int32),
                "mean_confidence": np.full(n, 0.9),
                "pixel_area_m2": area,
                "pixel_size_source": np.array(["option"] * n, dtype=object),
                "region": np.array([region] * n, dtype=object),
                "date": np.array([day] * n, dtype=object),
            }
            write_outputs(batch, output, f"run{seed}", model_id, VINEYARD.to_dict())
    # A region whose only frame failed still appears, with 0 frames and 1 failed.
    failed = {
        "uri": np.array(["s3://x/east/a.png"], dtype=object),
        "relative_path": np.array(["east/a.png"], dtype=object),
        "error": np.array(["read: gone"], dtype=object),
        "error_stage": np.array(["read"], dtype=object),
        "mask": np.array([np.zeros((1, 1), np.uint8)], dtype=object),
        "class_pixels": np.zeros((1, 3), np.int64),
        "width": np.zeros(1, np.int32),
        "height": np.zeros(1, np.int32),
        "mean_confidence": np.full(1, np.nan),
        "region": np.array(["east"], dtype=object),
        "date": np.array([DATES[0]], dtype=object),
    }
    write_outputs(failed, output, f"run{seed}", model_id, VINEYARD.to_dict())


def test_export_totals_equal_the_sum_of_rows(s3_prefix: str) -> None:
    labels = storage.join(s3_prefix, "labels")
    write_labelled(labels, "vine-unet@abc", seed=0)
    out = storage.join(s3_prefix, "landcover")
    s = run_export([labels], out)
    assert (s.model_id, s.groups, s.frames_failed) == ("vine-unet@abc", 7, 2)

    rows = pd.read_parquet(f"{labels}/stats/")
    totals = pd.read_parquet(f"{out}/totals/")  # hive partitions: date comes back as a column
    totals["date"] = totals["date"].astype(str)
    assert sorted(set(totals["date"])) == DATES
    assert {p.rsplit("/", 2)[-2] for p in storage.list_files(storage.join(out, "totals"))} == {
        f"date={d}" for d in DATES
    }
    for (region, day), g in rows.groupby(["region", "date"]):
        t = totals[(totals.region == region) & (totals.date == day)].iloc[0]
        assert t.frames == len(g) and t.model_id == "vine-unet@abc"
        for c in VINEYARD.names:
            assert t[f"px_{c}"] == g[f"px_{c}"].sum()
        assert t.px_total == (g.width * g.height).sum()
        if g.pixel_area_m2.isna().any():
            assert t.frames_without_pixel_size == 1 and t.share_basis == "pixels"
            assert all(pd.isna(t[f"area_m2_{c}"]) for c in VINEYARD.names) and pd.isna(t.area_m2_total)
            assert t.share_vine == pytest.approx(g.px_vine.sum() / t.px_total)
        else:
            assert t.share_basis == "area"
            for c in VINEYARD.names:
                assert t[f"area_m2_{c}"] == pytest.approx(g[f"area_m2_{c}"].sum())
                assert t[f"share_{c}"] == pytest.approx(g[f"area_m2_{c}"].sum() / g.filter(like="area_m2_").sum().sum())
        assert sum(t[f"share_{c}"] for c in VINEYARD.names) == pytest.approx(1.0)
    assert totals.loc[(totals.region == "north") & (totals.date == DATES[1]), "frames_failed"].item() == 1
    east = totals[totals.region == "east"].iloc[0]
    assert (east.frames, east.frames_failed, east.px_total) == (0, 1, 0) and pd.isna(east.share_basis)

    for region in ["north", "south", "east"]:
        with Image.open(io.BytesIO(storage.read_bytes(storage.join(out, "charts", f"{region}.png")))) as im:
            assert im.format == "PNG" and im.width > 300
    assert json.loads(storage.read_bytes(storage.join(out, "_export.json")))["groups"] == 7

    # Rerun over the same stats: same files, nothing stale, nothing doubled.
    run_export([labels], out)
    again = pd.read_parquet(f"{out}/totals/")
    assert len(again) == 7 and again.frames.sum() == len(rows)


def test_export_by_region_only_and_refusals(s3_prefix: str) -> None:
    labels = storage.join(s3_prefix, "labels")
    write_labelled(labels, "m@1", seed=1)
    out = storage.join(s3_prefix, "by-region")
    s = run_export([s3_prefix], out, by=["region"])  # a prefix holding labelling outputs works too
    totals = pd.read_parquet(f"{out}/totals/part-0.parquet")
    assert s.groups == 3 and sorted(totals.region) == ["east", "north", "south"]
    assert totals.frames.sum() == len(pd.read_parquet(f"{labels}/stats/"))

    with pytest.raises(ValueError, match=r"no \['block'\] column"):
        run_export([labels], out, by=["region", "block"])
    write_labelled(labels, "m@2", seed=2)  # a second model's rows in the same output
    with pytest.raises(ValueError, match=r"2 model ids \['m@1', 'm@2'\].*--model-id"):
        run_export([labels], out)
    picked = run_export([storage.join(labels, "stats")], storage.join(s3_prefix, "m2"), model_id="m@2")
    assert picked.model_id == "m@2" and picked.frames == s.frames
    with pytest.raises(ValueError, match=r"no stats/\*\.parquet parts"):
        run_export([storage.join(s3_prefix, "nothing")], out)


def test_entry_point_runs_as_a_script(s3_prefix: str) -> None:
    import ray

    labels = storage.join(s3_prefix, "labels")
    write_labelled(labels, "m@1", seed=3)
    out = storage.join(s3_prefix, "cli")
    args = [sys.executable, str(ROOT / "jobs" / "landcover_stats.py"), "--stats", labels, "--output", out]
    proc = subprocess.run(
        [*args, "--by", "region,date", "--address", ray.get_runtime_context().gcs_address],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 groups (region, date)" in proc.stdout and "2 failed" in proc.stdout
    bad = subprocess.run([*args, "--by", "nope"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no ['nope'] column" in bad.stderr
