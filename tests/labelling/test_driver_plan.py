"""What a run would label: the listing, the done-check against ``stats/`` (a columnar anti-join on
``relative_path``) and the order, without Ray."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.frames import write_frames

from segray.frames.listing import (
    relative_path_from_uri,
    relative_paths_from_uris,
    resolve_manifest_uri,
    resolve_manifest_uris,
)
from segray.labelling.job import LabelOptions, _frames_table, plan_run
from segray.labels import CAMVID
from segray.models.artifact import read_info
from segray.outputs.schema import stats_schema

MODEL = "tiny-unet@000000000000"
OTHER = "other-model@111111111111"


def write_stats(output: Path, rels: list[str], model_id: str, part: str) -> None:
    """A stats part as a run writes it (the real schema), with only the key columns filled in."""
    schema = stats_schema(CAMVID)
    cols = {f.name: pa.nulls(len(rels), f.type) for f in schema}
    cols["relative_path"] = pa.array(rels, pa.string())
    cols["model_id"] = pa.array([model_id] * len(rels), pa.string())
    (output / "stats").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols, schema=schema), output / "stats" / f"part-{part}.parquet")


def test_manifest_order_duplicates_and_other_models(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = ["z/9.png", "a/1.png", "m/5.png", "b/2.png", "y/8.png", "c/3.png"]
    regions = ["n", "s", "e", "w", "n", "s"]
    uris = [f"frames/{n}" for n in names] + ["frames/a/1.png", "frames/m/5.png"]  # two repeats, last
    (tmp_path / "in").mkdir()
    manifest = tmp_path / "in" / "manifest.parquet"
    pq.write_table(pa.table({"uri": uris, "region": [*regions, "again", "again"]}), manifest)
    rel = {n: f"{tmp_path}/in/frames/{n}".lstrip("/") for n in names}
    out = tmp_path / "out"
    write_stats(out, [rel["m/5.png"], rel["y/8.png"], "not/listed.png"], MODEL, "r1-0")
    write_stats(out, [rel["z/9.png"], rel["b/2.png"]], OTHER, "r1-1")  # another model: not done
    write_stats(out, [rel["y/8.png"]], MODEL, "r2-0")  # labelled twice by this model: skipped once

    opts = LabelOptions(model="m", input=str(manifest), output=str(out), tags={"date": "2026-11-21"})
    with caplog.at_level(logging.WARNING, logger="segray.label"):
        table, total, skipped = _frames_table(opts, MODEL)
    assert "2 rows repeat a relative_path already listed" in caplog.text
    assert (total, skipped) == (6, 2)
    assert table is not None
    assert table.column_names == ["region", "uri", "relative_path", "date"]
    todo = ["z/9.png", "a/1.png", "b/2.png", "c/3.png"]  # the manifest's order, each frame once
    assert table.column("relative_path").to_pylist() == [rel[n] for n in todo]
    assert table.column("uri").to_pylist() == [f"{tmp_path}/in/frames/{n}" for n in todo]
    assert table.column("region").to_pylist() == ["n", "s", "w", "s"]  # the first row's columns
    assert set(table.column("date").to_pylist()) == {"2026-11-21"}

    # Another model has done none of them; once this model has done all, nothing is left.
    assert _frames_table(opts, "third@222222222222")[1:] == (6, 0)
    write_stats(out, [rel[n] for n in todo], MODEL, "r3-0")
    assert _frames_table(opts, MODEL) == (None, 6, 6)


def test_csv_manifest_with_uri_column_and_relative_paths(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "frame,relative_path,region\n"
        "s3://bucket/day/k2.png,day/2.png,n\n"
        "/abs/k1.png,day/1.png,s\n"
        "rel/k3.png,day/3.png,e\n"
        "s3://bucket/day/k0.png,day/0.png,w\n"
    )
    out = tmp_path / "out"
    write_stats(out, ["day/1.png"], MODEL, "r1-0")
    opts = LabelOptions(model="m", input=str(manifest), output=str(out), uri_column="frame")
    table, total, skipped = _frames_table(opts, MODEL)
    assert (total, skipped) == (4, 1) and table is not None
    assert table.column("relative_path").to_pylist() == ["day/2.png", "day/3.png", "day/0.png"]
    assert table.column("uri").to_pylist() == [
        "s3://bucket/day/k2.png",
        f"{tmp_path}/rel/k3.png",
        "s3://bucket/day/k0.png",
    ]


def test_folder_listing_keeps_its_sorted_order(tmp_path: Path) -> None:
    write_frames(tmp_path / "in", [(16, 16)] * 6)  # seq0/f0000, seq1/f0001, seq0/f0002, ...
    out = tmp_path / "out"
    write_stats(out, ["seq0/f0002.png", "seq1/f0001.png"], MODEL, "r1-0")
    write_stats(out, ["seq0/f0000.png"], OTHER, "r1-1")
    table, total, skipped = _frames_table(LabelOptions(model="m", input=str(tmp_path / "in"), output=str(out)), MODEL)
    assert (total, skipped) == (6, 2) and table is not None
    assert table.column("relative_path").to_pylist() == [
        "seq0/f0000.png",
        "seq0/f0004.png",
        "seq1/f0003.png",
        "seq1/f0005.png",
    ]


def test_dry_run_plan_takes_the_first_frames_in_listing_order(tmp_path: Path, tiny_model: str) -> None:
    info = read_info(tiny_model)
    manifest = tmp_path / "m.parquet"
    rels = [f"f{i:02d}.png" for i in (5, 3, 9, 1, 7, 2)]
    pq.write_table(pa.table({"uri": [f"/x/{r}" for r in rels], "relative_path": rels}), manifest)
    out = tmp_path / "out"
    write_stats(out, ["f03.png", "f01.png"], info.model_id, "r1-0")
    opts = LabelOptions(model=tiny_model, input=str(manifest), output=str(out), limit=3)
    p = plan_run(opts, info, show=5)
    assert (p.frames_in, p.done, p.to_label, p.left_by_limit) == (6, 2, 3, 1)
    assert p.first == ["f05.png", "f09.png", "f07.png"]


TRICKY_URIS = [
    "a/b.png",
    "./a.png",
    "x/",
    "x//",
    "",
    "/abs/x.png",
    "//double/x.png",
    "s3://bucket/k.png",
    "file:///a/b.png",
    "ftp://x://y",
    "a:/b",
    "name with spaces/ü.png",
    "line\nbreak://z",
]


@pytest.mark.parametrize("manifest", ["/w/m.csv", "/m.csv", "m.csv", "s3://bucket/day/m.parquet", "s3://b/m.csv"])
def test_columnar_uri_resolution_matches_the_per_row_one(manifest: str) -> None:
    relative, absolute = TRICKY_URIS[:3], TRICKY_URIS[5:7]
    for uris in (TRICKY_URIS, relative, absolute, TRICKY_URIS[7:9], relative + absolute, []):
        column = pa.chunked_array([pa.array(uris[:2], pa.string()), pa.array(uris[2:], pa.string())])
        resolved = resolve_manifest_uris(manifest, column).to_pylist()
        assert resolved == [resolve_manifest_uri(manifest, u) for u in uris]
        rels = relative_paths_from_uris(pa.array(resolved, pa.string())).to_pylist()
        assert rels == [relative_path_from_uri(u) for u in resolved]
