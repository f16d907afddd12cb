"""Exactly once when runs meet: the output's lease, readers that count each frame once, compaction.

Everything runs against the session's real Ray and SeaweedFS; runs that overlap are separate
``segray label`` processes, as cron, a retried ``ray job submit`` or a user would start them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest
from helpers.common import ROOT, TINY_ENCODER
from helpers.frames import write_frames
from helpers.tables import read_table

from segray import read_stats, storage
from segray.cli import main as cli_main
from segray.labelling.job import LabelOptions, run_label_job
from segray.labelling.write import write_outputs
from segray.labels import CAMVID
from segray.landcover.export import run_export
from segray.models.artifact import init_artifact, read_info
from segray.outputs.compact import compact
from segray.outputs.lease import LeaseHeld, OutputLease, read_lease
from segray.outputs.read import DUCKDB_LATEST, stats_parts

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(params=["disk", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh output location: a local folder, or a prefix on the session's S3 server."""
    if request.param == "disk":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_prefix") + "/out"


# -- the lease on its own --------------------------------------------------------------------------

HOLDER = """
import sys, time
from segray.outputs.lease import OutputLease
lease = OutputLease(sys.argv[1], sys.argv[2], ttl=float(sys.argv[3])).acquire()
print("held", flush=True)
while not lease.lost:
    time.sleep(0.1)
print("lost:", lease.lost_reason, flush=True)
sys.exit(7)
"""


def hold_in_subprocess(output: str, run_id: str, ttl: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, output, run_id, str(ttl)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_one_holder_at_a_time_and_release(where: str) -> None:
    first = OutputLease(where, "run-a").acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"being written by run run-a \(label, host .*\) since .* UTC"):
            OutputLease(where, "run-b").acquire()
        held = read_lease(where)
        assert held is not None and held.run_id == "run-a" and not held.released
    finally:
        first.release()
    record = read_lease(where)
    assert record is not None and record.released
    with OutputLease(where, "run-b"):  # a released lease is taken at once
        assert read_lease(where).run_id == "run-b"  # type: ignore[union-attr]


def test_runs_racing_for_the_lease_one_wins(where: str) -> None:
    """Eight processes try to take the same fresh lease at the same instant: exactly one gets it."""
    start = time.time() + 3
    script = (
        "import sys, time\nfrom segray.outputs.lease import OutputLease, LeaseHeld\n"
        f"time.sleep(max(0, {start} - time.time()))\n"
        "try:\n    OutputLease(sys.argv[1], sys.argv[2]).acquire(); print('won')\n"
        "except LeaseHeld as e:\n    print('refused', e)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, where, f"racer-{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    winners = [i for i, o in enumerate(outs) if o.startswith("won")]
    assert len(winners) == 1, outs
    refused = [o for o in outs if o.startswith("refused")]
    assert len(refused) == 7 and all(f"run racer-{winners[0]} " in o for o in refused), outs


def test_a_killed_holder_is_taken_over_after_the_ttl(where: str) -> None:
    ttl = 2.0
    dead = hold_in_subprocess(where, "run-dead", ttl)
    dead.send_signal(signal.SIGKILL)
    dead.wait(10)
    with pytest.raises(LeaseHeld, match=r"run run-dead .* lapses 2 s after its last heartbeat"):
        OutputLease(where, "run-next", ttl=ttl).acquire()
    time.sleep(ttl + 0.5)
    with OutputLease(where, "run-next", ttl=ttl):
        assert read_lease(where).run_id == "run-next"  # type: ignore[union-attr]


def test_a_frozen_holder_finds_out_it_was_taken_over(where: str) -> None:
    """A holder that stops (SIGSTOP: a long GC pause, a network partition) past the TTL loses the
    output to the next run and, when it wakes, sees so at its next heartbeat."""
    ttl = 1.5
    frozen = hold_in_subprocess(where, "run-frozen", ttl)
    try:
        frozen.send_signal(signal.SIGSTOP)
        time.sleep(ttl + 1)
        taker = OutputLease(where, "run-taker", ttl=ttl).acquire()
        frozen.send_signal(signal.SIGCONT)
        out, _ = frozen.communicate(timeout=30)
        assert frozen.returncode == 7 and "lost: the lease now belongs to run run-taker" in out
        assert not taker.lost
        taker.release()
    finally:
        frozen.kill()


# -- overlapping labelling runs ---------------------------------------------------------------------


def label_cmd(model: str, src: str, out: str, *extra: str) -> list[str]:
    import ray

    return [
        sys.executable, str(ROOT / "jobs" / "label_frames.py"), "--model", model, "--input", src, "--output", out,
        "--address", ray.get_runtime_context().gcs_address, "--batch-size", "4", "--write-batch-size", "8", *extra,
    ]  # fmt: skip


def put_frames(where: str, tmp: Path, n: int) -> tuple[str, set[str]]:
    paths = write_frames(tmp / "frames", [(48, 64)] * n)
    rels = {str(p.relative_to(tmp / "frames")) for p in paths}
    if not storage.is_s3(where):
        return str(tmp / "frames"), rels
    src = where.rsplit("/", 1)[0] + "/frames"
    for p in paths:
        storage.write_bytes(storage.join(src, str(p.relative_to(tmp / "frames"))), p.read_bytes())
    return src, rels


def assert_one_row_and_mask_per_frame(out: str, frames: set[str]) -> None:
    stats = read_table(out, "stats")  # the raw parts, not a deduplicating reader
    rels = stats.column("relative_path").to_pylist()
    assert len(rels) == len(set(rels)) and set(rels) == frames
    masks = storage.list_files(storage.join(out, "masks"), (".png",))
    assert len(masks) == len(frames)


def test_overlapping_runs_label_each_frame_once(where: str, tmp_path: Path, tiny_model: str) -> None:
    """Two runs (three on disk) started together on one output: one labels every frame, the others
    exit 2 naming it; one stats row and one mask per frame; landcover counts each frame once."""
    src, frames = put_frames(where, tmp_path, 48)
    n_runs = 3 if not storage.is_s3(where) else 2
    procs = [
        subprocess.Popen(label_cmd(tiny_model, src, where), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n_runs)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    results = [(p.returncode, o, e) for p, (o, e) in zip(procs, outputs, strict=True)]
    done = [o for rc, o, _ in results if rc == 0 and f" {len(frames)} labelled" in o]
    assert len(done) == 1, [(rc, o, e[-1500:]) for rc, o, e in results]
    winner = re.search(r"run (\S+): ", done[0]).group(1)  # type: ignore[union-attr]
    for rc, out, err in results:
        if out is done[0]:
            continue
        # Refused while the winner ran (exit 2, naming it), or started after it ended (nothing to do).
        refused = rc == 2 and f"is being written by run {winner} (label" in err and "last heartbeat" in err
        assert refused or (rc == 0 and " 0 labelled" in out), (rc, out, err[-2000:])
    assert_one_row_and_mask_per_frame(where, frames)
    lc = run_export([where], where.rsplit("/", 1)[0] + "/lc", by=["relative_path"])
    assert lc.frames == len(frames) and lc.groups == len(frames)
    assert read_lease(where).released  # type: ignore[union-attr]


def test_a_run_killed_holding_the_output_blocks_the_next_only_for_the_ttl(tmp_path: Path, tiny_model: str) -> None:
    src, frames = put_frames(str(tmp_path / "out"), tmp_path, 96)
    out = str(tmp_path / "out")
    env = {**os.environ, "SEGRAY_LEASE_TTL_S": "4"}
    first = subprocess.Popen(label_cmd(tiny_model, src, out), env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not stats_parts(out) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed: make it longer"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    dead = read_lease(out)
    assert dead is not None and not dead.released
    with pytest.raises(LeaseHeld, match=f"run {dead.run_id} .* lapses 4 s after its last heartbeat"):
        OutputLease(out, "too-early").acquire()
    time.sleep(max(0.0, dead.heartbeat_at + 4 - time.time()) + 0.5)
    rerun = subprocess.run(label_cmd(tiny_model, src, out), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"took over the lease of run {dead.run_id}" in rerun.stderr
    assert_one_row_and_mask_per_frame(out, frames)


# -- readers ------------------------------------------------------------------------------------------


def synthetic_batch(rels: list[str], seed: int, **columns: str) -> dict[str, np.ndarray]:
    """A batch as the inference step hands it to write_outputs (the real writer), with 8x8 masks."""
    rng = np.random.default_rng(seed)
    n = len(rels)
    masks = [rng.integers(0, CAMVID.num_classes, (8, 8), dtype=np.uint8) for _ in range(n)]
    batch = {
        "uri": np.array([f"s3://fleet/{r}" for r in rels], dtype=object),
        "relative_path": np.array(rels, dtype=object),
        "error": np.array([""] * n, dtype=object),
        "error_stage": np.array([""] * n, dtype=object),
        "mask": np.array([*masks, None], dtype=object)[:n],
        "class_pixels": np.stack([np.bincount(m.ravel(), minlength=CAMVID.num_classes) for m in masks]),
        "width": np.full(n, 8, np.int32),
        "height": np.full(n, 8, np.int32),
        "mean_confidence": np.full(n, 0.8),
    }
    for k, v in columns.items():
        batch[k] = np.array([v] * n, dtype=object)
    return batch


def write_parts(out: str, rels: list[str], run_id: str, model_id: str, rows_per_part: int, seed: int = 0) -> None:
    for i in range(0, len(rels), rows_per_part):
        write_outputs(synthetic_batch(rels[i : i + rows_per_part], seed + i), out, run_id, model_id, CAMVID.to_dict())


def test_readers_count_each_frame_once_whatever_stats_holds(where: str) -> None:
    """Superseded rows (a run taken over mid-write), a part copied beside itself, two models:
    read_stats, the documented DuckDB query and landcover each keep one row per frame and model."""
    rels = [f"seq{i % 3}/f{i:03d}.png" for i in range(60)]
    write_parts(where, rels, "20261201T010000Z-aaaaaa", "m@1", 16, seed=1)
    write_parts(where, rels[:25], "20261201T020000Z-bbbbbb", "m@1", 10, seed=2)  # later rows, other pixels
    write_parts(where, rels, "20261201T030000Z-cccccc", "m@2", 32, seed=3)
    fs = storage.resolve(where)[0]
    part = stats_parts(where)[0]
    with fs.open_input_stream(part) as f:
        data = f.read()
    with fs.open_output_stream(part.replace("part-", "copy-")) as f:
        f.write(data)  # a byte-identical copy: same keys, times and runs

    raw = read_table(where, "stats")
    assert raw.num_rows > 2 * len(rels)  # the folder itself does double count
    t = read_stats(where)
    assert t.num_rows == 2 * len(rels)
    keys = list(zip(t.column("relative_path").to_pylist(), t.column("model_id").to_pylist(), strict=True))
    assert len(set(keys)) == len(keys)
    m1 = read_stats(where, model_id="m@1")
    assert m1.num_rows == len(rels)
    latest = {r: run for r, run in zip(m1["relative_path"].to_pylist(), m1["run_id"].to_pylist(), strict=True)}
    assert all(latest[r] == "20261201T020000Z-bbbbbb" for r in rels[:25])
    assert all(latest[r] == "20261201T010000Z-aaaaaa" for r in rels[25:])

    if not storage.is_s3(where):  # the documented DuckDB query gives the same rows
        import duckdb

        q = f"SELECT relative_path, run_id FROM ({DUCKDB_LATEST.format(stats=where + '/stats')}) WHERE model_id = 'm@1'"
        ddb = duckdb.sql(q).fetchall()
        assert sorted(ddb) == sorted(latest.items())

    lc = run_export([where], where.rsplit("/", 1)[0] + "/lc", by=["relative_path"], model_id="m@1")
    assert (lc.frames, lc.groups) == (len(rels), len(rels))
    fs, totals_path = storage.resolve(storage.join(where.rsplit("/", 1)[0], "lc", "totals"))
    totals = pads.dataset(totals_path, filesystem=fs, format="parquet").to_table()
    expected = sum(int(pc.sum(m1.column(f"px_{n}")).as_py()) for n in CAMVID.names)
    assert int(pc.sum(totals.column("px_total")).as_py()) == expected


def test_reader_while_a_run_writes_never_sees_a_frame_twice(tmp_path: Path, tiny_model: str) -> None:
    """A second model labels an output that already holds a first model's rows and leftovers of a
    run taken over mid-write; a reader polling all along sees each (frame, model) once."""
    src, frames = put_frames(str(tmp_path / "out"), tmp_path, 64)
    out = str(tmp_path / "out")
    mid = read_info(tiny_model).model_id
    rels = sorted(frames)
    write_parts(out, rels, "20261201T010000Z-aaaaaa", mid, 16)
    write_parts(out, rels[:20], "20261201T020000Z-bbbbbb", mid, 8)  # leftovers: superseded twice over
    other = str(tmp_path / "other-model")
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-other", height=64, width=64).save(other)
    seen: list[int] = []
    bad: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t = read_stats(out, columns=["relative_path", "model_id"])
            keys = list(zip(t["relative_path"].to_pylist(), t["model_id"].to_pylist(), strict=True))
            if len(keys) != len(set(keys)):
                bad.append(f"{len(keys) - len(set(keys))} duplicates")
            seen.append(len(keys))
            time.sleep(0.05)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        s = run_label_job(LabelOptions(model=other, input=src, output=out, batch_size=4, write_batch_size=4))
    finally:
        stop.set()
        reader.join(30)
    assert s.labelled == len(frames)
    assert bad == [] and len(seen) > 3
    assert seen[0] >= len(frames) and seen[-1] <= 2 * len(frames) and len(set(seen)) > 1
    assert seen == sorted(seen)  # rows only ever appear, each frame and model at most once
    assert read_stats(out).num_rows == 2 * len(frames)


# -- compaction ---------------------------------------------------------------------------------------


def test_compact_keeps_the_rows_in_fewer_files_and_reruns_skip(tmp_path: Path, tiny_model: str) -> None:
    src, frames = put_frames(str(tmp_path / "out"), tmp_path, 24)
    out = str(tmp_path / "out")
    s = run_label_job(LabelOptions(model=tiny_model, input=src, output=out, batch_size=4, write_batch_size=4))
    assert s.labelled == len(frames)
    # Plus a few thousand rows of earlier nights in small parts, with a manifest column, and
    # superseded rows and a copied part.
    many = [f"archive/{i:05d}.png" for i in range(3000)]
    write_parts(out, many, "20261130T010000Z-aaaaaa", "m@old", 40, seed=5)
    write_parts(out, many[:300], "20261130T020000Z-bbbbbb", "m@old", 50, seed=6)
    part = Path(stats_parts(out)[-1])
    shutil.copy(part, part.with_name("copy-" + part.name))
    before = read_stats(out)
    parts_before = len(stats_parts(out))
    assert parts_before > 80 and before.num_rows == 3000 + len(frames)

    sizes: list[int] = []
    stop = threading.Event()

    def poll() -> None:  # a reader during compaction sees the same rows throughout
        while not stop.is_set():
            sizes.append(read_stats(out, columns=["relative_path"]).num_rows)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        assert cli_main(["compact", out, "--rows-per-file", "1000"]) == 0
    finally:
        stop.set()
        reader.join(60)
    after = read_stats(out)
    files = stats_parts(out)
    assert len(files) == 4 and all(Path(f).name.startswith("compact-") for f in files)
    assert read_table(out, "stats").num_rows == after.num_rows  # one row per frame and model on disk
    order = [("model_id", "ascending"), ("relative_path", "ascending")]
    assert after.sort_by(order).equals(before.select(after.column_names).sort_by(order))
    assert sizes and set(sizes) == {before.num_rows}
    again = run_label_job(LabelOptions(model=tiny_model, input=src, output=out))
    assert (again.labelled, again.skipped_done) == (0, len(frames))


def test_compact_refuses_an_output_being_written(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    write_parts(out, ["a.png", "b.png"], "20261201T010000Z-aaaaaa", "m@1", 1)
    with OutputLease(out, "run-busy"), pytest.raises(LeaseHeld, match="run run-busy"):
        compact(out)
    assert len(stats_parts(out)) == 2


def test_runs_report(tmp_path: Path, tiny_model: str, capsys: pytest.CaptureFixture[str]) -> None:
    src, frames = put_frames(str(tmp_path / "out"), tmp_path, 8)
    out = str(tmp_path / "out")
    s = run_label_job(LabelOptions(model=tiny_model, input=src, output=out))
    write_parts(out, sorted(frames)[:3], "20200101T000000Z-old000", s.model_id, 3)  # superseded by the run
    assert cli_main(["runs", out]) == 0
    text = capsys.readouterr().out
    assert f"lease: free (last released by run {s.run_id})" in text
    # frames in, labelled, failed, skipped, frames/s, status
    assert re.search(rf"{s.run_id} .* {re.escape(s.model_id)} +8 +8 +0 +0 +[\d.]+ +complete\n", text), text
    assert f"stats: 11 rows in 2 files\n  {s.model_id}: 8 frames (one row each)" in text
    assert "3 superseded rows are ignored" in text
