"""``ray job submit`` against a real Ray head (token auth on) and SeaweedFS: the nightly labelling job.

A date's frames are labelled once; a second submit for the same date labels nothing; five late
frames are labelled by the third submit, and only they.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import pyarrow.dataset as pads
import pytest
from helpers.common import BUCKET, ROOT, TINY_ENCODER
from helpers.rayhead import RayHead, start_ray_head
from helpers.seaweed import SeaweedS3

from segray import storage
from segray.datasets.synthetic import street_frame
from segray.labels import CAMVID
from segray.models.artifact import init_artifact

pytestmark = pytest.mark.slow
DATE = "2026-11-21"


@pytest.fixture(scope="module")
def head(s3: SeaweedS3) -> Iterator[RayHead]:
    # The head's environment carries the S3 endpoint and keys, as an instance profile would on AWS:
    # the job itself never names a credential.
    h = start_ray_head(num_cpus=2, env=s3.env())
    try:
        yield h
    finally:
        h.stop()


def put_frames(prefix: str, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        img, _ = street_frame(rng)
        img = cv2.resize(img, (96, 72), interpolation=cv2.INTER_AREA)
        ok, png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        assert ok
        storage.write_bytes(storage.join(prefix, name), png.tobytes())


def stats_rows(output: str) -> list[dict]:
    fs, path = storage.resolve(storage.join(output, "stats"))
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pylist()


def run_summaries(output: str) -> list[dict]:
    runs = storage.join(output, "_runs")
    fs, _ = storage.resolve(runs)
    out = []
    for path in storage.list_files(runs, (".json",)):  # paths inside the filesystem
        with fs.open_input_stream(path) as f:
            out.append(json.loads(f.read()))
    return out


def test_nightly_job_via_ray_job_submit(head: RayHead, s3: SeaweedS3) -> None:
    root = f"s3://{BUCKET}/nightly-{uuid.uuid4().hex[:8]}"
    model = f"{root}/models/tiny"
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64).save(model)
    day_input = f"{root}/fleet/{DATE}"
    first = [f"cam{c}/{i:05d}.png" for c in (1, 2) for i in range(4)]
    put_frames(day_input, first, seed=1)
    entry = [
        "python", "jobs/nightly_label.py", "--date", DATE, "--model", model,
        "--input", f"{root}/fleet/{{date}}/", "--output", f"{root}/labels/{{date}}/",
        "--max-failed-fraction", "0.2",
    ]  # fmt: skip
    output = f"{root}/labels/{DATE}"

    sid = f"nightly-{uuid.uuid4().hex[:6]}"
    assert head.submit(entry, ROOT, sid) == "SUCCEEDED", head.logs(sid)[-4000:]
    assert f"{len(first)} labelled, 0 failed, 0 already done" in head.logs(sid)
    rows = stats_rows(output)
    assert sorted(r["relative_path"] for r in rows) == sorted(first)
    assert {r["date"] for r in rows} == {DATE}
    for r in rows:
        assert storage.exists(storage.join(output, r["mask_path"]))

    sid = f"nightly-{uuid.uuid4().hex[:6]}"
    assert head.submit(entry, ROOT, sid) == "SUCCEEDED", head.logs(sid)[-4000:]
    assert f"0 labelled, 0 failed, {len(first)} already done" in head.logs(sid)
    assert len(stats_rows(output)) == len(first)

    late = [f"cam3/{i:05d}.png" for i in range(5)]
    put_frames(day_input, late, seed=2)
    sid = f"nightly-{uuid.uuid4().hex[:6]}"
    assert head.submit(entry, ROOT, sid) == "SUCCEEDED", head.logs(sid)[-4000:]
    assert f"5 labelled, 0 failed, {len(first)} already done" in head.logs(sid)
    rows = stats_rows(output)
    assert sorted(r["relative_path"] for r in rows) == sorted(first + late)  # each frame exactly once
    assert sorted(s["labelled"] for s in run_summaries(output)) == [0, 5, len(first)]


def test_failure_budget_fails_the_submitted_job(head: RayHead, s3: SeaweedS3) -> None:
    root = f"s3://{BUCKET}/budget-{uuid.uuid4().hex[:8]}"
    model = f"{root}/models/tiny"
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64).save(model)
    put_frames(f"{root}/fleet/{DATE}", ["a/good0.png", "a/good1.png"], seed=3)
    for i in range(2):
        storage.write_bytes(f"{root}/fleet/{DATE}/a/broken{i}.png", b"not a png at all")
    entry = [
        "python", "jobs/nightly_label.py", "--date", DATE, "--model", model,
        "--input", f"{root}/fleet/{{date}}/", "--output", f"{root}/labels/{{date}}/",
        "--max-failed-fraction", "0.25",
    ]  # fmt: skip
    sid = f"budget-{uuid.uuid4().hex[:6]}"
    assert head.submit(entry, ROOT, sid) == "FAILED"
    logs = head.logs(sid)
    assert "2 of 4 frames failed (50.0%), above the allowed 25.0%" in logs
    # Everything it did label was written before it failed, and the errors name the frames.
    output = f"{root}/labels/{DATE}"
    assert sorted(r["relative_path"] for r in stats_rows(output)) == ["a/good0.png", "a/good1.png"]
    (summary,) = run_summaries(output)
    assert (summary["labelled"], summary["failed"], summary["failed_fraction"]) == (2, 2, 0.5)


def test_submit_without_the_token_is_refused(head: RayHead) -> None:
    proc = head.job("submit", "--no-wait", "--", "python", "-c", "print(1)", env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert proc.returncode != 0
    assert "AuthenticationError" in proc.stdout + proc.stderr
