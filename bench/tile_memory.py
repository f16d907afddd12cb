"""Memory of labelling one huge frame: it does not grow with the windows, only with the batch.

Labels one synthetic square frame (default 12,000 x 12,000) through the whole job (read -> actor ->
write, on a fresh local Ray per run) for each window batch size, sampling peak RSS of the driver
and of every Ray worker (bench/memory.py), and prints it beside the memory model of
segray.tiles.windows (RGB + mask + band accumulators + one batch of windows).

    python bench/tile_memory.py --size 12000 --batches 2 8

A 12,000^2 frame at 256 x 256 windows (overlap 64) is 63 x 63 = 3,969 windows. If the windows'
logits were all held, that is 3,969 x 11 x 256^2 x 4 B = 11.4 GB; the band blender holds 2 x 135 MB.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_ENCODER = "tu-mobilenetv3_small_050"
WINDOW = 256
#: A light decoder: the bench measures memory, and the default UNet decoder would spend ~10x the time.
DECODER = (32, 16, 16, 8, 8)


def synthetic_frame(size: int, seed: int = 0):  # noqa: ANN201 - numpy array; numpy imported lazily
    """Fields of colour with smooth texture: compresses like an orthomosaic, not like noise."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    step = size // 12
    for y in range(0, size, step):
        for x in range(0, size, step):
            img[y : y + step, x : x + step] = rng.integers(40, 220, 3)
    rows = (np.sin(np.arange(size) / 7.0) * 12).astype(np.int16)  # vine rows
    return cv2.add(img, np.clip(rows[:, None, None] + 12, 0, 255).astype(np.uint8).repeat(size, 1).repeat(3, 2))


def own_workers():  # noqa: ANN201 - list of psutil.Process
    """Ray workers of this driver's own local Ray only (its descendants), not other sessions' on the host."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("ray::"):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def child(size: int, batch: int, work: Path) -> None:
    import cv2
    import ray
    from memory import PeakRSS

    class OwnPeakRSS(PeakRSS):
        _workers = staticmethod(own_workers)

    from segray.labelling.job import LabelOptions, run_label_job
    from segray.labels import CAMVID
    from segray.models.artifact import init_artifact

    frames = work / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "tile.png"), synthetic_frame(size))
    encoded = (frames / "tile.png").stat().st_size
    model = work / "model"
    art = init_artifact(
        "unet", TINY_ENCODER, CAMVID, height=WINDOW, width=WINDOW, model_kwargs={"decoder_channels": DECODER}
    )
    art.save(str(model))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    opts = LabelOptions(
        model=str(model), input=str(frames), output=str(work / "out"), batch_size=batch, read_batch_size=1
    )
    with OwnPeakRSS(interval=0.5, rescan=2.0) as peak:
        t = time.perf_counter()
        s = run_label_job(opts)
        seconds = time.perf_counter() - t
    ray.shutdown()
    print(
        json.dumps(
            {
                "size": size,
                "batch": batch,
                "labelled": s.labelled,
                "seconds": round(seconds, 1),
                "encoded_bytes": encoded,
                "driver_peak": peak.driver_peak,
                "workers_peak": peak.workers_peak,
                "largest_worker_peak": peak.largest_worker_peak,
            }
        )
    )


def model_bytes(size: int, batch: int, classes: int = 11) -> dict[str, int]:
    """The memory model of segray.tiles.windows for one frame, in bytes."""
    return {
        "rgb": 3 * size * size,
        "mask": size * size,
        "band (x2 at shift)": 2 * (classes + 1) * WINDOW * size * 4,
        "batch windows": batch * WINDOW * WINDOW * (3 + 4 * classes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[12000], help="frame side(s) in pixels")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 8], help="windows per model call")
    ap.add_argument("--child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child[0], a.child[1], Path(a.work))
        return
    mib = 2**20
    for size in a.size:
        for batch in a.batches:
            with tempfile.TemporaryDirectory(prefix="segray-tile-") as work:
                cmd = [sys.executable, __file__, "--child", str(size), str(batch), "--work", work]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ))
                if out.returncode:
                    sys.exit(f"{size}^2, batch {batch} failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
            m = model_bytes(size, batch)
            print(
                f"{size:>6}^2 batch {batch:>2}: {r['seconds']:7.1f} s, peak RSS driver {r['driver_peak'] / mib:,.0f} "
                f"MiB, all workers {r['workers_peak'] / mib:,.0f} MiB, largest worker "
                f"{r['largest_worker_peak'] / mib:,.0f} MiB (model: {sum(m.values()) / mib:,.0f} MiB = "
                + ", ".join(f"{k} {v / mib:,.0f}" for k, v in m.items())
                + f"; PNG {r['encoded_bytes'] / mib:,.0f} MiB)",
                flush=True,
            )


if __name__ == "__main__":
    main()
