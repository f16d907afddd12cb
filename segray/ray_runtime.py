"""Joining Ray from a command, and what the joined cluster can run: one place, below every command
that needs a Ray (label, demo, train, landcover, serve), so that each keeps the command's own SIGTERM
handling and reads the cluster's capacity the same way."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger("segray.ray")


def init_ray(address: str | None) -> None:
    """Join the Ray at ``address`` (else ``$RAY_ADDRESS``, else start a local one), unless connected.

    ``ray.init`` replaces the process's SIGTERM handling: a Python handler that exits with status 15
    from wherever the main thread is, and in Ray's core worker a C++ failure-signal handler that prints
    a stack dump for SIGTERM and leaves the process to abort on its way out (exit 134). A Python
    handler that was installed before (``segray.cli.main``'s, which stops the command cleanly with exit
    143) is put back after it.

    The workers' output (Ray Train's per-result dumps and checkpoint notices, actor warnings, the
    workers' own log lines) is forwarded to the driver only with ``segray -v``: by default each long
    stage shows its own progress display (:mod:`segray.progress`) and the workers' output stays in
    Ray's log files on each node.
    """
    import ray

    from segray import progress

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    in_main_thread = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    progress.quiet_ray_driver()
    ray.init(address=address, log_to_driver=progress.SETTINGS.verbose > 0, logging_level=progress.ray_log_level())
    if callable(before):
        signal.signal(signal.SIGTERM, before)


# What the connected cluster can run. On an autoscaling cluster the GPU nodes may all be at zero when
# a job starts, so "does the cluster have GPUs" also asks what the autoscaler could add (its node
# types), not only what is up now.


@dataclass(frozen=True)
class ClusterCapacity:
    """GPUs and CPUs up now, and the most the autoscaler could bring up (None: no autoscaler)."""

    gpus_now: float
    cpus_now: float
    gpus_max: float | None
    cpus_max: float | None

    @property
    def gpus(self) -> float:
        return max(self.gpus_now, self.gpus_max or 0.0)

    @property
    def cpus(self) -> float:
        return max(self.cpus_now, self.cpus_max or 0.0)


def cluster_capacity() -> ClusterCapacity:
    """Read the connected Ray cluster's resources now and its autoscaler's maximum."""
    import ray

    now = ray.cluster_resources()
    limits: dict[str, int] | None = None
    try:
        # Ray Train and Ray Data read the autoscaler's node types the same way (private but stable
        # across 2.4x-2.60); None on a cluster without an autoscaler.
        from ray._private.state import state

        limits = state.get_max_resources_from_cluster_config()
    except Exception as e:  # noqa: BLE001 - an unreadable config only costs the autoscaling hint
        log.debug("autoscaler config not readable: %s", e)
    if limits is None:
        limits = _limits_from_launcher_config()
    return ClusterCapacity(
        gpus_now=float(now.get("GPU", 0.0)),
        cpus_now=float(now.get("CPU", 0.0)),
        gpus_max=None if limits is None else float(limits.get("GPU", 0)),
        cpus_max=None if limits is None else float(limits.get("CPU", 0)),
    )


#: Where ``ray up`` leaves the cluster config on the head (the job driver runs there).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def _limits_from_launcher_config() -> dict[str, int] | None:
    """Max resources from the cluster launcher's config: Ray's v1 autoscaler does not publish its node
    types to the GCS (v2 does, read above), but ``ray up`` writes them to the head."""
    path = Path(os.environ.get("SEGRAY_AUTOSCALING_CONFIG") or LAUNCHER_CONFIG).expanduser()
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
        limits: dict[str, int] = {}
        for t in config.get("available_node_types", {}).values():
            for key, amount in (t.get("resources") or {}).items():
                limits[key] = limits.get(key, 0) + int(amount) * int(t.get("max_workers", 0))
        return limits
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError) as e:
        log.warning("%s: cluster config not readable (%s); GPUs counted from the nodes up now", path, e)
        return None
