"""What a long stage shows while it runs, and how much of Ray's own logging reaches the user.

A long stage (training, labelling) shows one progress display: a live bar on a terminal, and on
anything else (a file, a pipe, ``ray job logs``) a plain line every ``every`` seconds and one at the
end, so that a log stays readable and short. Ray's per-result dumps, checkpoint notices and
actor warnings are for debugging Ray itself: they reach the user only with ``segray -v``
(:func:`segray.ray_runtime.init_ray` forwards the workers' output to the driver only then).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

#: The environment variable that carries the command's verbosity to the processes it starts.
VERBOSE_ENV = "SEGRAY_VERBOSE"

#: Seconds between plain progress lines, unless ``--progress-every`` says otherwise.
DEFAULT_EVERY = 30.0


@dataclass
class Settings:
    """The command's verbosity (``-v`` count) and seconds between plain progress lines."""

    verbose: int = 0
    every: float = DEFAULT_EVERY


SETTINGS = Settings(verbose=int(os.environ.get(VERBOSE_ENV, "0") or 0))


def configure(verbose: int = 0, every: float | None = None) -> None:
    """Set the command's verbosity and plain-line interval (None: :data:`DEFAULT_EVERY`)."""
    SETTINGS.verbose = verbose
    SETTINGS.every = DEFAULT_EVERY if every is None else every
    os.environ[VERBOSE_ENV] = str(verbose)


def ray_log_level(verbose: int | None = None) -> int:
    """The level of Ray's own logs in the driver: errors only by default, Ray's usual INFO with ``-v``,
    DEBUG with ``-vv``."""
    v = SETTINGS.verbose if verbose is None else verbose
    return logging.ERROR if v <= 0 else logging.INFO if v == 1 else logging.DEBUG


def quiet_ray_driver() -> None:
    """In the driver, before ``ray.init`` (which takes :func:`ray_log_level` for the ``ray`` logger): what
    Ray Data prints (execution plans, progress bars) held back by default; the stage's own progress
    display replaces it. Only the console is quietened: Ray Data's log file keeps everything."""
    if SETTINGS.verbose > 0:
        return
    try:
        from ray.data import DataContext  # configures the ``ray.data`` logger on first import
    except ImportError:
        return
    DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(max(handler.level, ray_log_level()))


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """One stage's progress display: a tqdm bar on a terminal, else plain lines every ``every`` seconds.

    ``update(done, total, text)`` may be called as often as convenient; what is printed is throttled
    here. The plain line says done/total, the rate and, with a total, the time left."""

    def __init__(
        self, stage: str, total: int | None = None, unit: str = "it", every: float | None = None,
        stream: TextIO | None = None, terminal: bool | None = None,
    ) -> None:  # fmt: skip
        self.stage, self.total, self.unit = stage, total, unit
        self.every = SETTINGS.every if every is None else every
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.done, self.text = 0, ""
        self._last: float | None = None
        #: (done, when) at the first update: the rate is measured from there.
        self._first: tuple[int, float] | None = None
        self._bar: Any = None
        if is_terminal(self.stream) if terminal is None else terminal:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]

                self._bar = tqdm(total=total, desc=stage, unit=f" {unit}", file=self.stream, dynamic_ncols=True)
            except ImportError:
                self._bar = _OwnBar(self)

    def update(self, done: int, total: int | None = None, text: str = "") -> None:
        """``done`` of ``total`` units so far, and what else the line says (loss, failures)."""
        if self._first is None:
            self._first = (done, time.monotonic())
        self.done, self.text = done, text
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.n = done
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        if (done, text) == self._printed:
            return
        if self._last is None or now - self._last >= self.every:
            self._last = now
            self._print()

    def close(self, text: str | None = None) -> None:
        """The stage ended: the bar is closed, or the last plain line printed."""
        if text is not None:
            self.text = text
        if self._bar is not None:
            self._bar.set_postfix_str(self.text, refresh=False)
            self._bar.close()
            self._bar = None
        elif (self.done, self.text) != self._printed:
            self._print()

    def line(self) -> str:
        """The plain line: stage, done/total, rate, time left, and the caller's text."""
        now = time.monotonic()
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self._first is not None and self.done > self._first[0] and now > self._first[1]:
            # From the first update on: a stage's start-up (workers, model loading) is not its pace.
            rate = (self.done - self._first[0]) / (now - self._first[1])
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        if self.text:
            parts.append(self.text)
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(f"{_duration(elapsed)} elapsed")
        return f"{self.stage}: " + ", ".join(parts)

    #: The (done, text) of the last plain line printed.
    _printed: tuple[int, str] | None = None

    def _print(self) -> None:
        self._printed = (self.done, self.text)
        print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _OwnBar:
    """A one-line bar redrawn in place, where tqdm is not installed."""

    def __init__(self, p: Progress) -> None:
        self.p, self.total, self.n, self.text = p, p.total, 0, ""

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.text = text

    def refresh(self) -> None:
        width = 30
        filled = int(width * self.n / self.total) if self.total else 0
        self.p.done, self.p.text = self.n, self.text
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.p.line()}\033[K", end="", file=self.p.stream,
              flush=True)  # fmt: skip

    def close(self) -> None:
        self.refresh()
        print(file=self.p.stream, flush=True)


class Board:
    """The latest state a worker posted, for the driver to read: a Ray actor (``board_actor``) when the
    poster runs in another process, a plain object when it runs in the driver's."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def post(self, state: dict[str, Any]) -> None:
        self.state = state

    def read(self) -> dict[str, Any]:
        return self.state


def board_actor() -> Any:
    """A :class:`Board` as a Ray actor that takes no CPU (workers post, the driver reads)."""
    import ray

    # One call at a time: the posts of one worker are applied in the order it made them.
    return ray.remote(num_cpus=0)(Board).remote()


def post(board: Any, state: dict[str, Any]) -> None:
    """Post ``state`` to ``board`` (an actor handle or a :class:`Board`) without waiting."""
    if board is None:
        return
    if isinstance(board, Board):
        board.post(state)
    else:
        board.post.remote(state)


def read(board: Any) -> dict[str, Any]:
    """The board's latest state (``{}`` if an actor does not answer within a few seconds)."""
    if isinstance(board, Board):
        return board.read()
    import ray

    try:
        return dict(ray.get(board.read.remote(), timeout=10))
    except Exception:  # noqa: BLE001 - a slow or gone board only costs one refresh of the display
        return {}


class Watcher:
    """Reads a board in a background thread and feeds what it reads to ``render``, until stopped."""

    def __init__(self, board: Any, render: Any, poll: float = 0.5) -> None:
        self.board, self.render, self.poll = board, render, poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segray-progress", daemon=True)

        self._last: dict[str, Any] = {}

    def _show(self) -> None:
        state = read(self.board)
        if state and state != self._last:
            self._last = state
            self.render(state)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            self._show()

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._show()
