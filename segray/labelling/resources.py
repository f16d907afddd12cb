"""What the inference actor pool asks of the cluster: taken from the job's options and the cluster's
capacity (segray.ray_runtime.cluster_capacity: what is up now and what the autoscaler could add)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from segray.ray_runtime import ClusterCapacity

log = logging.getLogger("segray.label")


def gpus_per_actor(requested: float | None, cap: ClusterCapacity) -> float:
    """The option when given; else one GPU per actor when the cluster has or can add GPUs."""
    if requested is not None:
        if requested > 0 and cap.gpus == 0:
            raise ValueError(f"--gpus-per-actor {requested}: the cluster has no GPUs and its autoscaler cannot add any")
        return requested
    return 1.0 if cap.gpus > 0 else 0.0


def pool_size(
    min_actors: int, max_actors: int, gpus: float, cpus_per_actor: float, cap: ClusterCapacity
) -> tuple[int, int]:
    """(min, max) actors. ``max_actors == 0`` means "as many as the cluster can hold".

    With GPUs that is the cluster's GPU capacity (now or after autoscaling) over GPUs per actor;
    without, its CPUs over CPUs per actor (at least one core each: an actor runs at least one
    thread), keeping one CPU free for reads and writes (an actor pool that takes every CPU
    starves the read tasks and the job deadlocks).
    """
    if max_actors > 0:
        return min_actors, max_actors
    per_actor = max(cpus_per_actor, 1.0)
    fit = math.floor(cap.gpus / gpus) if gpus > 0 else math.floor(max(cap.cpus - 1.0, 0.0) / per_actor)
    return min_actors, max(min_actors, fit, 1)


#: CPU-only inference runs single-threaded actors, one per core, up to this many per node (then
#: cores / actors threads each). On 2 cores, 2 actors x 1 thread left 0.5% of the CPU idle where
#: 1 actor x 2 threads left 9%: whenever another process (a read, a write, Ray's own) preempts
#: one thread of an OpenMP team, its partner waits at the next barrier (docs/labelling.md, docs/benchmarks.md).
CPU_ACTORS_PER_NODE = 4
#: Ray CPUs reserved per CPU-only actor: a node's actors leave room for the read and write tasks.
CPU_ACTOR_CPUS = 0.5


@dataclass(frozen=True)
class PoolLayout:
    min_actors: int
    max_actors: int
    cpus_per_actor: float
    torch_threads: int


def pool_layout(
    min_actors: int | None,
    max_actors: int | None,
    cpus_per_actor: float | None,
    torch_threads: int,
    gpus: float,
    cap: ClusterCapacity,
    node_cores: int,
) -> PoolLayout:
    """The inference pool from the options, with None/0 filled in for the hardware.

    GPU actors: one (``--max-actors`` grows it), 1 CPU, the node's cores as torch threads. CPU-only:
    ``min(cores, CPU_ACTORS_PER_NODE)`` actors of :data:`CPU_ACTOR_CPUS` and cores / actors threads.
    """
    cpus = cpus_per_actor if cpus_per_actor is not None else (1.0 if gpus > 0 else CPU_ACTOR_CPUS)
    if min_actors is None and max_actors is None and gpus == 0:
        lo = hi = max(1, min(CPU_ACTORS_PER_NODE, node_cores))
    else:
        lo = min_actors if min_actors is not None else 1
        lo, hi = pool_size(lo, max_actors if max_actors is not None else lo, gpus, cpus, cap)
    threads = torch_threads if torch_threads > 0 else cores_per_actor(cpus, node_cores, hi)
    return PoolLayout(lo, hi, cpus, threads)


def cores_per_actor(cpus_per_actor: float, node_cores: int, actors: int) -> int:
    """Torch threads for each of ``actors`` actors sharing a node's cores (at least its reservation)."""
    return max(1, math.ceil(cpus_per_actor), node_cores // actors)
