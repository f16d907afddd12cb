"""The model side of the endpoint: the labelling job's Predictor over a batch of request frames,
and the answer each request gets (per-class pixels and fractions, mean confidence, the mask as
the same palette PNG the job writes, optionally the frame blended with it).

Resized frames go through the Predictor with the columns the read stage gives it, in one model
call; frames above the window threshold are decoded and labelled window by window with the
Predictor's own window spec and model (segray.tiles.windows), as ``segray label`` labels them, so a
frame gets the same mask online as in the job. Windowed labelling checks the frame's ``cancel``
flag before every batch of windows: a request that gives up (deadline, client gone) stops using
the CPU or GPU within one model call.

Memory: large frames leave freed memory in the C allocator's arenas, which glibc keeps for the
process unless told otherwise. After a large frame the replica calls ``malloc_trim(0)``
(:func:`release_memory`), and its deployment sets glibc's arena count and mapping threshold
(segray.serving.app.REPLICA_ENV), so a replica's resident memory returns to about where it was once
large requests are answered.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from segray.frames.decode import FrameError, decode_frame
from segray.models.artifact import read_info
from segray.models.info import model_info
from segray.outputs.masks import encode_mask_png
from segray.serving.inputs import Frame, RequestError, prepare
from segray.serving.options import ServeOptions
from segray.tasks.semantic.predict import Predictor
from segray.tiles.windows import label_tile

#: Mask weight in the overlay (the rest is the frame).
OVERLAY_ALPHA = 0.5
#: Frames of at least this many pixels are followed by ``malloc_trim`` (:func:`release_memory`).
TRIM_ABOVE_PIXELS = 2**20


@dataclass
class Labelled:
    """One frame's result, or its error (a frame whose windows could not be decoded), or that it
    was cancelled (nobody waits for its answer any more)."""

    mask: np.ndarray
    class_pixels: np.ndarray
    mean_confidence: float
    windowed: bool
    error: str = ""
    cancelled: bool = False

    @classmethod
    def failed(cls, error: str, cancelled: bool = False) -> Labelled:
        return cls(np.zeros((1, 1), np.uint8), np.zeros(0, np.int64), float("nan"), False, error, cancelled)


class Cancelled(Exception):
    """Raised between two window batches of a frame whose request gave up."""


#: Fields of ``segray model info --json`` that any client may see. Left out: where the artifact
#: lives (``uri``), the training recipe (data and run locations), and the locations in the other fields.
PUBLIC_INFO = (
    "model_id",
    "name",
    "format_version",
    "task",
    "arch",
    "encoder",
    "label_map",
    "preprocessing",
    "weights_sha256",
    "saved_at",
    "config",
    "weights",
    "metrics",
)


def is_location(value: Any) -> bool:
    """A path or URI: a string with a slash or backslash (``s3://...``, ``/data/...``, ``runs/x``)."""
    return isinstance(value, str) and ("/" in value or "\\" in value)


def public_model_info(info: dict[str, Any]) -> dict[str, Any]:
    """``segray model info --json`` as a client may see it: the model is named by its model id, and
    no field says where the artifact, its training data or its run live."""
    out = {k: info[k] for k in PUBLIC_INFO if k in info}
    for key in ("config", "metrics"):
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if k != "run" and not is_location(v)}
    return out


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give the pages that the C allocator holds free back to the system (glibc's ``malloc_trim``).

    glibc keeps freed memory in its arenas for reuse: after a large frame that is tens to hundreds
    of megabytes that the replica no longer uses but still holds. Trimming takes milliseconds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class Labeller:
    """Loads the artifact once (as a labelling actor does) and labels batches of request frames."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.info = read_info(opts.model)
        self.model_info = public_model_info(model_info(opts.model))
        self.predictor = Predictor(
            opts.model,
            torch_threads=opts.torch_threads,
            device=opts.device,
            tile_window=opts.tile_window,
            tile_overlap=opts.tile_overlap,
            tile_batch_size=opts.max_batch_size,
            max_pixels=opts.max_pixels,
        )
        pre = self.info.preprocessing
        self.input_size = (pre.height, pre.width)
        self.reference = self.info.train_frame_size or self.input_size
        self.palette = self.info.label_map.palette()
        self.colours = np.asarray(self.palette, dtype=np.uint8).reshape(256, 3)
        self._lock = threading.Lock()  # one batch at a time on the model
        #: When the model call now running started (time.monotonic), None when the model is idle.
        self.call_started: float | None = None
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0
        self.windows = 0
        self.cancelled = 0

    def prepare(self, data: bytes, cancel: threading.Event | None = None) -> Frame:
        return prepare(data, *self.input_size, self.opts.max_pixels, self.opts.tile_above, self.reference, cancel)

    def label(self, frames: list[Frame]) -> list[Labelled]:
        """Label the frames whose requests still wait: the resized ones in one Predictor call (with
        the columns the read stage gives it), then the large ones window by window, one at a time."""
        results: list[Labelled | None] = [None] * len(frames)
        with self._lock:
            self.call_started = time.monotonic()
            try:
                small = [i for i, f in enumerate(frames) if f.image is not None and not f.cancel.is_set()]
                if small:
                    for i, r in zip(small, self._label_resized([frames[i] for i in small]), strict=True):
                        results[i] = r
                windowed = False
                for i, f in enumerate(frames):
                    if f.image is None and not f.cancel.is_set():
                        results[i] = self._label_windows(f)
                        windowed = True
            finally:
                self.call_started = None
            done = [r for r in results if r is not None and not r.cancelled]
            self.batches += 1
            self.requests += len(done)
            self.largest_batch = max(self.largest_batch, len(done))
            self.cancelled += len(frames) - len(done)
        if windowed:
            release_memory()
        return [r if r is not None else Labelled.failed("cancelled", cancelled=True) for r in results]

    def _label_resized(self, frames: list[Frame]) -> list[Labelled]:
        n = len(frames)
        h, w = self.input_size
        images = np.stack([f.image for f in frames if f.image is not None]) if n else np.zeros((0, h, w, 3), np.uint8)
        batch = {
            "uri": np.array([f"request-{i}" for i in range(n)], dtype=object),
            "relative_path": np.array([f"request-{i}" for i in range(n)], dtype=object),
            "image": images,
            "encoded": np.array([b""] * n, dtype=object),
            "width": np.array([f.width for f in frames], dtype=np.int32),
            "height": np.array([f.height for f in frames], dtype=np.int32),
            "error": np.array([""] * n, dtype=object),
            "error_stage": np.array([""] * n, dtype=object),
        }
        out = self.predictor(batch)
        return [
            Labelled(
                np.asarray(out["mask"][i]),
                np.asarray(out["class_pixels"][i]),
                float(out["mean_confidence"][i]),
                False,
                str(out["error"][i]),
            )
            for i in range(n)
        ]

    @torch.inference_mode()
    def _label_windows(self, frame: Frame) -> Labelled:
        """A frame above the window threshold: decoded at its own size and labelled in windows with
        the Predictor's window spec and model (its ``label_large``), checking ``frame.cancel`` before
        each batch of windows."""
        try:
            rgb = decode_frame(frame.encoded, self.opts.max_pixels)
        except FrameError as e:
            return Labelled.failed(e.reason)
        except Exception as e:  # noqa: BLE001 - a decoder bug answers 400, the replica keeps serving
            return Labelled.failed(f"could not decode the image ({type(e).__name__}: {e})")
        p = self.predictor

        def predict(windows: np.ndarray) -> torch.Tensor:
            if frame.cancel.is_set():
                raise Cancelled
            self.windows += len(windows)
            return p.predict_logits(windows)

        try:
            result = label_tile(rgb, predict, p.tile_spec, p.tile_batch_size)
        except Cancelled:
            return Labelled.failed("cancelled", cancelled=True)
        finally:
            del rgb
        counts = np.bincount(result.mask.ravel(), minlength=p.num_classes)[: p.num_classes]
        return Labelled(result.mask, counts, result.mean_confidence, True)

    def model_call_s(self, now: float | None = None) -> float | None:
        """Seconds the model call now running has taken, None when the model is idle."""
        started = self.call_started
        return None if started is None else (time.monotonic() if now is None else now) - started

    def counters(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "largest_batch": self.largest_batch,
            "windows": self.windows,
            "cancelled": self.cancelled,
        }

    def overlay(self, data: bytes, mask: np.ndarray) -> np.ndarray:
        """The frame at its own size blended with the mask's colours (RGB uint8)."""
        rgb = decode_frame(data, self.opts.max_pixels)
        blend = cv2.addWeighted(rgb, 1.0 - OVERLAY_ALPHA, self.colours[mask], OVERLAY_ALPHA, 0.0)
        return blend

    def answer(self, data: bytes, frame: Frame, result: Labelled, overlay: bool) -> dict[str, Any]:
        """The JSON answer; ``mask_png`` (and ``overlay_png``) as base64 of the PNG bytes."""
        if result.error:
            raise RequestError(400, result.error)
        lm = self.info.label_map
        area = frame.width * frame.height
        body: dict[str, Any] = {
            "model_id": self.info.model_id,
            "model_name": self.info.name,
            "width": frame.width,
            "height": frame.height,
            "windowed": result.windowed,
            "mean_confidence": result.mean_confidence,
            "classes": [
                {
                    "id": c.id,
                    "name": c.name,
                    "color": list(c.color),
                    "pixels": int(result.class_pixels[c.id]),
                    "fraction": float(result.class_pixels[c.id]) / area,
                }
                for c in lm.classes
            ],
            "mask_png": base64.b64encode(self.mask_png(result.mask)).decode("ascii"),
        }
        if overlay:
            body["overlay_png"] = base64.b64encode(self.overlay_png(data, result.mask)).decode("ascii")
        return body

    def png(self, data: bytes, mask: np.ndarray, overlay: bool) -> bytes:
        """The answer to ``Accept: image/png``: the overlay when asked for, else the mask."""
        return self.overlay_png(data, mask) if overlay else self.mask_png(mask)

    def mask_png(self, mask: np.ndarray) -> bytes:
        """The palette PNG ``segray label`` writes under ``masks/``, byte for byte."""
        return encode_mask_png(mask, self.palette)

    def overlay_png(self, data: bytes, mask: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(self.overlay(data, mask), cv2.COLOR_RGB2BGR))
        if not ok:
            raise RequestError(500, "could not encode the overlay")
        return buf.tobytes()
