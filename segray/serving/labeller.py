"""The model side of the endpoint: the labelling job's Predictor over a batch of request frames,
and the answer each request gets (per-class pixels and fractions, mean confidence, the mask as
the same palette PNG the job writes, optionally the frame blended with it).

The batch handed to the Predictor has the columns the read stage gives it, so a frame takes the
same path online as in ``segray label``: resized frames in one model call, frames above the window
threshold decoded and labelled window by window (segray.tiles.windows).
"""

from __future__ import annotations

import base64
import threading
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from segray.frames.decode import DEFAULT_MAX_PIXELS, decode_frame
from segray.labelling.predict import Predictor
from segray.labelling.read import DEFAULT_TILE_ABOVE
from segray.labelling.write import encode_mask_png
from segray.models.artifact import read_info
from segray.models.info import model_info
from segray.serving.inputs import Frame, RequestError, prepare

#: Mask weight in the overlay (the rest is the frame).
OVERLAY_ALPHA = 0.5


@dataclass
class ServeOptions:
    """What a replica needs besides its resources (those are the deployment's)."""

    model: str
    #: Frames per model call at most; concurrent requests wait at most ``batch_wait_s`` to fill one.
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Request bodies above this are refused with 413 before they are read.
    max_body_bytes: int = 64 * 2**20
    tile_above: float = DEFAULT_TILE_ABOVE
    tile_window: tuple[int, int] | None = None
    tile_overlap: int | None = None
    #: torch CPU threads in the replica (0: torch's default, which Ray sets to the replica's CPUs).
    torch_threads: int = 0
    device: str = "auto"
    #: SHA-256 (hex) of the API key; None: the replica reads SEGRAY_API_KEY from its environment.
    api_key_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")
        if self.max_pixels < 1 or self.max_body_bytes < 1:
            raise ValueError("max_pixels and max_body_bytes must be >= 1")
        if self.tile_window is not None:
            self.tile_window = (int(self.tile_window[0]), int(self.tile_window[1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Labelled:
    """One frame's result, or its error (a frame whose windows could not be decoded)."""

    mask: np.ndarray
    class_pixels: np.ndarray
    mean_confidence: float
    windowed: bool
    error: str = ""


class Labeller:
    """Loads the artifact once (as a labelling actor does) and labels batches of request frames."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self.info = read_info(opts.model)
        self.model_info = model_info(opts.model)
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
        self.requests = 0
        self.batches = 0
        self.largest_batch = 0

    def prepare(self, data: bytes) -> Frame:
        return prepare(data, *self.input_size, self.opts.max_pixels, self.opts.tile_above, self.reference)

    def label(self, frames: list[Frame]) -> list[Labelled]:
        """One Predictor call over the frames, with the columns the read stage gives it."""
        n = len(frames)
        h, w = self.input_size
        images = np.zeros((n, h, w, 3), dtype=np.uint8)
        for i, f in enumerate(frames):
            if f.image is not None:
                images[i] = f.image
        batch = {
            "uri": np.array([f"request-{i}" for i in range(n)], dtype=object),
            "relative_path": np.array([f"request-{i}" for i in range(n)], dtype=object),
            "image": images,
            "encoded": np.array([f.encoded for f in frames], dtype=object),
            "width": np.array([f.width for f in frames], dtype=np.int32),
            "height": np.array([f.height for f in frames], dtype=np.int32),
            "error": np.array([""] * n, dtype=object),
            "error_stage": np.array([""] * n, dtype=object),
        }
        with self._lock:
            out = self.predictor(batch)
            self.batches += 1
            self.requests += n
            self.largest_batch = max(self.largest_batch, n)
        return [
            Labelled(
                np.asarray(out["mask"][i]),
                np.asarray(out["class_pixels"][i]),
                float(out["mean_confidence"][i]),
                bool(out["windowed"][i]),
                str(out["error"][i]),
            )
            for i in range(n)
        ]

    def counters(self) -> dict[str, int]:
        return {"requests": self.requests, "batches": self.batches, "largest_batch": self.largest_batch}

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
