"""Driver memory does not grow with the number of frames: nothing collects rows in the driver.

Runs the labelling job over N tiny frames (64x64, tiny model) for each N, each in a fresh process,
and prints that process's peak RSS (the driver: listing, planning, progress, summary) and the
ratio between the largest and smallest N.

    python bench/driver_memory.py --counts 1000 10000
"""

from __future__ import annotations

import argparse
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
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"frames": n, "labelled": s.labelled, "failed": s.failed, "seconds": seconds, "peak_rss": peak}))
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child, Path(a.work), a.batch_size)
        return
    results = []
    for n in a.counts:
        with tempfile.TemporaryDirectory(prefix="segray-mem-") as work:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--work", work, "--batch-size", str(a.batch_size)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                sys.exit(f"run with {n} frames failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
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
