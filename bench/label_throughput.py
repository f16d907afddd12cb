"""Labelling throughput, three ways side by side in one run, same machine, model and batch size.

(a) the bare model on preprocessed tensors (the ceiling: the same Predictor code, no I/O);
(b) the full job: encoded frames on disk -> Ray Data -> Parquet stats + PNG masks;
(c) a naive single-process loop as the well-known tutorials write it: read one frame, predict,
    write its PNG, append its stats, write the table at the end.

(a) and (c) are each measured before and after (b) and averaged: the shared host's speed drifts by
tens of percent within minutes, and bracketing (b) is the fairest comparison one run allows.
Prints frames/s for each, the ratios b/a and b/c, and peak RSS of the driver and the Ray workers
during (b). Frames are listed ``--repeat`` times (through a manifest) so that start-up is paid once
over a realistic run length; the first-batch latency is printed separately.

    python bench/label_throughput.py --frames ../shared/data/camvid/val --repeat 3
    python bench/label_throughput.py --repeat 5 --actors 1 --cpus-per-actor 1   # 1 actor x 2 threads

``--compare OLD [NEW]`` measures (b) only, for two checkouts of segray (folders; NEW defaults to this
one), alternating A B A B (``--rounds``) so that the host's drift hits both alike; each run is a fresh
process (and a fresh local Ray) importing segray from its checkout. Prints frames/s of each run, the
mean of each checkout and the ratio NEW / OLD:

    python bench/label_throughput.py --frames ../shared/data/camvid/val --repeat 2 --compare ../old
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

#: The segray checkout to measure: this one, unless --compare runs this script for another (SEGRAY_CHECKOUT).
CHECKOUT = os.environ.get("SEGRAY_CHECKOUT") or str(Path(__file__).resolve().parents[1])
sys.path.insert(0, CHECKOUT)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu import CpuShare  # noqa: E402
from memory import PeakRSS, mib  # noqa: E402

from segray.labelling.job import LabelOptions, run_label_job  # noqa: E402
from segray.labelling.resources import pool_layout  # noqa: E402
from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import ModelArtifact, init_artifact  # noqa: E402
from segray.models.preprocessing import Preprocessing  # noqa: E402
from segray.ray_runtime import cluster_capacity  # noqa: E402
from segray.tasks.semantic.predict import Predictor  # noqa: E402


def job_options(a: argparse.Namespace, model: str, manifest: Path, work: Path) -> LabelOptions:
    """The labelling job's options of a bench run: the pool the bench's flags size, writing to <work>/job."""
    return LabelOptions(
        model=model,
        input=str(manifest),
        output=str(work / "job"),
        batch_size=a.batch_size,
        write_batch_size=a.write_batch,
        min_actors=a.actors,
        max_actors=a.actors,
        cpus_per_actor=a.cpus_per_actor,
        torch_threads=a.actor_threads,
    )


def bare_model(p: Predictor, images: np.ndarray, n: int, batch: int) -> float:
    p.predict_logits(images[:batch])  # warm-up
    t = time.perf_counter()
    for i in range(0, n, batch):
        idx = np.arange(i, min(n, i + batch)) % len(images)
        p.predict_logits(images[idx])
    return n / (time.perf_counter() - t)


def _bare_worker(model: str, images: np.ndarray, n: int, batch: int, threads: int, barrier, out) -> None:  # noqa: ANN001
    p = Predictor(model, torch_threads=threads)
    p.predict_logits(images[:batch])  # warm-up before the common start
    barrier.wait()
    t = time.perf_counter()
    for i in range(0, n, batch):
        p.predict_logits(images[np.arange(i, min(n, i + batch)) % len(images)])
    out.put((t, time.perf_counter()))


def bare_model_procs(model: str, images: np.ndarray, n: int, batch: int, procs: int, threads: int) -> float:
    """(a) laid out as the job's pool is: ``procs`` processes of ``threads`` torch threads each, all
    labelling ``n`` frames at once from a common start; frames/s over the span first start - last end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_bare_worker, args=(model, images, n, batch, threads, barrier, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    spans = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return procs * n / (max(e for _, e in spans) - min(t for t, _ in spans))


def naive_loop(model: str, frames: list[Path], n: int, out: Path, threads: int) -> float:
    torch.set_num_threads(threads)
    t = time.perf_counter()  # the model load counts, as the job's actor start does in (b)
    art = ModelArtifact.load(model)
    net, pre, lm = art.model.eval(), art.preprocessing, art.label_map
    mean, std = np.array(pre.mean, np.float32), np.array(pre.std, np.float32)
    rows = []
    for i in range(n):
        path = frames[i % len(frames)]
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = img.shape[:2]
        x = (cv2.resize(img, (pre.width, pre.height)).astype(np.float32) / 255 - mean) / std
        with torch.no_grad():
            logits = net(torch.from_numpy(x.transpose(2, 0, 1)).unsqueeze(0))
        mask = logits.argmax(1)[0].numpy().astype(np.uint8)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        im = Image.fromarray(mask, mode="P")
        im.putpalette(lm.palette())
        target = out / "masks" / f"r{i // len(frames)}" / f"{path.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        im.save(target)
        counts = np.bincount(mask.ravel(), minlength=lm.num_classes)
        rows.append(
            {
                "relative_path": str(target),
                "width": w,
                "height": h,
                **{f"px_{c}": int(v) for c, v in zip(lm.names, counts, strict=False)},
            }
        )
    pd.DataFrame(rows).to_parquet(out / "stats.parquet")
    return n / (time.perf_counter() - t)


def job_only(a: argparse.Namespace, frames: list[Path]) -> None:
    """(b) alone, for --compare: prints one JSON line (frames, seconds, frames/s, the checkout)."""
    import ray

    n = len(frames) * a.repeat
    work = Path(tempfile.mkdtemp(prefix="segray-bench-"))
    model = str(work / "model")
    init_artifact(a.arch, a.encoder, CAMVID, height=a.height, width=a.width).save(model)
    manifest = work / "manifest.parquet"
    pq.write_table(
        pa.table(
            {
                "uri": [str(p) for _ in range(a.repeat) for p in frames],
                "relative_path": [f"r{k}/{p.name}" for k in range(a.repeat) for p in frames],
            }
        ),
        manifest,
    )
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    s = run_label_job(job_options(a, model, manifest, work))
    wall = time.perf_counter() - t
    ray.shutdown()
    assert s.labelled == n, s
    print(json.dumps({"checkout": CHECKOUT, "frames": n, "seconds": round(wall, 2), "fps": round(n / wall, 3)}))


#: Ray waits 30 s for its own processes to start; on a busy shared host a start may take longer.
STARTS = 3


def compare(a: argparse.Namespace, argv: list[str]) -> None:
    """Alternates (b) runs of the OLD and NEW checkouts, each in its own process."""
    old, new = (str(Path(p).resolve()) for p in (a.compare + [CHECKOUT])[:2])
    passed = [x for x in argv if x not in a.compare and x != "--compare"]
    results: dict[str, list[float]] = {old: [], new: []}
    for r in range(a.rounds):
        for label, root in (("A (old)", old), ("B (new)", new)):
            env = dict(os.environ, SEGRAY_CHECKOUT=root, PYTHONPATH=root)  # Ray workers import from it too
            for _ in range(STARTS):
                cmd = [sys.executable, __file__, *passed, "--job-only"]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if "timed out during startup" not in out.stderr:
                    break
                print("Ray did not start in time on the loaded machine; starting it again", flush=True)
            if out.returncode:
                sys.exit(f"{label} {root} failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            assert res["checkout"] == root, res
            results[root].append(res["fps"])
            print(f"round {r + 1} {label}: {res['fps']:.3f} frames/s ({res['frames']} frames, {res['seconds']} s)")
            sys.stdout.flush()
    mo, mn = (sum(results[k]) / len(results[k]) for k in (old, new))
    print(f"A {old}: mean {mo:.3f} frames/s {results[old]}")
    print(f"B {new}: mean {mn:.3f} frames/s {results[new]}")
    print(f"B / A = {mn / mo:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default=str(Path(__file__).resolve().parents[2] / "shared/data/camvid/val"))
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--height", type=int, default=352)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=10, help="list the frames this many times for (b)")
    ap.add_argument(
        "--naive-repeat", type=int, default=1, help="passes over the frames for each (c) measurement (a steady loop)"
    )
    ap.add_argument("--write-batch", type=int, default=128, help="the job's --write-batch-size")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for (a) and (c)")
    ap.add_argument("--actors", type=int, default=None, help="the job's inference actors (default: the job's)")
    ap.add_argument(
        "--cpus-per-actor",
        type=float,
        default=None,
        help="the job's Ray CPU reservation per actor (default: the job's)",
    )
    ap.add_argument(
        "--actor-threads", type=int, default=0, help="torch threads per actor (0: the job's default, cores / actors)"
    )
    ap.add_argument("--compare", nargs="+", default=None, metavar="CHECKOUT", help="OLD [NEW]: (b) only, see above")
    ap.add_argument("--rounds", type=int, default=2, help="--compare: A B rounds")
    ap.add_argument("--job-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()

    frames = sorted(p for p in Path(a.frames).resolve().iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not frames:
        sys.exit(f"no frames in {a.frames}")
    if a.compare:
        compare(a, sys.argv[1:])
        return
    if a.job_only:
        job_only(a, frames)
        return
    n = len(frames) * a.repeat
    work = Path(tempfile.mkdtemp(prefix="segray-bench-"))
    model = str(work / "model")
    init_artifact(a.arch, a.encoder, CAMVID, height=a.height, width=a.width).save(model)
    manifest = work / "manifest.parquet"
    pq.write_table(
        pa.table(
            {
                "uri": [str(p) for _ in range(a.repeat) for p in frames],
                "relative_path": [f"r{k}/{p.name}" for k in range(a.repeat) for p in frames],
            }
        ),
        manifest,
    )
    print(
        f"{a.arch}-{a.encoder} at {a.height}x{a.width}, batch {a.batch_size}, {n} frames "
        f"({len(frames)} x {a.repeat}) from {a.frames}, {os.cpu_count()} cores, torch threads {a.threads}"
    )

    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    pre = Preprocessing(height=a.height, width=a.width)
    images = np.stack([pre.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in frames])

    # The pool the job will run (its defaults, or the options above), so that (a') copies it.
    pool = pool_layout(
        a.actors, a.actors, a.cpus_per_actor, a.actor_threads, 0.0, cluster_capacity(), os.cpu_count() or 1
    )
    procs = pool.max_actors > 1

    def bare() -> tuple[float, float | None]:
        fa = bare_model(predictor, images, len(images), a.batch_size)
        fp = (
            bare_model_procs(model, images, len(images), a.batch_size, pool.max_actors, pool.torch_threads)
            if procs
            else None
        )
        return fa, fp

    def show(fa: float, fp: float | None, when: str) -> None:
        print(f"(a) bare model on preprocessed tensors : {fa:6.2f} frames/s (1 process x {a.threads} threads, {when})")
        if fp is not None:
            print(
                f"(a') the same in the pool's layout      : {fp:6.2f} frames/s "
                f"({pool.max_actors} processes x {pool.torch_threads} threads, {when})"
            )

    predictor = Predictor(model, torch_threads=a.threads)
    fa1, fp1 = bare()
    show(fa1, fp1, "before b and c")
    nc = len(frames) * a.naive_repeat
    fc1 = naive_loop(model, frames, nc, work / "naive1", a.threads)
    print(f"(c) naive single-process loop           : {fc1:6.2f} frames/s ({nc} frames, before b)")
    print(
        f"(b) runs {pool.max_actors} actor(s) x {pool.torch_threads} torch threads, "
        f"{pool.cpus_per_actor:g} Ray CPU each"
    )
    with PeakRSS() as mem, CpuShare() as cpu:
        t = time.perf_counter()
        s = run_label_job(job_options(a, model, manifest, work))
        wall = time.perf_counter() - t
    assert s.labelled == n, s
    fb = n / wall
    fc2 = naive_loop(model, frames, nc, work / "naive2", a.threads)
    fc = (fc1 + fc2) / 2
    print(f"(c) naive single-process loop           : {fc2:6.2f} frames/s ({nc} frames, after b); mean {fc:.2f}")
    fa2, fp2 = bare()
    show(fa2, fp2, "after b and c")
    fa = (fa1 + fa2) / 2
    print(f"(b) full job, frames on disk -> Parquet+PNG: {fb:6.2f} frames/s ({wall:.1f} s wall, start-up included)")
    print(f"    first output (a written batch of {a.write_batch}) after {s.first_output_s:.1f} s")
    print(f"(a) mean {fa:.2f}, (c) mean {fc:.2f}")
    print(f"b/a = {fb / fa:.3f}   b/c = {fb / fc:.3f}   (start-up included; one run of {n} frames)")
    if fp1 is not None and fp2 is not None:
        # The pool's layout may beat one process on all cores: then the honest ceiling is the same
        # layout without Ray (the larger of the two (a) figures is what b is held against).
        fp = (fp1 + fp2) / 2
        print(f"(a') mean {fp:.2f}: b/a' = {fb / fp:.3f}   b/max(a, a') = {fb / max(fa, fp):.3f}")
    print(
        f"peak RSS during (b): driver {mib(mem.driver_peak)}, Ray workers {mib(mem.workers_peak)} in all "
        f"(largest single worker {mib(mem.largest_worker_peak)})"
    )
    print(cpu.report())
    ray.shutdown()


if __name__ == "__main__":
    main()
