"""What a Serve replica is told: :class:`ServeOptions`, declared once for ``segray serve``'s flags and a
Serve config file's ``args:`` (configs/serve.yaml) alike. Light to import (no torch), so that building
the command line's parser does not load the model code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from segray.options import apply_units, check_bounds, opt, parse_window
from segray.serving.inputs import SERVE_MAX_PIXELS
from segray.tasks.batch import DEFAULT_TILE_ABOVE


@dataclass
class ServeOptions:
    """What a replica needs besides its resources (those are the deployment's). Durations are seconds and
    sizes bytes, each optionally with a unit (``10ms``, ``64MiB``), on the command line as in a config file."""

    model: str = opt(help="model artifact folder or s3:// URI", flag="--model")
    #: Frames per model call at most; concurrent requests wait at most ``batch_wait_s`` to fill one.
    max_batch_size: int = opt(8, help="frames per model call at most", flag="--max-batch-size", min=1)
    batch_wait_s: float = opt(
        0.01,
        help="longest a request waits for others to fill a batch: seconds, or with a unit",
        flag="--batch-wait",
        dest="batch_wait",
        unit="seconds",
        shown_default="10ms",
        min=0,
    )
    #: Frames whose header declares more pixels are refused with 413 before any pixel is decoded.
    max_pixels: int = opt(
        SERVE_MAX_PIXELS,
        help="answer 413 to frames whose header declares more pixels, checked before decoding",
        flag="--max-pixels",
        shown_default=f"{SERVE_MAX_PIXELS:,} = 4096x4096",
        min=1,
    )
    #: Request bodies above this are refused with 413 before they are read.
    max_body_bytes: int = opt(
        64 * 2**20,
        help="answer 413 to larger request bodies: bytes, or with a unit such as 64MiB or 50MB",
        flag="--max-body",
        dest="max_body",
        unit="bytes",
        shown_default="64MiB",
        min=1,
    )
    tile_above: float = opt(
        DEFAULT_TILE_ABOVE,
        help="label a frame in windows when a side is above this many times the training frame size, as "
        "`segray label` does",
        flag="--tile-above",
        min=0,
    )
    tile_window: tuple[int, int] | None = opt(
        None,
        help="window HxW for large frames; one number is a square (512 = 512x512)",
        flag="--window",
        default_help="model input",
        parse=parse_window,
    )
    tile_overlap: int | None = opt(
        None, help="window overlap in pixels", flag="--overlap", default_help="window / 4", min=0
    )
    #: torch CPU threads in the replica (0: torch's default, which Ray sets to the replica's CPUs).
    torch_threads: int = opt(
        0,
        help="torch CPU threads per replica",
        flag="--torch-threads",
        default_help="as many as its Ray CPUs, at least 1",
        min=0,
    )
    device: str = opt("auto", help="torch device: auto (cuda if torch sees one), cpu, cuda", flag="--device")
    #: Seconds a request may take in the replica; then it is answered 504 and its work is stopped.
    deadline_s: float = opt(
        30.0,
        help="answer 504 to a request not answered within this time, and stop its frame's work: seconds, or with "
        "a unit such as 500ms",
        flag="--deadline-s",
        unit="seconds",
        shown_default="30",
        above=0,
    )
    #: A model call running longer than ``deadline_s`` + this is stuck: /healthz answers 503 and
    #: Serve's health check fails, so Serve replaces the replica.
    stuck_margin_s: float = opt(
        30.0,
        help="/healthz answers 503, and Serve replaces the replica, when a model call runs longer than the "
        "deadline plus this: seconds, or with a unit",
        flag="--stuck-margin-s",
        unit="seconds",
        shown_default="30",
        above=0,
    )
    #: /healthz answers 503 for a minute after the replica's event loop fell this far behind.
    max_loop_lag_s: float = opt(
        5.0,
        help="/healthz answers 503 for a minute after the replica's event loop fell this far behind: seconds, "
        "or with a unit",
        flag="--max-loop-lag-s",
        unit="seconds",
        shown_default="5",
        above=0,
    )
    #: SHA-256 (hex) of the API key; None: the replica reads SEGRAY_API_KEY from its environment.
    api_key_sha256: str | None = opt(
        None, help="SHA-256 (hex) of the API key (the command reads SEGRAY_API_KEY; a config file may not set it)"
    )

    def __post_init__(self) -> None:
        apply_units(self)  # "500ms", "64MiB" from a config file
        check_bounds(self)
        if self.tile_window is not None:
            self.tile_window = (int(self.tile_window[0]), int(self.tile_window[1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
