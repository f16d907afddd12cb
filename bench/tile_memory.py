"""Memory of labelling one huge frame or GeoTIFF scene: it does not grow with the windows, only with the batch.

Labels one synthetic square frame (default 12,000 x 12,000) through the whole job (read -> actor ->
write, on a fresh local Ray per run) for each window batch size, sampling peak RSS of the driver
and of every Ray worker (bench/memory.py), and prints it beside the memory model of
segray.tiles.windows (RGB + mask + band accumulators + one batch of windows).

    python bench/tile_memory.py --size 12000 --batches 2 8

A 12,000^2 frame at 256 x 256 windows (overlap 64) is 63 x 63 = 3,969 windows. If the windows'
logits were all held, that is 3,969 x 11 x 256^2 x 4 B = 11.4 GB; the band blender holds 2 x 135 MB.

``--scene`` measures a GeoTIFF scene through the command line a user runs instead:

    python bench/tile_memory.py --scene --size 12000

It writes a synthetic SIZE x SIZE 4-band uint16 scene (tiled 512 x 512, DEFLATE, nodata 0 on a
border), window by window so the bench itself stays small; makes an untrained band model with
``segray model init --bands`` (PSPNet on a small MobileNetV3 encoder: the bench measures memory, and
the scene's 144 M pixels must go through the model on a shared 2-core machine); labels the scene with
``segray label`` (a local Ray, local folders), and samples the memory of the labelling process tree
(the CLI, the Ray processes it starts and their workers) every 0.2 s. Memory is the proportional set
size (PSS) summed over the tree, so the object store's shared pages count once, not once per process
that maps them. The same command on a small scene (``--base-size``) gives the tree's own footprint
(Ray, the model, one batch of windows); the difference is held against the scene's budget of
docs/landcover.md (:func:`scene_budget`), and the bench exits 1 when it is over.
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


#: The synthetic scene's bands, in the model's order.
SCENE_BANDS = ("B04", "B03", "B02", "B08")
#: Scene windows: the model input, with a small overlap (the bench measures memory, not blending).
SCENE_WINDOW = 512
SCENE_OVERLAP = 32
#: Pixels of nodata along each edge of the synthetic scene.
NODATA_BORDER = 200
#: Classes of the bench's label map (CamVid's 11).
SCENE_CLASSES = 11
#: Ray waits 30 s for its own processes to start; on a busy shared host a start may take longer.
STARTS = 3


def write_scene(path: Path, size: int, seed: int = 0) -> None:
    """A SIZE x SIZE 4-band uint16 GeoTIFF (EPSG:32633, 10 m pixels), tiled 512 x 512 with DEFLATE,
    nodata 0 on a border of :data:`NODATA_BORDER` pixels; written one row of tiles at a time."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    step = max(1, size // 12)
    fields = rng.integers(300, 4000, (len(SCENE_BANDS), size // step + 1, size // step + 1), dtype=np.uint16)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": len(SCENE_BANDS),
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500000.0, 5600000.0, 10.0, 10.0),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "DEFLATE",
        "BIGTIFF": "IF_SAFER",
    }
    cols = np.arange(size)
    with rasterio.open(path, "w", **profile) as ds:
        ds.descriptions = SCENE_BANDS
        for top in range(0, size, 512):
            rows = np.arange(top, min(size, top + 512))
            block = fields[:, rows[:, None] // step, cols[None, :] // step]  # (bands, h, size)
            texture = (np.sin(rows / 7.0)[:, None] * 40 + np.cos(cols / 11.0)[None, :] * 40).astype(np.int32)
            block = np.clip(block.astype(np.int32) + texture, 1, 65535).astype(np.uint16)
            edge = (rows[:, None] < NODATA_BORDER) | (rows[:, None] >= size - NODATA_BORDER)
            edge = edge | (cols[None, :] < NODATA_BORDER) | (cols[None, :] >= size - NODATA_BORDER)
            block[:, edge] = 0
            ds.write(block, window=Window(0, top, size, len(rows)))


def gdal_cache_bytes() -> int:
    """GDAL's block cache limit per process: $GDAL_CACHEMAX (MB, or a percentage), else GDAL's
    default of 5% of the machine's memory."""
    import psutil

    total = psutil.virtual_memory().total
    given = os.environ.get("GDAL_CACHEMAX", "").strip()
    if given.endswith("%"):
        return int(total * float(given[:-1]) / 100)
    if given:
        value = int(given)
        return value if value > 100_000 else value * 2**20  # GDAL reads small values as MB
    return int(total * 0.05)


def scene_budget(
    size: int, bands: int = len(SCENE_BANDS), band_bytes: int = 2, classes: int = SCENE_CLASSES
) -> dict[str, int]:
    """What one SIZE x SIZE scene adds to the labelling process tree, in bytes (docs/landcover.md,
    GeoTIFF scenes, memory): beyond the model and one batch of windows, which any scene costs."""
    hw = size * size
    return {
        "actor: mask": hw,
        "actor: valid map": hw,
        "actor: band sums (x2 at shift)": 2 * (classes + 1) * SCENE_WINDOW * size * 4,
        "actor: GDAL block cache": min(gdal_cache_bytes(), bands * band_bytes * hw),
        "object store: mask": hw,
        "write task: mask blocks": hw,
    }


class TreePeak:
    """Peak of the summed PSS (and RSS) of a process and all its descendants, sampled every ``interval`` s
    from /proc/<pid>/smaps_rollup."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.pss_peak = 0
        self.rss_peak = 0
        self.largest_pss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rollup(pid: int) -> tuple[int, int]:
        pss = rss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
        return pss, rss

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            pss_sum = rss_sum = 0
            for pid in pids:
                try:
                    pss, rss = self._rollup(pid)
                except OSError:  # gone between the listing and the read
                    continue
                pss_sum += pss
                rss_sum += rss
                self.largest_pss = max(self.largest_pss, pss)
            self.pss_peak = max(self.pss_peak, pss_sum)
            self.rss_peak = max(self.rss_peak, rss_sum)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def segray_cli(ray_first: bool = False) -> list[str]:
    """The ``segray`` command of this interpreter (its package's entry point). ``ray_first``: start the
    local Ray the command joins without its dashboard first (lighter to start on a busy host); the
    command is the same ``segray label`` either way."""
    start = "import ray; ray.init(address='local', include_dashboard=False, log_to_driver=False); " if ray_first else ""
    return [sys.executable, "-c", f"import sys; {start}from segray.cli import main; sys.exit(main())"]


def label_scene_tree(scene: Path, model: Path, out: Path, batch: int) -> tuple[TreePeak, float]:
    """``segray label`` on the folder of ``scene``, its process tree sampled until it exits."""
    cmd = [
        *segray_cli(ray_first=True),
        "label",
        "--model",
        str(model),
        "--input",
        str(scene.parent),
        "--output",
        str(out),
        "--batch-size",
        str(batch),
        "--overlap",
        str(SCENE_OVERLAP),
    ]
    for attempt in range(STARTS):
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with TreePeak(proc.pid) as peak:
            log, _ = proc.communicate()
        seconds = time.perf_counter() - t
        if proc.returncode == 0:
            return peak, seconds
        if "timed out during startup" not in log or attempt + 1 == STARTS:
            break
        print("Ray did not start in time on the loaded machine; starting it again", flush=True)
    sys.exit(f"segray label failed ({proc.returncode}):\n{log[-3000:]}")


def scene_bench(size: int, base_size: int, batch: int) -> int:
    """Labels a small and a SIZE x SIZE scene; prints the budget and the measured peaks; 1 when over."""
    mib = 2**20
    with tempfile.TemporaryDirectory(prefix="segray-scene-") as tmp:
        work = Path(tmp)
        model = work / "model"
        init = [
            *segray_cli(),
            "model",
            "init",
            "--arch",
            "pspnet",
            "--encoder",
            TINY_ENCODER,
            "--height",
            str(SCENE_WINDOW),
            "--width",
            str(SCENE_WINDOW),
            "--bands",
            ",".join(SCENE_BANDS),
            "--band-mean",
            "2000,2000,2000,2000",
            "--band-std",
            "1000,1000,1000,1000",
            str(model),
        ]
        subprocess.run(init, check=True, capture_output=True)
        peaks = {}
        for side in (base_size, size):
            (work / f"in{side}").mkdir()
            scene = work / f"in{side}" / "scene.tif"
            t = time.perf_counter()
            write_scene(scene, side)
            print(
                f"{side:>6}^2 scene written in {time.perf_counter() - t:.1f} s "
                f"({scene.stat().st_size / mib:,.0f} MiB on disk)",
                flush=True,
            )
            peak, seconds = label_scene_tree(scene, model, work / f"out{side}", batch)
            peaks[side] = peak.pss_peak
            print(
                f"{side:>6}^2 scene labelled in {seconds:.1f} s: peak PSS of the process tree "
                f"{peak.pss_peak / mib:,.0f} MiB (RSS summed {peak.rss_peak / mib:,.0f} MiB; largest process "
                f"{peak.largest_pss / mib:,.0f} MiB; {peak.samples} samples)",
                flush=True,
            )
    budget = scene_budget(size)
    grew = peaks[size] - peaks[base_size]
    print(
        f"budget of a {size:,}^2 scene: {sum(budget.values()) / mib:,.0f} MiB = "
        + ", ".join(f"{k} {v / mib:,.0f}" for k, v in budget.items())
    )
    print(
        f"measured: {size:,}^2 peak {peaks[size] / mib:,.0f} MiB - {base_size:,}^2 peak "
        f"{peaks[base_size] / mib:,.0f} MiB = {grew / mib:,.0f} MiB "
        f"({'within' if grew <= sum(budget.values()) else 'OVER'} the budget)"
    )
    return 0 if grew <= sum(budget.values()) else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[12000], help="frame (or scene) side(s) in pixels")
    ap.add_argument("--scene", action="store_true", help="a GeoTIFF scene through `segray label` (see above)")
    ap.add_argument("--base-size", type=int, default=1024, help="--scene: the small scene's side")
    ap.add_argument("--scene-batch", type=int, default=4, help="--scene: windows per model call")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 8], help="windows per model call")
    ap.add_argument("--child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        child(a.child[0], a.child[1], Path(a.work))
        return
    if a.scene:
        sys.exit(max(scene_bench(size, a.base_size, a.scene_batch) for size in a.size))
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
