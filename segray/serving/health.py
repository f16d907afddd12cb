"""Whether a replica can answer: the reason it cannot, for ``/healthz`` (503) and Serve's health check.

Two things make a replica useless while its process is alive:

- **A stuck model call.** Every request has a deadline; windowed labelling stops within one batch
  of windows once its request is cancelled, so a model call should never run much longer than the
  deadline. One that runs longer than ``deadline_s + stuck_margin_s`` is stuck (a decoder or kernel
  that does not return): ``/healthz`` answers 503, and Serve's health check fails, so Serve replaces
  the replica.
- **A lagging event loop.** Requests, ``/healthz`` itself and Serve's health check run on the
  replica's event loop; anything that holds it delays all of them. A task wakes every
  ``TICK_S`` and notes how late it woke; ``/healthz`` answers 503 while the worst lag of the last
  ``LAG_MEMORY_S`` is above ``max_loop_lag_s``, so a load balancer stops sending requests to the
  replica for a while. While the loop is held, nothing answers at all, which a prober sees as a
  timeout. A lag that has passed does not fail Serve's health check: the replica works again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

#: How often the event loop's lag is measured (seconds).
TICK_S = 0.25
#: How long a lag keeps ``/healthz`` at 503 (seconds).
LAG_MEMORY_S = 60.0
#: Lags shorter than this are not recorded (seconds): a busy loop is late by milliseconds.
LAG_NOTED_S = 0.05


class Watchdog:
    """The replica's health from the model call's duration and the event loop's recent lag."""

    def __init__(self, deadline_s: float, stuck_margin_s: float, max_loop_lag_s: float) -> None:
        self.deadline_s = deadline_s
        self.stuck_margin_s = stuck_margin_s
        self.max_loop_lag_s = max_loop_lag_s
        self._lags: deque[tuple[float, float]] = deque()  # (when, seconds late), oldest first
        self._task: asyncio.Task[None] | None = None

    def note_lag(self, now: float, lag: float) -> None:
        if lag >= LAG_NOTED_S:
            self._lags.append((now, lag))
        while self._lags and self._lags[0][0] < now - LAG_MEMORY_S:
            self._lags.popleft()

    def loop_lag(self, now: float) -> float:
        """The worst lag (seconds) of the last ``LAG_MEMORY_S``; 0 when none was noted."""
        return max((lag for when, lag in self._lags if when >= now - LAG_MEMORY_S), default=0.0)

    def stuck(self, model_call_s: float | None) -> str | None:
        """Why the model call that has run ``model_call_s`` seconds is stuck, or None."""
        limit = self.deadline_s + self.stuck_margin_s
        if model_call_s is not None and model_call_s > limit:
            return (
                f"a model call has run for {model_call_s:.0f} s, longer than the {self.deadline_s:g} s request "
                f"deadline plus {self.stuck_margin_s:g} s: the replica is stuck"
            )
        return None

    def reason(self, now: float, model_call_s: float | None) -> str | None:
        """Why the replica should get no requests now, or None when it is healthy."""
        stuck = self.stuck(model_call_s)
        if stuck:
            return stuck
        lag = self.loop_lag(now)
        if lag > self.max_loop_lag_s:
            return (
                f"the event loop fell {lag:.1f} s behind within the last {LAG_MEMORY_S:.0f} s, above the "
                f"{self.max_loop_lag_s:g} s limit: requests and health checks were waiting"
            )
        return None

    def watch(self) -> None:
        """Start measuring the running event loop's lag (once; again if the task ended)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._measure())

    async def _measure(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.note_lag(now, now - start - TICK_S)
