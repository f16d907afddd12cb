"""Online latency and throughput of ``segray serve``, beside the same code called in-process.

One run, one model, the same frames: (a) in-process, no HTTP: the replica's own steps (header check
and decode, one Predictor call, the mask PNG) one frame at a time, and with the Predictor over
batches of 8 frames; (b) the Serve app on a local Ray over HTTP on loopback, at concurrency 1, 4
and 16 (each client thread sends its next frame when the last is answered). Prints p50 and p99
latency, frames/s, the mean model-call batch the replica formed, and each row's frames/s over (a)'s
one-at-a-time figure, then the replica's resident memory before and after the served rows. The
HTTP client runs on the same cores as the server.

    python bench/serve_latency.py --frames ../shared/data/camvid/val --requests 64
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import init_artifact  # noqa: E402
from segray.serving.labeller import Labeller, ServeOptions  # noqa: E402


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def in_process(lab: Labeller, frames: list[bytes], n: int, batch: int) -> tuple[list[float], float]:
    """Per-batch latencies (one entry per frame) and frames/s of the replica's steps without HTTP."""
    lab.label([lab.prepare(frames[0])])  # warm-up
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(0, n, batch):
        t = time.perf_counter()
        data = [frames[j % len(frames)] for j in range(i, min(n, i + batch))]
        results = lab.label([lab.prepare(d) for d in data])
        for r in results:
            lab.mask_png(r.mask)
        lat += [time.perf_counter() - t] * len(data)
    return lat, n / (time.perf_counter() - start)


def served(url: str, frames: list[bytes], n: int, concurrency: int) -> tuple[list[float], float]:
    local = threading.local()

    def one(i: int) -> float:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        s = local.session
        t = time.perf_counter()
        r = s.post(f"{url}/v1/segment", data=frames[i % len(frames)], timeout=300)
        r.raise_for_status()
        return time.perf_counter() - t

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up: connections, first batches
        start = time.perf_counter()
        lat = list(pool.map(one, range(n)))
    return lat, n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default=str(Path(__file__).resolve().parents[2] / "shared/data/camvid/val"))
    ap.add_argument("--requests", type=int, default=64, help="frames per measured row")
    ap.add_argument("--arch", default="pspnet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=352)
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the replica (default 1)")
    ap.add_argument("--concurrency", default="1,4,16")
    a = ap.parse_args()

    import ray
    from ray import serve

    from segray.serving.app import deploy

    files = sorted(p for p in Path(a.frames).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:32]
    frames = [p.read_bytes() for p in files]
    model = Path(tempfile.mkdtemp()) / "model"
    init_artifact(a.arch, a.encoder, CAMVID, height=a.height, width=a.width).save(str(model))
    opts = ServeOptions(model=str(model), torch_threads=a.threads)
    print(f"{a.arch}-{a.encoder} at {a.height}x{a.width}, {len(frames)} frames from {a.frames}, {a.threads} threads")
    print("load average at start (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    rows = []
    lab = Labeller(opts)
    lat, fps = in_process(lab, frames, a.requests, 1)
    base = fps
    rows.append(("in-process, 1 frame per call", 1, *percentiles(lat), fps))
    lat, fps = in_process(lab, frames, a.requests, 8)
    rows.append(("in-process, 8 frames per call", 8, *percentiles(lat), fps))
    del lab

    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = deploy(opts, "127.0.0.1", port, num_cpus=1).rstrip("/")
    replica = next(
        p for p in psutil.process_iter(["cmdline"]) if any("ServeReplica:segray:" in c for c in p.info["cmdline"] or [])
    )
    rss_before = replica.memory_info().rss
    try:
        for c in (int(x) for x in a.concurrency.split(",")):
            before = requests.get(f"{url}/healthz", timeout=30).json()
            lat, fps = served(url, frames, a.requests, c)
            after = requests.get(f"{url}/healthz", timeout=30).json()
            mean_batch = (after["requests"] - before["requests"]) / max(1, after["batches"] - before["batches"])
            rows.append((f"served over HTTP, concurrency {c}", mean_batch, *percentiles(lat), fps))
        rss_after = replica.memory_info().rss
    finally:
        serve.shutdown()
        ray.shutdown()

    print("load average at end (1, 5, 15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("\n| path | mean frames per model call | p50 ms | p99 ms | frames/s | frames/s vs in-process 1 per call |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, batch, p50, p99, fps in rows:
        print(f"| {name} | {batch:.1f} | {p50:.0f} | {p99:.0f} | {fps:.2f} | {fps / base:.2f} |")
    mib = (rss_before / 2**20, rss_after / 2**20)
    print("\nreplica resident memory: {:.0f} MiB before the served rows, {:.0f} MiB after".format(*mib))


if __name__ == "__main__":
    main()
