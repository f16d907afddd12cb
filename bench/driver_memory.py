"""Driver memory does not grow with the number of frames: nothing collects rows in the driver.

Two measurements, each run in fresh processes so that every peak RSS is one process's own.

``--counts``: the labelling job over N tiny frames (64x64, tiny model) in a folder, for each N;
prints the driver's peak RSS (listing, planning, progress, summary) and the ratio between the
largest and smallest N.

    python bench/driver_memory.py --counts 1000 10000

``--listed``: the nightly case at archive scale: a manifest of N frames of which all but ``--todo``
already have a stats row from the same model, so the job lists N frames, skips N - todo and labels
the rest. For each N a setup process writes the manifest (relative URIs, a ``region`` column), the
``--todo`` frames that are still to label (the others need not exist) and ``stats/`` as earlier runs
leave it (the real stats schema, ``--stats-rows-per-part`` rows per part, plus rows of another model
for the frames to label). Then, each in its own process:

- planning: ``segray label --dry-run --tag date=...`` run in-process (``plan_run``: listing and
  done-check), with the process's peak RSS and wall (interpreter start and imports included);
- the job (unless ``--plan-only``): a local Ray and ``run_label_job``, with the driver's peak RSS,
  the seconds from the job's start to the end of planning (preflight, lease, listing, done-check),
  and the whole job's seconds.

It prints each figure and the growth of each peak RSS per listed frame against the smallest N.

    python bench/driver_memory.py --listed 1000 100000 1000000 --todo 256
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_ENCODER = "tu-mobilenetv3_small_050"
OTHER_MODEL = "other-model@000000000000"
DATE = "2026-11-21"


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(n: int, work: Path, batch_size: int) -> None:
    import cv2
    import numpy as np
    import ray

    from segray.labelling.job import LabelOptions, run_label_job
    from segray.labels import CAMVID
    from segray.models.artifact import init_artifact

    rng = np.random.default_rng(0)
    frames = work / "frames"
    for i in range(n):
        p = frames / f"d{i // 1000:03d}" / f"f{i:06d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    model = work / "model"
    init_artifact("unet", TINY_ENCODER, CAMVID, height=64, width=64).save(str(model))
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    s = run_label_job(
        LabelOptions(model=str(model), input=str(frames), output=str(work / "out"), batch_size=batch_size)
    )
    seconds = time.perf_counter() - t
    r = {"frames": n, "labelled": s.labelled, "failed": s.failed, "seconds": seconds, "peak_rss": peak_rss()}
    print(json.dumps(r))
    ray.shutdown()


# --- --listed: a manifest of N frames, all but --todo already labelled ------------------------------


def todo_rows(n: int, todo: int) -> list[int]:
    """The manifest rows still to label: ``todo`` of them, spread evenly over the manifest."""
    todo = min(todo, n)
    return sorted({i * n // todo for i in range(todo)})


def setup_listed(n: int, work: Path, todo: int, rows_per_part: int) -> None:
    """Model, manifest, the frames still to label, and ``stats/`` as earlier runs leave it."""
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from segray.labels import CAMVID
    from segray.models.artifact import init_artifact, read_info
    from segray.outputs.schema import stats_schema

    model = work / "model"
    init_artifact("unet", TINY_ENCODER, CAMVID, height=64, width=64).save(str(model))
    model_id = read_info(str(model)).model_id

    i = np.arange(n)
    uris = pc.binary_join_element_wise(
        pa.array(np.char.mod("frames/d%04d/", i // 1000)), pa.array(np.char.mod("f%07d.png", i)), ""
    )
    regions = pa.array(np.array(["north", "south", "east", "west"])[i % 4])
    pq.write_table(pa.table({"uri": uris, "region": regions}), work / "manifest.parquet")

    rng = np.random.default_rng(0)
    left = todo_rows(n, todo)
    for row in left:
        p = work / uris[row].as_py()
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))

    # The job's relative_path of a relative URI: the resolved path without its leading "/".
    source = pc.binary_join_element_wise(pa.scalar(f"{work}/"), uris, "")
    rels = pc.utf8_ltrim(source, "/")
    done = np.ones(n, dtype=bool)
    done[left] = False

    schema = stats_schema(CAMVID)
    schema = schema.append(pa.field("region", pa.string())).append(pa.field("date", pa.string()))

    def stats_rows(rows: np.ndarray, mid: str, run: str) -> pa.Table:
        k = len(rows)
        idx = pa.array(rows)
        cols: dict[str, pa.Array] = {}
        for f in schema:
            if f.name.startswith("px_"):
                cols[f.name] = pa.array(np.full(k, 4096 if f.name == "px_road" else 0, np.int64))
            elif f.name.startswith("frac_"):
                cols[f.name] = pa.array(np.full(k, 1.0 if f.name == "frac_road" else 0.0))
            elif pa.types.is_floating(f.type) or f.name == "pixel_size_source":
                cols[f.name] = pa.nulls(k, f.type)
            elif f.name in ("width", "height"):
                cols[f.name] = pa.array(np.full(k, 64, np.int32))
        cols["source_uri"] = source.take(idx)
        cols["relative_path"] = rels.take(idx)
        cols["mask_path"] = pc.binary_join_element_wise("masks/", cols["relative_path"], ".png", "")
        cols["model_id"] = pa.repeat(pa.scalar(mid), k)
        cols["mean_confidence"] = pa.array(np.full(k, 0.5))
        cols["run_id"] = pa.repeat(pa.scalar(run), k)
        cols["processed_at"] = pa.repeat(pa.scalar(int(time.time() * 1e6), pa.timestamp("us", tz="UTC")), k)
        cols["region"] = regions.take(idx)
        cols["date"] = pa.repeat(pa.scalar(DATE), k)
        return pa.table({f.name: cols[f.name] for f in schema}, schema=schema)

    stats = work / "out" / "stats"
    stats.mkdir(parents=True)
    done_table = stats_rows(np.flatnonzero(done), model_id, "20261121T010000Z-bench0")
    for part, start in enumerate(range(0, done_table.num_rows, rows_per_part)):
        piece = done_table.slice(start, rows_per_part)
        pq.write_table(piece, stats / f"part-20261121T010000Z-bench0-{part:06d}.parquet", compression="zstd")
    other = stats_rows(np.asarray(left), OTHER_MODEL, "20261120T010000Z-bench1")
    pq.write_table(other, stats / "part-20261120T010000Z-bench1-000000.parquet", compression="zstd")
    print(json.dumps({"model_id": model_id, "done": int(done.sum()), "todo": len(left)}))


def timed_planning() -> dict[str, float]:
    """Wraps the job's planning step (listing and done-check) to time it."""
    from segray.labelling import job

    seen: dict[str, float] = {}
    plan = job._frames_table

    def wrapped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        t = time.perf_counter()
        out = plan(*args, **kwargs)
        seen["planning_s"] = time.perf_counter() - t
        seen["planned_at"] = time.perf_counter()
        seen["rss_after_planning"] = peak_rss()
        return out

    job._frames_table = wrapped
    return seen


def dry_run_listed(work: Path) -> None:
    """``segray label --dry-run`` in this process: preflight, then plan_run."""
    from segray.cli import main

    seen = timed_planning()
    argv = ["label", "--model", str(work / "model"), "--input", str(work / "manifest.parquet")]
    argv += ["--output", str(work / "out"), "--tag", f"date={DATE}", "--dry-run"]
    printed = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    seconds = time.perf_counter() - t
    assert code == 0, printed.getvalue()
    line = next(x for x in printed.getvalue().splitlines() if x.startswith("frames listed"))
    print(json.dumps({"dry_run_s": seconds, "planning_s": seen["planning_s"], "plan": line, "peak_rss": peak_rss()}))


def job_listed(work: Path, batch_size: int) -> None:
    """The whole job on a local Ray: the driver's peak RSS and when labelling could start."""
    import ray

    from segray.labelling.job import LabelOptions, run_label_job

    seen = timed_planning()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    opts = LabelOptions(
        model=str(work / "model"),
        input=str(work / "manifest.parquet"),
        output=str(work / "out"),
        batch_size=batch_size,
        tags={"date": DATE},
    )
    t = time.perf_counter()
    s = run_label_job(opts)
    seconds = time.perf_counter() - t
    r = {
        "frames_in": s.frames_in,
        "skipped": s.skipped_done,
        "labelled": s.labelled,
        "failed": s.failed,
        "to_planned_s": seen["planned_at"] - t,
        "planning_s": seen["planning_s"],
        "seconds": seconds,
        "rss_after_planning": seen["rss_after_planning"],
        "peak_rss": peak_rss(),
    }
    print(json.dumps(r))
    ray.shutdown()


def run_child(*args: str) -> tuple[dict, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def per_frame(r: dict, base: dict, n: int, n0: int, key: str = "peak_rss") -> str:
    return "-" if n == n0 else f"{(r[key] - base[key]) / (n - n0):+,.0f} B/frame"


def main_listed(a: argparse.Namespace) -> None:
    base_plan = base_job = None
    n0 = a.listed[0]
    for n in a.listed:
        with tempfile.TemporaryDirectory(prefix="segray-mem-") as tmp:
            t = time.perf_counter()
            made, _ = run_child("--setup", str(n), "--work", tmp, "--todo", str(a.todo), *a.part_args)
            print(f"{n:>9,} listed: set up in {time.perf_counter() - t:.0f} s ({made['done']:,} already done)")
            plan, wall = run_child("--dry-run-child", "--work", tmp)
            plan["wall_s"] = wall
            base_plan = base_plan or plan
            print(
                f"{n:>9,} listed: dry run: planning {plan['planning_s']:.2f} s, "
                f"whole command {plan['dry_run_s']:.2f} s "
                f"({wall:.1f} s with interpreter start and imports), peak RSS {mib(plan['peak_rss'])} "
                f"({per_frame(plan, base_plan, n, n0)}); {plan['plan']}"
            )
            if a.plan_only:
                continue
            job, _ = run_child("--job-child", "--work", tmp, "--batch-size", str(a.batch_size))
            assert (job["frames_in"], job["skipped"]) == (n, made["done"]), job
            assert job["labelled"] + job["failed"] == made["todo"], job
            base_job = base_job or job
            print(
                f"{n:>9,} listed: job: planning done {job['to_planned_s']:.2f} s after the start "
                f"(listing and done-check {job['planning_s']:.2f} s), whole job {job['seconds']:.1f} s, "
                f"{job['labelled']} labelled; driver peak RSS {mib(job['peak_rss'])} "
                f"({per_frame(job, base_job, n, n0)}), {mib(job['rss_after_planning'])} after planning "
                f"({per_frame(job, base_job, n, n0, 'rss_after_planning')})"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=None, help="folder mode: frames per run")
    ap.add_argument("--listed", type=int, nargs="+", default=None, help="manifest mode: frames listed per run")
    ap.add_argument("--todo", type=int, default=256, help="manifest mode: frames not yet labelled")
    ap.add_argument("--stats-rows-per-part", type=int, default=128, help="manifest mode: rows per stats part")
    ap.add_argument("--plan-only", action="store_true", help="manifest mode: the dry run only, no job")
    ap.add_argument("--batch-size", type=int, default=64)
    for hidden in ("--child", "--setup"):
        ap.add_argument(hidden, type=int, default=None, help=argparse.SUPPRESS)
    for hidden in ("--dry-run-child", "--job-child"):
        ap.add_argument(hidden, action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, Path(a.work), a.batch_size)
        return
    if a.setup is not None:
        setup_listed(a.setup, Path(a.work), a.todo, a.stats_rows_per_part)
        return
    if a.dry_run_child:
        dry_run_listed(Path(a.work))
        return
    if a.job_child:
        job_listed(Path(a.work), a.batch_size)
        return
    if a.listed:
        a.part_args = ["--stats-rows-per-part", str(a.stats_rows_per_part)]
        main_listed(a)
        return
    results = []
    for n in a.counts or [1000, 10000]:
        with tempfile.TemporaryDirectory(prefix="segray-mem-") as work:
            r, _ = run_child("--child", str(n), "--work", work, "--batch-size", str(a.batch_size))
            assert r["labelled"] == n, r
            results.append(r)
            print(
                f"{n:>7} frames: driver peak RSS {r['peak_rss'] / 2**20:7.0f} MiB, "
                f"{r['seconds']:6.1f} s ({n / r['seconds']:.0f} frames/s)"
            )
    lo, hi = results[0], results[-1]
    print(f"peak RSS ratio {hi['frames']} / {lo['frames']} frames: {hi['peak_rss'] / lo['peak_rss']:.3f}")


if __name__ == "__main__":
    main()
