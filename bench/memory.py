"""Peak-RSS sampling of this process and of Ray's worker processes, for the benchmarks."""

from __future__ import annotations

import os
import threading
import time

import psutil


class PeakRSS:
    """Samples RSS every ``interval`` s: the driver (this process) and every ``ray::`` worker."""

    def __init__(self, interval: float = 1.0, rescan: float = 5.0) -> None:
        # Kept cheap on purpose: a full process scan costs ~12 ms of CPU, which at 5 Hz would
        # steal ~3% of a 2-core machine from the job being measured.
        self.interval = interval
        self.rescan = rescan
        self.driver_peak = 0
        self.workers_peak = 0  # sum over worker processes at one instant
        self.largest_worker_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _workers() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::"):
                out.append(p)
        return out

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        workers: list[psutil.Process] = []
        scanned = 0.0
        while not self._stop.is_set():
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            if time.time() - scanned > self.rescan:
                workers, scanned = self._workers(), time.time()
            total = largest = 0
            for p in workers:
                try:
                    rss = p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                largest = max(largest, rss)
            self.workers_peak = max(self.workers_peak, total)
            self.largest_worker_peak = max(self.largest_worker_peak, largest)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
