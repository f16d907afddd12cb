"""What one frame costs outside the model, stage by stage, in core-milliseconds per frame.

On a GPU the model is fast and everything around it is the cost: fetching, decoding and resizing
frames, moving them to the device, resizing logits back, counting classes, encoding masks and
writing Parquet. This script runs the labelling job's own stage functions (``read_frames``,
``Predictor``, ``write_outputs``) in one process with one thread, on synthetic street frames at
several sizes and formats, with a stand-in model whose own cost is negligible (a 1x1 convolution),
and measures CPU time per stage. Beside it, in the same run, the codec floor: decode + PNG encode
of the mask + class count in one plain loop, the least any labelling of the frame must spend.

Stages after the model (masks from the logits, counts, confidence) run on the GPU where there is
one: they are listed as device-side. The summary gives both nodes: on a CPU node every stage is
the CPU's (and its speed relative to the floor is the floor's cost over all stages'); on a GPU node
the host CPU carries the read, the predictor's host side and the write.

    python bench/frame_cost.py                        # 480x360, 1024x2048 and 3000x4000, JPEG and PNG
    python bench/frame_cost.py --sizes 1024x2048 --formats jpg --frames 32

Prints one table per size and format plus a summary: core-ms per frame on a CPU node and on a GPU
node's host, the speed relative to the floor, and the cores one GPU needs to be fed at 1,500 frames/s.

``--job`` measures the whole job instead, on every core: ``run_label_job`` on a local Ray (read
tasks, inference actors, writes, local folders) over ``--job-frames`` JPEGs of 1024x2048 labelled
by a UNet-ResNet18 at 64x128 (a model whose own cost is small, so what is measured is everything
around it), its frames/s taken from the run record (``_runs/*.json``: Ray's start excluded).
Beside it, in the same run, the codec floor on as many processes as cores: decode, class counts
and the palette PNG of the job's own masks, nothing else. Job and floor alternate twice, and each
is averaged over its two runs (the shared host's speed drifts within minutes).

    python bench/frame_cost.py --job                  # 400 frames, the job's frames/s / the floor's
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segray import storage  # noqa: E402
from segray.datasets.synthetic import STREET, street_frame  # noqa: E402
from segray.frames.decode import decode_frame  # noqa: E402
from segray.labelling import predict  # noqa: E402
from segray.labelling.read import read_frames  # noqa: E402
from segray.labelling.write import write_outputs  # noqa: E402
from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import init_artifact  # noqa: E402
from segray.models.preprocessing import Preprocessing, normalise  # noqa: E402
from segray.outputs.masks import encode_mask_png  # noqa: E402
from segray.tasks.semantic.predict import Predictor  # noqa: E402

#: The GPU rate the CPU side must keep up with (UNet-ResNet34 class model, bf16, one H100-class GPU).
GPU_FRAMES_PER_S = 1500


def cpu_ms(fn: Callable[[], Any], n: int) -> tuple[float, Any]:
    """CPU time of ``fn()`` in milliseconds per frame (``n`` frames), and its result."""
    t = time.process_time()
    out = fn()
    return (time.process_time() - t) * 1000 / n, out


def write_frames(folder: Path, size: tuple[int, int], fmt: str, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    h, w = size
    paths = []
    for i in range(n):
        img, _ = street_frame(rng, 240, 320)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
        # Sensor-like noise: a 1024x2048 frame is about 300 KB at JPEG quality 90, as dash-camera frames are.
        img = (img.astype(np.int16) + rng.normal(0, 2, img.shape).astype(np.int16)).clip(0, 255).astype(np.uint8)
        p = folder / f"{h}x{w}" / f"f{i:04d}.{fmt}"
        p.parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == "jpg" else []
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        paths.append(str(p))
    return paths


class StandIn(torch.nn.Module):
    """The model's place in the pipeline at a negligible cost of its own: a 1x1 convolution on an
    8x-pooled frame, upsampled back, so that its masks have regions like a real model's (a mask's
    PNG cost depends on how many boundaries it has)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, classes, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(classes, 3, 1, 1, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = self.conv(torch.nn.functional.avg_pool2d(x, 8))
        return torch.nn.functional.interpolate(small, size=x.shape[2:], mode="bilinear", align_corners=False)


def predictor(model_dir: str) -> Predictor:
    p = Predictor(model_dir, torch_threads=1, fold_bn=False)
    p.model = StandIn(STREET.num_classes).to(memory_format=torch.channels_last).eval()
    return p


def floor_ms(paths: list[str], masks: list[np.ndarray]) -> float:
    """Decode + class count + PNG encode of the frame's mask (the one the job wrote), nothing else."""
    palette = STREET.palette()
    datas = [Path(p).read_bytes() for p in paths]

    def loop() -> None:
        for d, mask in zip(datas, masks, strict=True):
            cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)
            np.bincount(mask.ravel(), minlength=STREET.num_classes)
            encode_mask_png(mask, palette)

    return cpu_ms(loop, len(paths))[0]


def _masks(result: Any) -> np.ndarray:
    return result[0] if isinstance(result, tuple) else result  # (masks, counts), or masks alone


def job_stages(
    paths: list[str], model_dir: str, out: str, batch: int, pre: Preprocessing
) -> tuple[dict[str, float], list[np.ndarray]]:
    """CPU ms per frame of each stage of the job's own functions, batch by batch, and the masks."""
    p = predictor(model_dir)
    n = len(paths)
    t: dict[str, float] = {}
    all_masks: list[np.ndarray] = []

    def add(key: str, ms: float) -> None:
        t[key] = t.get(key, 0.0) + ms

    for i in range(0, n, batch):
        chunk = paths[i : i + batch]
        m = len(chunk)
        rows = {
            "uri": np.array(chunk, dtype=object),
            "relative_path": np.array([Path(c).name for c in chunk], dtype=object),
        }
        ms, batch_out = cpu_ms(
            lambda r=rows: read_frames(r, pre.to_dict(), 2**31, tile_above=1e9, world_files=False), m
        )
        add("read stage: fetch + decode + resize", ms * m / n)
        ms, datas = cpu_ms(lambda c=chunk: [storage.read_bytes(u) for u in c], m)
        add("  of which fetch", ms * m / n)
        ms, _ = cpu_ms(lambda d=datas: [pre.resize(decode_frame(x)) for x in d], m)
        add("  (full-size decode + resize, for comparison)", ms * m / n)
        images = batch_out["image"]
        ms, x = cpu_ms(lambda im=images: torch.from_numpy(im).to(p.device).permute(0, 3, 1, 2), m)
        add("to device", ms * m / n)
        with torch.inference_mode():
            ms, x = cpu_ms(lambda xx=x: normalise(xx, p.mean, p.std).contiguous(memory_format=torch.channels_last), m)
            add("device-side: normalise", ms * m / n)
            ms, logits = cpu_ms(lambda xx=x: p.model(xx), m)
            add("device-side: model (stand-in)", ms * m / n)
            h, w = int(batch_out["height"][0]), int(batch_out["width"][0])
            ms, resized = cpu_ms(lambda lg=logits, hh=h, ww=w: predict.upsample_argmax(lg, hh, ww), m)
            add("device-side: logit resize + argmax (+ counts where the logits are)", ms * m / n)
            ms, conf = cpu_ms(lambda lg=logits: predict.mean_confidence(lg), m)
            add("device-side: confidence", ms * m / n)
        # The predictor's call with its device-side work already done (the results handed back at
        # no cost): what is left is what the call costs the host's CPU.
        real = (p.predict_logits, getattr(p, "logits_of", None), predict.upsample_argmax, predict.mean_confidence)
        p.predict_logits = lambda _images, lg=logits: lg
        p.logits_of = lambda _x, lg=logits: lg
        predict.upsample_argmax = lambda *_args, r=resized: r
        predict.mean_confidence = lambda _lg, c=conf: c
        try:
            ms, labelled = cpu_ms(lambda b=batch_out: p(dict(b)), m)
        finally:
            p.predict_logits, p.logits_of, predict.upsample_argmax, predict.mean_confidence = real
        add("predictor call, host side (batching, D2H copies, host-side counts if any)", ms * m / n)
        all_masks += list(labelled["mask"])
        ms, _ = cpu_ms(lambda mk=labelled["mask"]: [encode_mask_png(k, STREET.palette()) for k in mk], m)
        add("  PNG encode of the masks", ms * m / n)
        ms, _ = cpu_ms(lambda b=labelled: write_outputs(b, out, "bench", "stand-in@0", STREET.to_dict()), m)
        add("write stage: PNG masks + Parquet stats", ms * m / n)
    device = sum(v for k, v in t.items() if k.startswith("device-side"))
    t["CPU side: read + predictor host side + write"] = (
        t["read stage: fetch + decode + resize"]
        + t["predictor call, host side (batching, D2H copies, host-side counts if any)"]
        + t["write stage: PNG masks + Parquet stats"]
    )
    t["device-side total (on a GPU where there is one)"] = device
    return t, all_masks


def png_table(masks: list[np.ndarray]) -> None:
    """Mask PNG size and encode time by zlib level and strategy, on the job's masks."""
    import io
    import zlib

    from PIL import Image

    print("\n| PNG settings (palette, 8-bit) | core-ms per mask | KB per mask |\n| --- | ---: | ---: |")
    for level, strategy, name in [
        (1, zlib.Z_DEFAULT_STRATEGY, "level 1"),
        (6, zlib.Z_DEFAULT_STRATEGY, "level 6"),
        (9, zlib.Z_DEFAULT_STRATEGY, "level 9"),
        (1, zlib.Z_RLE, "level 1, run-length (the job's)"),
    ]:

        def enc(level: int = level, strategy: int = strategy) -> list[int]:
            sizes = []
            for mk in masks:
                im = Image.fromarray(mk, mode="P")
                im.putpalette(STREET.palette())
                buf = io.BytesIO()
                im.save(buf, format="PNG", compress_level=level, compress_type=strategy)
                sizes.append(buf.tell())
            return sizes

        ms, sizes = cpu_ms(enc, len(masks))
        print(f"| {name} | {ms:.1f} | {np.mean(sizes) / 1e3:.0f} |")


def _floor_worker(items: list[tuple[str, str]], classes: int, palette: list[int], barrier: Any, out: Any) -> None:
    cv2.setNumThreads(1)
    datas = [(Path(f).read_bytes(), np.asarray(Image.open(m))) for f, m in items]
    barrier.wait()
    t = time.perf_counter()
    for data, mask in datas:
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        np.bincount(mask.ravel(), minlength=classes)
        encode_mask_png(mask, palette)
    out.put((t, time.perf_counter()))


def floor_procs(frames: list[str], masks: list[str], procs: int) -> float:
    """Frames/s of the codec floor (decode, class counts, palette PNG) on ``procs`` processes at
    once, each with its share of the frames, from a common start (inputs read beforehand)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    items = list(zip(frames, masks, strict=True))
    ps = [
        ctx.Process(target=_floor_worker, args=(items[i::procs], CAMVID.num_classes, CAMVID.palette(), barrier, out))
        for i in range(procs)
    ]
    for p in ps:
        p.start()
    spans = [out.get() for _ in ps]
    for p in ps:
        p.join()
    return len(frames) / (max(e for _, e in spans) - min(t for t, _ in spans))


def job_vs_floor(n: int, rounds: int = 2) -> None:
    """The whole job's frames/s (run record) beside the codec floor's, alternating ``rounds`` times."""
    import ray

    from segray.labelling.job import LabelOptions, run_label_job

    procs = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="segray-frame-cost-job-") as tmp:
        root = Path(tmp)
        model = str(root / "model")
        init_artifact("unet", "resnet18", CAMVID, name="unet-r18-64x128", height=64, width=128).save(model)
        frames = write_frames(root / "frames", (1024, 2048), "jpg", n)
        mb = sum(os.path.getsize(p) for p in frames) / n / 1e6
        ray.init(num_cpus=procs, include_dashboard=False, log_to_driver=False)
        jobs, floors = [], []
        try:
            for r in range(rounds):
                out = root / f"out{r}"
                # Resized whatever the frame's size (not windowed): the model's own cost stays small.
                s = run_label_job(
                    LabelOptions(model=model, input=str(root / "frames"), output=str(out), tile_above=1e9)
                )
                assert s.labelled == n and s.failed == 0, s
                record = json.loads(next((out / "_runs").glob("*.json")).read_text())
                jobs.append(float(record["frames_per_s"]))
                masks = [str(out / "masks" / f"{Path(f).relative_to(root / 'frames')}.png") for f in frames]
                floors.append(floor_procs(frames, masks, procs))
                print(f"round {r + 1}: job {jobs[-1]:.2f} frames/s, codec floor {floors[-1]:.2f} frames/s", flush=True)
        finally:
            ray.shutdown()
    job, floor = sum(jobs) / rounds, sum(floors) / rounds
    print(
        f"\n| frames | cores | job, frames/s (run record) | codec floor, frames/s | job / floor |\n"
        f"| --- | ---: | ---: | ---: | ---: |\n"
        f"| {n} JPEG 1024x2048 ({mb:.2f} MB), UNet-ResNet18 at 64x128 | {procs} | {job:.2f} | {floor:.2f} | "
        f"{job / floor:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["360x480", "1024x2048", "3000x4000"], help="frame HxW")
    ap.add_argument("--formats", nargs="+", default=["jpg", "png"])
    ap.add_argument("--frames", type=int, default=16, help="frames per size and format")
    ap.add_argument("--model-size", default="512x1024", help="the stand-in model's input HxW")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--png-table", action="store_true", help="PNG settings table on the last size's masks")
    ap.add_argument("--job", action="store_true", help="the whole job on a local Ray beside the codec floor")
    ap.add_argument("--job-frames", type=int, default=400, help="1024x2048 JPEGs for --job")
    a = ap.parse_args()
    if a.job:
        job_vs_floor(a.job_frames)
        return
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    mh, mw = (int(v) for v in a.model_size.split("x"))
    pre = Preprocessing(mh, mw)
    summary = []
    png_masks: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="segray-frame-cost-") as tmp:
        root = Path(tmp)
        model_dir = str(root / "model")
        init_artifact("unet", "resnet18", STREET, name="stand-in", height=mh, width=mw).save(model_dir)
        for size in a.sizes:
            h, w = (int(v) for v in size.split("x"))
            for fmt in a.formats:
                paths = write_frames(root / "frames", (h, w), fmt, a.frames)
                mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
                _, masks = job_stages(paths[: a.batch], model_dir, str(root / "warm"), a.batch, pre)  # warm-up
                floor = floor_ms(paths[: a.batch], masks)
                t, masks = job_stages(paths, model_dir, str(root / f"out-{size}-{fmt}"), a.batch, pre)
                floor = (floor + floor_ms(paths, masks)) / 2  # before and after the job's stages
                cpu_side, device = (
                    t["CPU side: read + predictor host side + write"],
                    t["device-side total (on a GPU where there is one)"],
                )
                if size == a.sizes[-1] and fmt == a.formats[0] or a.png_table:
                    png_masks = masks
                print(f"\n{size} {fmt.upper()} ({mb:.2f} MB a frame), model input {mh}x{mw}, {a.frames} frames")
                print("| stage | core-ms per frame |\n| --- | ---: |")
                for k, v in t.items():
                    print(f"| {k} | {v:.1f} |")
                print(f"| codec floor: decode + count + PNG encode, in one loop | {floor:.1f} |")
                summary.append((size, fmt, cpu_side, floor, device))
    if png_masks:
        png_table(png_masks)
    print(
        "\n| frame | floor, core-ms | CPU node: every stage, core-ms | speed / floor on a CPU node | GPU node: host "
        f"side, core-ms | cores per GPU at {GPU_FRAMES_PER_S:,} frames/s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for size, fmt, cpu_side, floor, device in summary:
        print(
            f"| {size} {fmt.upper()} | {floor:.1f} | {cpu_side + device:.1f} | {floor / (cpu_side + device):.2f} | "
            f"{cpu_side:.1f} | {GPU_FRAMES_PER_S * cpu_side / 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
