"""The labelling job end to end on a real local Ray and a real S3 server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.common import DATA_DIR, ROOT, TINY_ENCODER
from helpers.frames import png_declaring, write_frames
from helpers.tables import read_table
from PIL import Image

from segray import storage
from segray.labelling.job import LabelOptions, run_label_job
from segray.labels import CAMVID
from segray.models.artifact import init_artifact, read_info

pytestmark = pytest.mark.usefixtures("ray_session")

SIZES = [(48, 64), (64, 64), (37, 91), (120, 160), (64, 48), (33, 33)]


def check_outputs(output: str, expected: dict[str, tuple[int, int]]) -> pa.Table:
    """Rows == frames; masks at the frame's size with valid ids; counts and fractions add up."""
    stats = read_table(output, "stats")
    assert sorted(stats.column("relative_path").to_pylist()) == sorted(expected)
    names = CAMVID.names
    for row in stats.to_pylist():
        h, w = expected[row["relative_path"]]
        assert (row["height"], row["width"]) == (h, w)
        assert row["mask_path"] == f"masks/{row['relative_path']}.png"
        with Image.open(io.BytesIO(storage.read_bytes(storage.join(output, row["mask_path"])))) as im:
            assert im.mode == "P" and im.size == (w, h)
            assert im.getpalette()[: 3 * 11] == [v for c in CAMVID.classes for v in c.color]
            mask = np.asarray(im)
        assert mask.max() < CAMVID.num_classes
        counts = np.bincount(mask.ravel(), minlength=CAMVID.num_classes)
        assert [row[f"px_{n}"] for n in names] == counts.tolist()
        assert sum(row[f"px_{n}"] for n in names) == w * h
        assert sum(row[f"frac_{n}"] for n in names) == pytest.approx(1.0)
        assert 0 < row["mean_confidence"] <= 1
    return stats


def only_summary(output: str) -> dict:
    runs = storage.list_files(storage.join(output, "_runs"))
    assert runs
    return json.loads(storage.read_bytes(storage.join(output, "_runs", runs[-1].rsplit("/", 1)[-1])))


def test_folder_job_outputs_and_rerun(tmp_path: Path, tiny_model: str) -> None:
    frames = write_frames(tmp_path / "in", SIZES)
    expected = {str(p.relative_to(tmp_path / "in")): s for p, s in zip(frames, SIZES, strict=False)}
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=str(out), batch_size=4))
    assert (s.frames_in, s.labelled, s.failed, s.skipped_done) == (len(SIZES), len(SIZES), 0, 0)
    stats = check_outputs(str(out), expected)
    assert set(stats.column("model_id").to_pylist()) == {read_info(tiny_model).model_id}
    assert set(stats.column("run_id").to_pylist()) == {s.run_id}
    summary = json.loads((out / "_runs" / f"{s.run_id}.json").read_text())
    assert summary["labelled"] == len(SIZES) and summary["model_id"] == s.model_id
    assert not list(out.rglob("*.tmp"))

    again = run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=str(out)))
    assert (again.labelled, again.skipped_done) == (0, len(SIZES))
    assert read_table(str(out), "stats").num_rows == len(SIZES)

    # A new frame: only it is labelled; still one row per frame.
    extra = write_frames(tmp_path / "new", [(40, 40)], seed=9)[0]
    target = tmp_path / "in" / "seq9" / "late.png"
    target.parent.mkdir()
    extra.rename(target)
    third = run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=str(out)))
    assert (third.labelled, third.skipped_done) == (1, len(SIZES))
    check_outputs(str(out), {**expected, "seq9/late.png": (40, 40)})


def test_odd_frames_are_labelled_or_recorded(tmp_path: Path, tiny_model: str) -> None:
    src = tmp_path / "in"
    good = write_frames(src, [(40, 60)])
    rgb = cv2.imread(str(good[0]))
    (src / "zero.png").write_bytes(b"")
    png = cv2.imencode(".png", rgb)[1].tobytes()
    (src / "truncated.png").write_bytes(png[: len(png) // 2])
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    (src / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (src / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    cv2.imwrite(str(src / "gray.png"), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(src / "rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(src / "deep16.png"), rgb.astype(np.uint16) * 257)
    cv2.imwrite(str(src / "tiny1x1.png"), rgb[:1, :1])
    (src / "bomb.png").write_bytes(png_declaring(100_000, 100_000))  # 10 Gpx declared, 100 bytes on disk
    (src / "notes.txt").write_text("not a frame: not listed")
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=tiny_model, input=str(src), output=str(out)))
    labelled = set(read_table(str(out), "stats").column("relative_path").to_pylist())
    errors = read_table(str(out), "errors").to_pylist()
    failed = {e["relative_path"]: e for e in errors}
    assert labelled == {"seq0/f0000.png", "gray.png", "rgba.png", "deep16.png", "tiny1x1.png"}
    assert set(failed) == {"zero.png", "truncated.png", "truncated.jpg", "noise.jpg", "bomb.png"}
    assert "100000x100000 = 10,000,000,000 pixels" in failed["bomb.png"]["error"]
    assert "empty" in failed["zero.png"]["error"]
    assert "truncated PNG" in failed["truncated.png"]["error"]
    assert "truncated JPEG" in failed["truncated.jpg"]["error"]
    assert all(e["stage"] == "decode" and e["source_uri"].endswith(e["relative_path"]) for e in errors)
    assert (s.frames_in, s.labelled, s.failed) == (10, 5, 5)
    # Rerun: failed frames are retried and recorded once, labelled ones are not duplicated.
    run_label_job(LabelOptions(model=tiny_model, input=str(src), output=str(out)))
    assert read_table(str(out), "errors").num_rows == 5
    assert read_table(str(out), "stats").num_rows == 5


def test_s3_in_and_out_readable_by_duckdb_and_pandas(tmp_path: Path, tiny_model: str, s3_prefix: str) -> None:
    import duckdb
    import pandas as pd
    import s3fs

    frames = write_frames(tmp_path / "in", SIZES[:4], ext=".jpg")
    for p in frames:
        storage.write_bytes(storage.join(s3_prefix, "in", str(p.relative_to(tmp_path / "in"))), p.read_bytes())
    storage.write_bytes(storage.join(s3_prefix, "in", "broken.png"), b"\x89PNG\r\n\x1a\n garbage")
    model = storage.join(s3_prefix, "model")
    init_artifact("pspnet", TINY_ENCODER, CAMVID, name="tiny-psp", height=64, width=64).save(model)
    out = storage.join(s3_prefix, "out")
    s = run_label_job(LabelOptions(model=model, input=storage.join(s3_prefix, "in"), output=out))
    assert (s.labelled, s.failed) == (4, 1)
    expected = {str(p.relative_to(tmp_path / "in")): hw for p, hw in zip(frames, SIZES, strict=False)}
    check_outputs(out, expected)
    errors = read_table(out, "errors").to_pylist()
    assert [e["relative_path"] for e in errors] == ["broken.png"]
    assert only_summary(out)["failed"] == 1

    # pandas and DuckDB read stats/ straight from S3 with no segray code: pandas through s3fs
    # (endpoint and keys from the AWS_* environment), DuckDB through the same fsspec filesystem
    # (its own httpfs extension would need a download).
    df = pd.read_parquet(f"{out}/stats/")
    assert len(df) == 4 and (df.filter(like="frac_").sum(axis=1).round(6) == 1).all()
    assert set(df["relative_path"]) == set(expected)
    con = duckdb.connect()
    con.register_filesystem(s3fs.S3FileSystem())
    px = " + ".join("px_" + n for n in CAMVID.names)
    assert con.sql(f"SELECT count(*), sum(width * height) - sum({px}) FROM '{out}/stats/*.parquet'").fetchall() == [
        (4, 0)
    ]
    key = storage.list_files(storage.join(out, "stats"))[0]
    assert b"segray.label_map" in pq.read_schema(io.BytesIO(storage.read_bytes("s3://" + key))).metadata


def test_manifest_input_carries_columns(tmp_path: Path, tiny_model: str) -> None:
    frames = write_frames(tmp_path / "frames", SIZES[:3])
    rows = [str(p.relative_to(tmp_path)) for p in frames]  # relative to the manifest's folder
    manifest = tmp_path / "manifest.csv"
    lines = [f"{r},north,2026-11-0{i}\n" for i, r in enumerate(rows)]
    manifest.write_text("uri,region,date\n" + "".join(lines) + lines[0].replace("north", "again"))
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=tiny_model, input=str(manifest), output=str(out)))
    assert (s.frames_in, s.labelled) == (3, 3)  # the repeated row labels nothing twice
    stats = read_table(str(out), "stats").to_pylist()
    assert {r["region"] for r in stats} == {"north"}
    assert sorted(str(r["date"]) for r in stats) == ["2026-11-00", "2026-11-01", "2026-11-02"]
    assert all(r["source_uri"].startswith(str(tmp_path)) for r in stats)

    pq.write_table(
        pa.table({"frame": [str(p) for p in frames], "relative_path": ["a/1.png", "a/2.png", "b/3.png"]}),
        tmp_path / "m.parquet",
    )
    out2 = tmp_path / "out2"
    s2 = run_label_job(
        LabelOptions(model=tiny_model, input=str(tmp_path / "m.parquet"), output=str(out2), uri_column="frame")
    )
    assert s2.labelled == 3
    assert sorted(read_table(str(out2), "stats").column("relative_path").to_pylist()) == [
        "a/1.png",
        "a/2.png",
        "b/3.png",
    ]
    assert (out2 / "masks" / "b" / "3.png.png").is_file()


def test_unsafe_relative_paths_cannot_escape(tmp_path: Path, tiny_model: str) -> None:
    frames = write_frames(tmp_path / "frames", SIZES[:3])
    pq.write_table(
        pa.table({"uri": [str(p) for p in frames], "relative_path": ["../escape.png", "/abs.png", "ok/x.png"]}),
        tmp_path / "m.parquet",
    )
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "m.parquet"), output=str(out)))
    assert (s.labelled, s.failed) == (1, 2)
    assert {e["stage"] for e in read_table(str(out), "errors").to_pylist()} == {"key"}
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.png") if "frames" not in p.parts}
    assert written == {Path("out/masks/ok/x.png.png")}


def test_wrong_credentials_fail_before_any_work(
    tmp_path: Path, tiny_model: str, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_frames(tmp_path / "in", SIZES[:2])
    from segray.cli import main

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    out = storage.join(s3_prefix, "out")
    with pytest.raises(storage.StorageError, match="access denied") as e:
        run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=out))
    assert s3_prefix in str(e.value) and "not-the-secret" not in str(e.value)
    assert main(["label", "--model", tiny_model, "--input", str(tmp_path / "in"), "--output", out]) == 2
    monkeypatch.undo()
    assert storage.list_files(s3_prefix) == []


def test_missing_input_and_model_fail_clearly(tmp_path: Path, tiny_model: str) -> None:
    from segray.models.artifact import ArtifactError

    out = tmp_path / "out"
    with pytest.raises(storage.StorageError, match="no-such-folder"):
        run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "no-such-folder"), output=str(out)))
    with pytest.raises(ArtifactError, match="no-such-model"):
        run_label_job(LabelOptions(model=str(tmp_path / "no-such-model"), input=str(tmp_path), output=str(out)))
    assert not out.exists()


def test_entry_point_runs_as_a_script(tmp_path: Path, tiny_model: str) -> None:
    """jobs/label_frames.py as `ray job submit` runs it: a separate process joining the cluster."""
    import ray

    write_frames(tmp_path / "in", SIZES[:2])
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "label_frames.py"),
            "--model",
            tiny_model,
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--address",
            address,
            "--print-table",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 labelled, 0 failed" in proc.stdout and "road" in proc.stdout
    assert len(list((out / "stats").glob("*.parquet"))) >= 1


@pytest.mark.slow
def test_camvid_val(tmp_path: Path) -> None:
    val = DATA_DIR / "camvid" / "val"
    if not val.is_dir():
        pytest.skip(f"real CamVid frames not found at {val} (set SEGRAY_DATA_DIR)")
    model = tmp_path / "model"
    init_artifact("pspnet", TINY_ENCODER, CAMVID, name="tiny-psp-camvid", height=352, width=480).save(str(model))
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=str(model), input=str(val), output=str(out), batch_size=8))
    n = len(list(val.glob("*.png")))
    assert (s.labelled, s.failed) == (n, 0)
    check_outputs(str(out), {p.name: (360, 480) for p in val.glob("*.png")})


def test_frames_are_labelled_as_displayed(tmp_path: Path, tiny_model: str) -> None:
    """A photo stored 480x360 with EXIF orientation 6 is labelled as shown, 360 wide and 480 high
    (in windows: above twice the model input), as its upright twin is; a small PNG with eXIf
    orientation 8 too (resized); the stats say which orientation each frame had, and an output's
    older parts, written without that column, still read beside the new ones."""
    import segray

    rng = np.random.default_rng(4)
    upright = cv2.resize(rng.integers(0, 256, (24, 18, 3), dtype=np.uint8), (360, 480), interpolation=cv2.INTER_CUBIC)
    icon = cv2.resize(rng.integers(0, 256, (4, 3, 3), dtype=np.uint8), (30, 40), interpolation=cv2.INTER_CUBIC)
    (tmp_path / "in").mkdir()

    def save(name: str, rgb: np.ndarray, fmt: str, orientation: int | None) -> None:
        extra = {"quality": 95} if fmt == "JPEG" else {}
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation
            extra["exif"] = exif
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp_path / "in" / name, format=fmt, **extra)

    save("phone.jpg", np.rot90(upright, 1), "JPEG", 6)  # stored turned back: 480 wide, 360 high
    save("upright.jpg", upright, "JPEG", None)
    save("icon.png", np.rot90(icon, -1), "PNG", 8)  # stored 40 wide, 30 high
    out = str(tmp_path / "out")
    s = run_label_job(LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=out))
    assert (s.labelled, s.failed, s.windowed) == (3, 0, 2)
    check_outputs(out, {"phone.jpg": (480, 360), "upright.jpg": (480, 360), "icon.png": (40, 30)})
    rows = {r["relative_path"]: r for r in segray.read_stats(out).to_pylist()}
    assert {k: (r["width"], r["height"], r["exif_orientation"]) for k, r in rows.items()} == {
        "phone.jpg": (360, 480, 6),
        "upright.jpg": (360, 480, 1),
        "icon.png": (30, 40, 8),
    }
    masks = {}
    for name in ("phone.jpg", "upright.jpg"):
        with Image.open(tmp_path / "out" / "masks" / f"{name}.png") as im:
            assert im.size == (360, 480)
            masks[name] = np.asarray(im)
    assert (masks["phone.jpg"] == masks["upright.jpg"]).mean() > 0.95  # the same picture, labelled alike

    # A part written before the column existed: read_stats fills it with nulls, whole or by columns.
    part = next((tmp_path / "out" / "stats").glob("part-*.parquet"))
    older = pq.read_table(part).slice(0, 1).drop_columns(["exif_orientation"])
    older = older.set_column(older.schema.get_field_index("relative_path"), "relative_path", pa.array(["old.jpg"]))
    pq.write_table(older, tmp_path / "out" / "stats" / "part-older.parquet")
    table = segray.read_stats(out)
    assert dict(zip(table["relative_path"].to_pylist(), table["exif_orientation"].to_pylist(), strict=True)) == {
        "phone.jpg": 6,
        "upright.jpg": 1,
        "icon.png": 8,
        "old.jpg": None,
    }
    assert segray.read_stats(out, columns=["relative_path", "exif_orientation"]).num_rows == 4
