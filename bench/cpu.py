"""Where the CPU went during a measured span: this process, each kind of Ray process, and idle.

On a 2-core machine every CPU-second that is not the model's is taken from the model, so a
throughput gap is explained by this table: the inference actor's share, the read and write tasks,
the driver (Ray Data's executor loop), Ray's own daemons, and time the cores sat idle (a stall).
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

import psutil


def _kind(p: psutil.Process, me: int) -> str:
    """A process's role, from its title (Ray retitles a worker to the task it is running)."""
    if p.pid == me:
        return "driver (Ray Data executor, iteration)"
    try:
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    title = cmd[0] if cmd else p.name()
    if title.startswith("ray::"):
        task = title[5:].split(" ")[0]
        if "Predictor" in task or task.startswith("MapWorker"):
            return "inference actor"
        if "read_frames" in task:
            return "read tasks"
        if "write_outputs" in task:
            return "write tasks"
        return f"ray worker: {task[:40]}"
    joined = " ".join(cmd)
    for name in ("raylet", "gcs_server", "dashboard/agent.py", "runtime_env/agent", "log_monitor", "monitor.py"):
        if name in joined:
            return f"ray daemon: {name}"
    return f"other: {os.path.basename(title)[:30]}"


class CpuShare:
    """CPU-seconds per process kind (this process and its descendants) and machine idle, sampled."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.seconds: dict[str, float] = defaultdict(float)
        self.idle = 0.0
        self.steal = 0.0
        self.wall = 0.0
        #: (seconds since start, inference actor core-s, idle core-s) per sample interval
        self.timeline: list[tuple[float, float, float]] = []
        self._last: dict[int, float] = {}
        self._procs: dict[int, psutil.Process] = {}
        self._scanned = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, me: psutil.Process) -> None:
        if time.time() - self._scanned > 5.0:  # a scan reads all of /proc: every 5 s, not every sample
            self._scanned = time.time()
            for c in me.children(recursive=True):
                self._procs.setdefault(c.pid, c)
        self._procs.setdefault(me.pid, me)
        actor = 0.0
        for pid, p in list(self._procs.items()):
            try:
                t = p.cpu_times()
                total = t.user + t.system
                kind = _kind(p, me.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._procs.pop(pid)
                continue
            # A process first seen now ran since the last sample at most: its whole CPU time counts
            # only if it was born after the span started.
            base = self._last.get(pid)
            if base is None:
                base = total if p.create_time() < self._start else 0.0
            self.seconds[kind] += total - base
            self._last[pid] = total
            if kind == "inference actor":
                actor += total - base
        idle = psutil.cpu_times().idle
        self.timeline.append((time.time() - self._start, actor, idle - self._idle))
        self._idle = idle

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        self._start = time.time()
        c0 = psutil.cpu_times()
        self._idle = c0.idle
        t0 = time.perf_counter()
        self._sample(me)
        self.seconds.clear()
        self.timeline.clear()
        while not self._stop.wait(self.interval):
            self._sample(me)
        self._sample(me)
        c1 = psutil.cpu_times()
        self.idle = c1.idle - c0.idle
        self.steal = getattr(c1, "steal", 0.0) - getattr(c0, "steal", 0.0)
        self.wall = time.perf_counter() - t0

    def __enter__(self) -> CpuShare:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        cores = psutil.cpu_count() or 1
        budget = self.wall * cores
        lines = [f"CPU over {self.wall:.0f} s x {cores} cores = {budget:.0f} core-s:"]
        for kind, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            if s >= 0.05 * self.interval:
                lines.append(f"    {kind:<42} {s:8.1f} core-s  {s / budget:6.1%}")
        lines.append(f"    {'idle (no process ran)':<42} {self.idle:8.1f} core-s  {self.idle / budget:6.1%}")
        lines.append(f"    {'stolen by the hypervisor':<42} {self.steal:8.1f} core-s  {self.steal / budget:6.1%}")
        lines.append(self.phases())
        return "\n".join(lines)

    def phases(self, busy: float = 1.5) -> str:
        """Idle core-s before the model first kept ``busy`` cores busy, while it ran, and after."""
        rates = [(t, a / self.interval, i) for t, a, i in self.timeline]
        hot = [k for k, (_, a, _) in enumerate(rates) if a >= busy]
        if not hot:
            return "    (the inference actor never kept 1.5 cores busy)"
        first, last = hot[0], hot[-1]
        parts = {
            "start-up": rates[:first],
            "inference": rates[first : last + 1],
            "tail": rates[last + 1 :],
        }
        out = []
        for name, rs in parts.items():
            span = (rs[-1][0] - rs[0][0] + self.interval) if rs else 0.0
            out.append(f"{name} {span:.0f} s (idle {sum(i for _, _, i in rs):.1f} core-s)")
        return "    phases: " + ", ".join(out)
