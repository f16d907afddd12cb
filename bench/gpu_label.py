"""Labelling speed on one GPU in one short run: the bare model, the Predictor's path from JPEG
bytes, and the whole job, side by side on the same machine, model and batch.

(a) the bare model: UNet-ResNet34 (untrained, BatchNorm folded, as the Predictor loads it) on
    normalised tensors already on the device, at 512x1024, bf16 autocast, channels-last,
    ``torch.inference_mode``, over ``--batches``; the batch with the most frames/s is the one
    (b) and (c) use. Then, at that batch: with ``torch.backends.cudnn.benchmark`` on, and under
    ``torch.compile`` (in a child process, stopped when the time budget runs out).
(b) the Predictor's path from encoded 1024x2048 JPEGs to masks and per-class counts, one batch
    after another (read, then predict; no overlap):
    - cpu-decode: ``segray.labelling.read.read_frames`` over the files (in the page cache)
      fetches, decodes and resizes them as the job's read stage does, then ``Predictor.__call__``
      normalises, runs the model, resizes the logits to the frame's size, takes argmax and counts;
    - gpu-decode: the same with ``decode="gpu"``: read_frames only fetches and checks, and the
      Predictor decodes with nvJPEG (``torchvision.io.decode_jpeg`` on a list, ``device="cuda"``).
      With a Predictor that has no such option, the bench decodes with nvJPEG and resizes on the
      GPU itself, then runs the Predictor's normalise, model and ``upsample_argmax``;
    - gpu-decode-1step: nvJPEG in the bench, and each batch's logits resized, argmaxed and counted
      in one step on the GPU instead of the Predictor's 64 MiB stripes.
(c) the whole job over the frames in a folder, to masks, stats and errors on a local folder, with
    CPU decoding and (on a GPU) with ``decode="gpu"``: ``run_label_job`` on a local Ray where Ray
    can be imported, else the job's three stage functions (``read_frames`` -> ``Predictor`` ->
    ``write_outputs``) in threads without Ray. Model start-up is included, as in the job's own
    frames/s.

Prints one markdown table (frames/s, and each row's ratio to (a)'s best) and writes it as JSON to
``--out``. On a machine without segmentation-models-pytorch, ``--bundle DIR`` (made by
bench/gpu_bundle.sh) supplies the wheels: those whose modules are missing are unpacked into
``--site`` and put on ``sys.path``, no network needed.

    bash bench/gpu_label.sh --out gpu_label.json          # GPU: the defaults, under 8 minutes
    python bench/gpu_label.py --tiny --out /tmp/t.json    # CPU: tiny model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NO_GPU = "not run: no GPU"
#: One (b) batch: its frames -> (seconds reading or decoding, seconds labelling).
Batch = Callable[[list[Path]], tuple[float, float]]
#: The module the bundle must make importable (segray's model registry builds models with it).
PROBE = "segmentation_models_pytorch"
TINY_ENCODER = "tu-mobilenetv3_small_050"
#: A GPU run's defaults, and --tiny's (a CPU check in seconds); options given on the command line win.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpu": dict(
        encoder="resnet34", height=512, width=1024, frame_size=(1024, 2048), batches=[1, 4, 8, 16, 32], seconds=3.0,
        b_frames=256, c_frames=1024, compile=True, job="auto", torch_threads=0, budget_s=400.0,
    ),
    "tiny": dict(
        encoder=TINY_ENCODER, height=64, width=128, frame_size=(128, 256), batches=[1, 4, 8], seconds=0.5,
        b_frames=16, c_frames=32, compile=False, job="threads", torch_threads=1, budget_s=600.0,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# The bundle: wheels unpacked onto sys.path, only those whose modules are missing.


def wheel_modules(wheel: Path) -> list[str]:
    """The top-level modules and packages a wheel installs."""
    names = set()
    with zipfile.ZipFile(wheel) as z:
        for entry in z.namelist():
            top = entry.split("/", 1)[0]
            if not top or top.endswith((".dist-info", ".data")):
                continue
            names.add(top if "/" in entry else top.split(".", 1)[0])
    return sorted(names)


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _python() -> list[str]:
    """This interpreter, as it was started (``-S`` kept), for child processes."""
    return [sys.executable, *(["-S"] if sys.flags.no_site else [])]


def _probe_imports(module: str, site: Path) -> str:
    """'' when a fresh interpreter with ``site`` first on its path imports ``module``, else why not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(site), *filter(None, [env.get("PYTHONPATH")])])
    r = subprocess.run([*_python(), "-c", f"import {module}"], env=env, capture_output=True, text=True)
    return "" if r.returncode == 0 else (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1]


SITE_MARK = ".segray-gpu-site"


def unpack_bundle(bundle: Path, site: Path, probe: str = PROBE) -> dict[str, Any]:
    """Unpack into ``site`` each wheel of ``bundle`` whose modules this interpreter cannot find, put
    ``site`` on ``sys.path`` (after the checkout, before site-packages) and check in a fresh
    interpreter that ``probe`` imports. If it does not (an installed package too old for the
    bundled ones, say), every wheel is unpacked, shadowing the installed copies, and the check
    runs again. ``site`` is emptied first (only a folder this function made, or an empty one).

    Returns ``{"bundle", "site", "unpacked": [wheel names], "mode": "none" | "missing" | "all",
    "probe": "ok"}``; raises RuntimeError when ``probe`` does not import even then."""
    wheels = sorted(bundle.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"{bundle}: no wheels (make them with bash bench/gpu_bundle.sh {bundle})")
    if site.exists() and any(site.iterdir()) and not (site / SITE_MARK).exists():
        raise RuntimeError(f"{site} holds files this script did not put there; name an empty folder with --site")
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    (site / SITE_MARK).write_text("wheels unpacked by bench/gpu_label.py; emptied on its next run\n")
    importlib.invalidate_caches()
    probe_missing = not _findable(probe)
    missing = [w for w in wheels if not all(_findable(m) for m in wheel_modules(w))]
    unpacked: list[str] = []

    def extract(chosen: list[Path]) -> None:
        for wheel in chosen:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            unpacked.append(wheel.name)
        if chosen and str(site) not in sys.path:
            sys.path.insert(1 if sys.path and sys.path[0] == str(REPO) else 0, str(site))
        importlib.invalidate_caches()

    extract(missing)
    mode = "missing" if missing else "none"
    why = _probe_imports(probe, site) if probe_missing or missing else ""
    if why:
        extract([w for w in wheels if w not in missing])
        mode = "all"
        why = _probe_imports(probe, site)
        if why:
            raise RuntimeError(f"{probe} does not import even with every wheel of {bundle} unpacked: {why}")
    return {"bundle": str(bundle), "site": str(site), "unpacked": unpacked, "mode": mode, "probe": "ok"}


# --------------------------------------------------------------------------------------------
# Rows of the table


@dataclass
class Row:
    #: a, b or c
    id: str
    #: which measurement of that row: eager, cudnn-benchmark, compile; cpu-decode, gpu-decode,
    #: gpu-decode-1step; ray, threads
    variant: str
    what: str
    batch: int | None = None
    frames: int = 0
    seconds: float = 0.0
    fps: float | None = None
    #: frames/s over (a)'s best eager frames/s
    ratio: float | None = None
    note: str = ""


def markdown(rows: list[Row]) -> str:
    lines = [
        "| row | variant | what | batch | frames | s | frames/s | vs (a) best | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        fps = "" if r.fps is None else f"{r.fps:.1f}" if r.fps >= 10 else f"{r.fps:.2f}"
        ratio = "" if r.ratio is None else f"{r.ratio:.3f}"
        secs = f"{r.seconds:.2f}" if r.fps is not None else ""
        frames = str(r.frames) if r.fps is not None else ""
        batch = "" if r.batch is None else str(r.batch)
        lines.append(
            f"| ({r.id}) | {r.variant} | {r.what} | {batch} | {frames} | {secs} | {fps} | {ratio} | {r.note} |"
        )
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[gpu_label {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Measurements


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        import torch

        self.a = a
        self.t0 = time.perf_counter()
        self.torch = torch
        self.device = torch.device(a.device if a.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.type == "cuda"
        self.work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="segray-gpu-label-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.model = str(self.work / "model")
        self.frames = self.work / "frames"
        self.rows: list[Row] = []
        self.best: Row | None = None

    # -- helpers ------------------------------------------------------------------------------

    def left(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def autocast(self, p: Any) -> contextlib.AbstractContextManager[Any]:
        if p.amp_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast("cuda", dtype=p.amp_dtype)

    def add(self, row: Row) -> Row:
        if row.fps is not None and self.best is not None and self.best.fps:
            row.ratio = row.fps / self.best.fps
        self.rows.append(row)
        log(f"{row.id} {row.what} batch={row.batch}: {row.fps and round(row.fps, 2)} frames/s {row.note}")
        return row

    def skipped(self, row: Row, why: str) -> Row:
        row.note = why
        return self.add(row)

    def guarded(self, stage: str, run: Callable[[], None]) -> None:
        """Runs a stage; an error in it becomes a row, and the rows measured so far are kept."""
        try:
            run()
        except Exception as e:  # noqa: BLE001 - the table is still printed and written
            log(traceback.format_exc())
            self.skipped(Row(stage, "error", "the rest of this stage"), f"failed: {type(e).__name__}: {e}"[:300])

    def over_budget(self, row: Row, need_s: float = 0.0) -> bool:
        if self.left() < need_s:
            self.skipped(row, f"not run: time budget ({self.a.budget_s:g} s) spent")
            return True
        return False

    # -- set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        import cv2
        import numpy as np

        from segray.datasets.synthetic import street_frame
        from segray.labels import CAMVID
        from segray.models.artifact import init_artifact

        a = self.a
        if a.model:  # a trained artifact: its own input size
            from segray.models.artifact import read_info

            self.model, pre = a.model, read_info(a.model).preprocessing
            a.height, a.width = pre.height, pre.width
            self.model_note = f"model {a.model}"
        else:
            init_artifact("unet", a.encoder, CAMVID, height=a.height, width=a.width).save(self.model)
            self.model_note = "an untrained UNet: pass --model with a trained artifact for the fair figure"
        rng = np.random.default_rng(0)
        h, w = a.frame_size
        jpegs = []
        for _ in range(a.distinct):
            img, _ = street_frame(rng, max(240, h // 2), max(320, w // 2))  # its smallest is 240x320
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            jpegs.append(buf.tobytes())
        self.frames.mkdir(parents=True, exist_ok=True)
        n = max(a.b_frames, a.c_frames)
        for i in range(n):
            (self.frames / f"f{i:05d}.jpg").write_bytes(jpegs[i % len(jpegs)])
        self.frame_paths = sorted(self.frames.iterdir())
        self.jpeg_kib = sum(len(j) for j in jpegs) / len(jpegs) / 1024
        log(f"model {a.encoder} at {a.height}x{a.width}; {n} JPEG frames {h}x{w} (~{self.jpeg_kib:.0f} KiB each)")

    def predictor(self, decode: str = "cpu") -> Any:
        from segray.tasks.semantic.predict import Predictor

        kw = {"decode": decode} if decode != "cpu" else {}
        return Predictor(self.model, device=str(self.device), torch_threads=self.a.torch_threads, **kw)

    # -- (a) ----------------------------------------------------------------------------------

    def timed(self, step: Callable[[], Any], batch: int, seconds: float, warmup: int = 2) -> tuple[int, float]:
        for _ in range(warmup):
            step()
        self.sync()
        n, t = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t < seconds:
            step()
            n += 1
        self.sync()
        return n * batch, time.perf_counter() - t

    def bare_step(self, p: Any, x: Any, model: Any = None) -> Callable[[], Any]:
        from segray.models.preprocessing import forward

        torch = self.torch
        net = p.model if model is None else model

        def step() -> Any:
            with torch.inference_mode(), self.autocast(p):
                return forward(net, x, p.hflip_average).float()

        return step

    def bare_input(self, p: Any, batch: int) -> Any:
        from segray.models.preprocessing import normalise

        torch = self.torch
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (batch, 3, self.a.height, self.a.width), dtype=torch.uint8, generator=g)
        return normalise(images.to(self.device), p.mean, p.std)

    def run_a(self, p: Any) -> None:
        torch = self.torch
        amp = "float32" if p.amp_dtype is None else f"{str(p.amp_dtype).removeprefix('torch.')} autocast"
        label = f"bare model, eager, {amp}, channels-last"
        eager: list[Row] = []
        for b in self.a.batches:
            row = Row("a", "eager", label, b)
            if self.over_budget(row, 60):
                continue
            try:
                frames, secs = self.timed(self.bare_step(p, self.bare_input(p, b)), b, self.a.seconds)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                self.skipped(row, "not run: out of GPU memory")
                break
            row.frames, row.seconds, row.fps = frames, secs, frames / secs
            eager.append(self.add(row))
        if not eager:
            raise RuntimeError("(a) measured nothing")
        self.best = max(eager, key=lambda r: r.fps or 0.0)
        for r in eager:
            r.ratio = (r.fps or 0.0) / (self.best.fps or 1.0)
        self.best.note = (self.best.note + " best batch").strip()
        b = self.best.batch or 1
        row = Row("a", "cudnn-benchmark", "bare model, eager, cudnn.benchmark on", b)
        if not self.cuda:
            self.skipped(row, NO_GPU)
        elif not self.over_budget(row, 60):
            torch.backends.cudnn.benchmark = True
            try:
                frames, secs = self.timed(self.bare_step(p, self.bare_input(p, b)), b, self.a.seconds, warmup=3)
                row.frames, row.seconds, row.fps = frames, secs, frames / secs
                self.add(row)
            finally:
                torch.backends.cudnn.benchmark = False

    def run_a_compile(self) -> None:
        assert self.best is not None
        b = self.best.batch or 1
        row = Row("a", "compile", "bare model, torch.compile (inductor, default mode)", b)
        if not self.a.compile:
            self.skipped(row, "not run: --no-compile")
            return
        if self.over_budget(row, 45):
            return
        timeout = max(1.0, self.left() - 5)
        cmd = [*_python(), __file__, "--compile-child", "--model-dir", self.model, "--device", str(self.device)]
        cmd += ["--batch", str(b), "--seconds", str(self.a.seconds), "--height", str(self.a.height)]
        cmd += ["--width", str(self.a.width), "--torch-threads", str(self.a.torch_threads)]
        log(f"(a) torch.compile at batch {b} in a child process, at most {timeout:.0f} s")
        # Its own process group, so that a timeout also stops the compiler's worker processes.
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            self.skipped(row, f"not run: compiling and measuring took over the {timeout:.0f} s left")
            return
        result = next((ln for ln in stdout.splitlines() if ln.startswith("COMPILED ")), None)
        if child.returncode != 0 or result is None:
            why = (stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
            self.skipped(row, f"failed: {why[:200]}")
            return
        d = json.loads(result.split(" ", 1)[1])
        row.frames, row.seconds, row.fps = d["frames"], d["seconds"], d["fps"]
        row.note = (
            f"compile + first call {d['compile_s']:.0f} s; eager in the same process {d['eager_fps']:.1f} "
            f"frames/s (compiled/eager {d['fps'] / d['eager_fps']:.3f})"
        )
        self.add(row)

    # -- (b) ----------------------------------------------------------------------------------

    def via_read(self, p: Any, decode: str) -> Batch:
        """One batch as the job runs it: ``read_frames`` (fetch, check, and decode unless the
        Predictor decodes), then the Predictor; returns (read seconds, Predictor seconds)."""
        import numpy as np

        from segray.labelling.read import read_frames

        pre = self.pre_dict()
        kw = {"decode": decode} if decode != "cpu" else {}

        def one(paths: list[Path]) -> tuple[float, float]:
            uris = np.array([str(q) for q in paths], dtype=object)
            t = time.perf_counter()
            chunk = {"uri": uris, "relative_path": uris.copy()}
            batch = read_frames(chunk, preprocessing=pre, max_pixels=2**28, world_files=False, **kw)
            t1 = time.perf_counter()
            out = p(batch)
            t2 = time.perf_counter()
            bad = [e for e in out["error"] if e]
            if bad:
                raise RuntimeError(f"frames failed: {bad[:3]}")
            check_counts(out["class_pixels"], self.a.frame_size)
            return t1 - t, t2 - t1

        return one

    def run_b(self, p: Any) -> None:
        assert self.best is not None
        b, n = self.best.batch or 1, self.a.b_frames

        def attempt(row: Row, make: Callable[[], Batch], parts: tuple[str, str]) -> None:
            if row.variant != "cpu-decode" and not self.cuda:
                self.skipped(row, NO_GPU)
                return
            if self.over_budget(row, 30):
                return
            try:
                self.measure_b(row, make(), n, b, parts)
            except Exception as e:  # noqa: BLE001 - a failing row (no nvJPEG, say) must not lose the others
                self.skipped(row, f"failed: {type(e).__name__}: {str(e)[:200]}")

        what = "JPEG bytes -> masks + counts"
        row = Row("b", "cpu-decode", f"{what}: read_frames decodes and resizes (CPU), then the Predictor", b)
        attempt(row, lambda: self.via_read(p, "cpu"), ("read_frames", "Predictor"))
        bench_parts = ("decode + resize", "the rest")
        if predictor_decodes():
            row = Row("b", "gpu-decode", f"{what}: read_frames fetches, the Predictor decodes (nvJPEG) and labels", b)
            attempt(row, lambda: self.via_read(self.predictor("gpu"), "gpu"), ("read_frames", "Predictor"))
        else:
            what_gpu = "nvJPEG decode and resize in the bench (the Predictor has no decode option), then its model"
            row = Row("b", "gpu-decode", f"{what}: {what_gpu}, upsample_argmax and counts", b)
            attempt(row, lambda: functools.partial(self.gpu_batch, p, one_shot=False), bench_parts)
        row = Row("b", "gpu-decode-1step", f"{what}: nvJPEG in the bench, logits resized and counted in one step", b)
        attempt(row, lambda: functools.partial(self.gpu_batch, p, one_shot=True), bench_parts)

    def run_agreement(self, p: Any) -> None:
        """The masks of the same frames decoded on the GPU and on the CPU: the share of pixels that
        agree (the decoders and resizes differ slightly; a trained model, ``--model``, is the fair test)."""
        import numpy as np

        from segray.labelling.read import read_frames

        row = Row("b", "gpu-vs-cpu-decode masks", "pixels whose class agrees, GPU decode vs CPU decode", None)
        if not self.cuda:
            self.skipped(row, NO_GPU)
            return
        pre = self.pre_dict()
        paths = self.frame_paths[: min(32, len(self.frame_paths))]
        uris = np.array([str(q) for q in paths], dtype=object)
        cpu = p(read_frames({"uri": uris, "relative_path": uris.copy()}, pre, 2**28, world_files=False))
        gpu_p = self.predictor("gpu")
        gpu = gpu_p(
            read_frames({"uri": uris, "relative_path": uris.copy()}, pre, 2**28, world_files=False, decode="gpu")
        )
        same = sum(int((a == b).sum()) for a, b in zip(cpu["mask"], gpu["mask"], strict=True))
        total = sum(int(a.size) for a in cpu["mask"])
        row.frames, row.note = len(paths), f"{100 * same / total:.2f}% of {total:,} pixels agree ({self.model_note})"
        self.add(row)

    def pre_dict(self) -> dict[str, Any]:
        from segray.models.artifact import read_info

        return read_info(self.model).preprocessing.to_dict()

    def measure_b(self, row: Row, one: Batch, n: int, b: int, parts: tuple[str, str]) -> None:
        one(self.frame_paths[:b])  # warm-up: first-call costs of the decoder, resize and new shapes
        first, rest, frames = 0.0, 0.0, 0
        t = time.perf_counter()
        for paths in self.batches_of(n, b):
            d, m = one(paths)
            first, rest, frames = first + d, rest + m, frames + len(paths)
        secs = time.perf_counter() - t
        row.frames, row.seconds, row.fps = frames, secs, frames / secs
        row.note = f"{parts[0]} {100 * first / secs:.0f}% of the time, {parts[1]} {100 * rest / secs:.0f}%"
        self.add(row)

    def batches_of(self, n: int, b: int) -> Iterator[list[Path]]:
        paths = self.frame_paths[:n]
        for i in range(0, len(paths), b):
            yield paths[i : i + b]

    def gpu_batch(self, p: Any, paths: list[Path], one_shot: bool) -> tuple[float, float]:
        """A batch decoded by nvJPEG and resized on the device by the bench itself, then labelled
        with the Predictor's pieces: its ``upsample_argmax`` (64 MiB stripes), or, ``one_shot``,
        each chunk of logits resized, argmaxed and counted at once. Returns (decode s, the rest s)."""
        import numpy as np
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg

        from segray.models.preprocessing import forward, normalise
        from segray.tasks.semantic.predict import mean_confidence, upsample_argmax

        t = time.perf_counter()
        data = [torch.frombuffer(bytearray(q.read_bytes()), dtype=torch.uint8) for q in paths]
        x = torch.stack(list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)))
        h, w = (int(v) for v in x.shape[-2:])
        size = (self.a.height, self.a.width)
        if (h, w) != size:
            mode = "area" if h > size[0] and w > size[1] else "bilinear"  # as the CPU path resizes
            x = F.interpolate(x.float(), size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
            x = x.round_().clamp_(0, 255)
        self.sync()
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = normalise(x, p.mean, p.std)
            with self.autocast(p):
                logits = forward(p.model, x, p.hflip_average).float()
            mean_confidence(logits)
            c = logits.shape[1]
            if one_shot:
                masks, counts = [], []
                step = max(1, 2 * 2**30 // (c * h * w * 4))  # at most 2 GiB of full-size logits at once
                for i in range(0, logits.shape[0], step):
                    up = F.interpolate(logits[i : i + step], size=(h, w), mode="bilinear", align_corners=False)
                    m = up.argmax(dim=1).to(torch.uint8)
                    k = m.shape[0]
                    offsets = torch.arange(k, device=m.device).view(k, 1, 1) * c
                    counts.append(torch.bincount((m.long() + offsets).flatten(), minlength=k * c).view(k, c).cpu())
                    masks.append(m.cpu().numpy())
                mask_arr, count_arr = np.concatenate(masks), torch.cat(counts).numpy()
            else:
                res = upsample_argmax(logits, h, w)
                if isinstance(res, tuple):
                    mask_arr, count_arr = res
                else:  # an upsample_argmax that returns the masks alone: counted as the Predictor does
                    mask_arr = res
                    count_arr = np.stack([np.bincount(m.ravel(), minlength=c)[:c] for m in res])
        check_counts(count_arr, self.a.frame_size)
        assert mask_arr.shape == (len(paths), h, w), mask_arr.shape
        return t1 - t, time.perf_counter() - t1

    # -- (c) ----------------------------------------------------------------------------------

    def run_c(self) -> None:
        assert self.best is not None
        b, n = self.best.batch or 1, self.a.c_frames
        ray_ok = ray_importable()
        kinds = {"auto": ["ray" if ray_ok else "threads"], "both": ["ray", "threads"]}.get(self.a.job, [self.a.job])
        input_dir = self.work / "c-input"
        input_dir.mkdir(exist_ok=True)
        for q in self.frame_paths[:n]:
            target = input_dir / q.name
            if not target.exists():
                os.link(q, target)
        what = {
            "ray": "whole job: run_label_job on a local Ray (read -> Predictor -> write)",
            "threads": "whole job without Ray: read_frames -> Predictor -> write_outputs in threads",
        }
        for kind in kinds:
            for decode in ("cpu", "gpu"):
                row = Row("c", kind if decode == "cpu" else f"{kind}-gpu-decode", what[kind], b)
                if decode == "gpu":
                    row.what += ", JPEGs decoded by the Predictor on the GPU"
                    if not self.cuda:
                        self.skipped(row, NO_GPU)
                        continue
                    if not predictor_decodes():
                        self.skipped(row, "not run: this Predictor has no decode option")
                        continue
                if kind == "ray" and not ray_ok:
                    self.skipped(row, "not run: Ray cannot be imported here")
                    continue
                if self.over_budget(row, 30):
                    continue
                out = self.work / f"c-output-{row.variant}"
                try:
                    job = self.job_ray if kind == "ray" else self.job_threads
                    frames, secs, note = job(input_dir, out, b, decode)
                except Exception as e:  # noqa: BLE001 - one failing variant must not lose the rest of the table
                    self.skipped(row, f"failed: {type(e).__name__}: {str(e)[:200]}")
                    continue
                finally:
                    shutil.rmtree(out, ignore_errors=True)
                row.frames, row.seconds, row.fps, row.note = frames, secs, frames / secs, note
                self.add(row)

    def job_ray(self, input_dir: Path, out: Path, b: int, decode: str) -> tuple[int, float, str]:
        import ray

        from segray.labelling.job import LabelOptions, run_label_job

        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        t = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = time.perf_counter() - t
        try:
            kw = {"decode": decode} if decode != "cpu" else {}
            opts = LabelOptions(model=self.model, input=str(input_dir), output=str(out), batch_size=b, **kw)
            s = run_label_job(opts)
        finally:
            ray.shutdown()
        if s.failed or s.labelled != self.a.c_frames:
            raise RuntimeError(f"{s.labelled} labelled, {s.failed} failed of {self.a.c_frames}")
        note = f"Ray start {started:.1f} s not counted; first batch written after {s.first_output_s} s"
        return s.labelled, float(s.seconds), note

    def job_threads(self, input_dir: Path, out: Path, b: int, decode: str) -> tuple[int, float, str]:
        """The job's three stage functions in threads: ``--readers`` read_frames calls of
        ``--read-batch`` frames at once, the Predictor on batches of ``b`` in this thread, and
        ``--writers`` write_outputs calls of ``--write-batch`` frames at once."""
        import numpy as np

        from segray.frames.listing import list_folder
        from segray.labelling.read import read_frames
        from segray.labelling.write import write_outputs
        from segray.models.artifact import read_info

        info = read_info(self.model)
        pre = info.preprocessing.to_dict()
        table = list_folder(str(input_dir))
        uris = np.array(table.column("uri").to_pylist(), dtype=object)
        rels = np.array(table.column("relative_path").to_pylist(), dtype=object)
        rb, wb = self.a.read_batch, self.a.write_batch
        kw = {"decode": decode} if decode != "cpu" else {}
        write_args = (str(out), "gpu-label-bench", info.model_id, info.label_map.to_dict())
        t = time.perf_counter()
        reads: deque[Future[dict[str, Any]]] = deque()
        writes: list[Future[dict[str, Any]]] = []
        with ThreadPoolExecutor(self.a.readers) as rpool, ThreadPoolExecutor(self.a.writers) as wpool:
            starts = iter(range(0, len(uris), rb))

            def submit_read() -> None:
                i = next(starts, None)
                if i is not None:
                    chunk = {"uri": uris[i : i + rb], "relative_path": rels[i : i + rb]}
                    reads.append(rpool.submit(read_frames, chunk, preprocessing=pre, max_pixels=2**28, **kw))

            for _ in range(2 * self.a.readers):
                submit_read()
            p = self.predictor(decode)  # its start-up overlaps the first reads, as an actor's does
            ready = time.perf_counter() - t
            pending: list[dict[str, Any]] = []
            labelled: list[dict[str, Any]] = []
            while reads or pending:
                if reads:
                    pending.append(reads.popleft().result())
                    submit_read()
                while pending and (sum(len(x["uri"]) for x in pending) >= b or not reads):
                    head, tail = split(concat(pending), b)
                    pending[:] = [] if tail is None else [tail]
                    labelled.append(p(head))
                    if sum(len(x["uri"]) for x in labelled) >= wb or not (reads or pending):
                        writes.append(wpool.submit(write_outputs, concat(labelled), *write_args))
                        labelled = []
            done = [f.result() for f in writes]
        secs = time.perf_counter() - t
        ok = sum(int(np.sum(d["labelled"])) for d in done)
        failed = sum(int(np.sum(d["failed"])) for d in done)
        if failed or ok != len(uris):
            raise RuntimeError(f"{ok} labelled, {failed} failed of {len(uris)}")
        steady = ok / (secs - ready) if secs > ready else float("nan")
        note = (
            f"model start-up {ready:.1f} s counted ({steady:.1f} frames/s after it); "
            f"{self.a.readers} read x {min(8, rb)} fetch threads, {self.a.writers} write x 8 threads"
        )
        return ok, secs, note


def predictor_decodes() -> bool:
    """Whether this segray's Predictor and read stage take ``decode="gpu"`` (nvJPEG in the Predictor)."""
    import inspect

    from segray.labelling.read import read_frames
    from segray.tasks.semantic.predict import Predictor

    return all("decode" in inspect.signature(f).parameters for f in (Predictor, read_frames))


def ray_importable() -> bool:
    """Ray itself, not a namespace package made of a folder named ray (Ray's own /tmp/ray, say)."""
    try:
        import ray
    except ImportError:
        return False
    return hasattr(ray, "init")


def check_counts(counts: Any, frame_size: tuple[int, int]) -> None:
    import numpy as np

    total = np.asarray(counts).sum(axis=1)
    if not (total == frame_size[0] * frame_size[1]).all():
        raise RuntimeError(f"class counts add up to {total[:3]}, not {frame_size[0] * frame_size[1]} per frame")


def concat(batches: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    if len(batches) == 1:
        return batches[0]
    return {key: np.concatenate([np.asarray(x[key]) for x in batches]) for key in batches[0]}


def split(batch: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if len(batch["uri"]) <= n:
        return batch, None
    return {k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# torch.compile, in a child process the parent can stop


def compile_child(a: argparse.Namespace) -> None:
    import torch

    from segray.tasks.semantic.predict import Predictor

    a.budget_s, a.workdir = 1e9, None
    bench = Bench(a)
    p = Predictor(a.model_dir, device=a.device, torch_threads=a.torch_threads)
    x = bench.bare_input(p, a.batch)
    frames, secs = bench.timed(bench.bare_step(p, x), a.batch, a.seconds)
    eager = frames / secs
    compiled = torch.compile(p.model)
    t = time.perf_counter()
    bench.bare_step(p, x, compiled)()
    bench.sync()
    compile_s = time.perf_counter() - t
    frames, secs = bench.timed(bench.bare_step(p, x, compiled), a.batch, a.seconds, warmup=3)
    d = {"frames": frames, "seconds": secs, "fps": frames / secs, "eager_fps": eager, "compile_s": compile_s}
    print("COMPILED " + json.dumps(d), flush=True)
    shutil.rmtree(bench.work, ignore_errors=True)


# --------------------------------------------------------------------------------------------


def environment(device: Any, bundle: dict[str, Any] | None) -> dict[str, Any]:
    import torch
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_count": os.cpu_count(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "ray": ray_importable(),
        "bundle": bundle,
    }
    for mod in ("segmentation_models_pytorch", "timm", "huggingface_hub", "segray"):
        m = importlib.import_module(mod)
        env[mod] = {"version": getattr(m, "__version__", "?"), "from": str(Path(m.__file__ or "?").parent)}
    return env


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_label.json"), help="the table as JSON")
    ap.add_argument("--tiny", action="store_true", help="tiny encoder, 64x128 input, few frames: CPU, seconds")
    ap.add_argument("--model", help="a trained artifact to measure instead of an untrained UNet (its input size)")
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cuda or cpu")
    ap.add_argument("--encoder", help="default resnet34; tiny: " + TINY_ENCODER)
    ap.add_argument("--height", type=int, help="model input height (default 512; tiny 64)")
    ap.add_argument("--width", type=int, help="model input width (default 1024; tiny 128)")
    ap.add_argument("--frame-size", type=int, nargs=2, metavar=("H", "W"), help="default 1024 2048; tiny 128 256")
    ap.add_argument("--batches", type=int, nargs="+", help="(a)'s batch sizes (default 1 4 8 16 32; tiny 1 4 8)")
    ap.add_argument("--seconds", type=float, help="seconds per (a) measurement (default 3; tiny 0.5)")
    ap.add_argument("--b-frames", type=int, help="frames per (b) variant (default 256; tiny 16)")
    ap.add_argument("--c-frames", type=int, help="frames for (c) (default 1024; tiny 32)")
    ap.add_argument("--distinct", type=int, default=8, help="distinct synthetic frames (the rest are copies)")
    ap.add_argument(
        "--job",
        choices=["auto", "ray", "threads", "both"],
        help="(c): auto = Ray if it imports (default; tiny: threads)",
    )
    ap.add_argument("--readers", type=int, default=2, help="(c) without Ray: read_frames calls at once")
    ap.add_argument("--writers", type=int, default=2, help="(c) without Ray: write_outputs calls at once")
    ap.add_argument("--read-batch", type=int, default=16, help="(c) without Ray: frames per read_frames call")
    ap.add_argument("--write-batch", type=int, default=128, help="(c) without Ray: frames per write_outputs call")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="(a) under torch.compile")
    ap.add_argument("--budget-s", type=float, help="stages not started by then are skipped (default 400; tiny 600)")
    ap.add_argument("--torch-threads", type=int, help="torch CPU threads (default 0: torch's own; tiny 1)")
    ap.add_argument("--bundle", help="folder of wheels from bench/gpu_bundle.sh, used for what is missing")
    ap.add_argument("--site", default=str(Path(tempfile.gettempdir()) / "segray-gpu-site"), help="unpack them here")
    ap.add_argument("--workdir", help="frames, model and outputs (default: a new temporary folder, removed)")
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for key, value in DEFAULTS["tiny" if a.tiny else "gpu"].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.frame_size = tuple(a.frame_size)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    bundle = unpack_bundle(Path(a.bundle), Path(a.site)) if a.bundle else None
    if bundle and bundle["unpacked"]:
        log(f"bundle: unpacked {len(bundle['unpacked'])} wheels into {a.site} ({bundle['mode']})")
    if not _findable(PROBE):
        sys.exit(
            f"{PROBE} is not installed here: make a bundle with `bash bench/gpu_bundle.sh` where PyPI is "
            "reachable, bring bench/gpu-bundle along, and run bash bench/gpu_label.sh (it passes --bundle)"
        )
    # The compile child and Ray's workers find segray (and the unpacked wheels) as this process does.
    extra = [str(REPO), *([a.site] if bundle else [])]
    os.environ["PYTHONPATH"] = os.pathsep.join([*extra, *filter(None, [os.environ.get("PYTHONPATH")])])
    warnings.filterwarnings("ignore", message=".*decod.*deprecated.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    if a.compile_child:
        compile_child(a)
        return 0
    bench = Bench(a)
    log(f"device {bench.device}; budget {a.budget_s:g} s; work folder {bench.work}")
    try:
        bench.setup()
        p = bench.predictor()
        bench.run_a(p)  # no table without (a): an error here ends the run
        bench.guarded("b", functools.partial(bench.run_b, p))
        bench.guarded("b", functools.partial(bench.run_agreement, p))
        del p
        if bench.cuda:
            bench.torch.cuda.empty_cache()
        bench.guarded("c", bench.run_c)
        bench.guarded("a", bench.run_a_compile)
    finally:
        if not a.workdir:
            shutil.rmtree(bench.work, ignore_errors=True)
    rows = sorted(bench.rows, key=lambda r: r.id)  # (a) rows together, compile included
    table = markdown(rows)
    best = bench.best
    summary = {
        "best_batch": best.batch if best else None,
        "a_best_fps": best.fps if best else None,
        **{f"{r.id}/a {r.variant}": r.ratio for r in rows if r.id != "a" and r.ratio is not None},
    }
    result = {
        "config": {k: v for k, v in vars(a).items() if k not in ("compile_child", "model_dir", "batch")},
        "environment": environment(bench.device, bundle),
        "seconds_total": round(time.perf_counter() - bench.t0, 1),
        "rows": [asdict(r) for r in rows],
        "summary": summary,
        "table": table,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    env = result["environment"]
    print(
        f"\n{env['gpu'] or 'CPU'} ({os.cpu_count()} cores), torch {env['torch']}, torchvision {env['torchvision']}, "
        f"{a.encoder} UNet at {a.height}x{a.width}, frames {a.frame_size[0]}x{a.frame_size[1]} JPEG "
        f"(~{bench.jpeg_kib:.0f} KiB), {result['seconds_total']} s in all; JSON: {out}\n"
    )
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
