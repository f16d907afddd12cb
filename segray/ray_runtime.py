"""Joining Ray from a command: one place, below every command that needs a Ray (label, demo, train,
landcover), so that each keeps the command's own SIGTERM handling."""

from __future__ import annotations

import os
import signal
import threading


def init_ray(address: str | None) -> None:
    """Join the Ray at ``address`` (else ``$RAY_ADDRESS``, else start a local one), unless connected.

    ``ray.init`` replaces the process's SIGTERM handling: a Python handler that exits with status 15
    from wherever the main thread is, and in Ray's core worker a C++ failure-signal handler that prints
    a stack dump for SIGTERM and leaves the process to abort on its way out (exit 134). A Python
    handler that was installed before (``segray.cli.main``'s, which stops the command cleanly with exit
    143) is put back after it.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    ray.init(address=address, log_to_driver=True)
    if callable(before):
        signal.signal(signal.SIGTERM, before)
