"""Pool sizing and GPU choice from the cluster; nightly date templates. No Ray needed."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml
from helpers.common import ROOT

from segray.labelling.nightly import expand, parse_date
from segray.labelling.resources import CPU_ACTOR_CPUS, PoolLayout, gpus_per_actor, pool_layout, pool_size
from segray.ray_runtime import ClusterCapacity, _limits_from_launcher_config

LAPTOP = ClusterCapacity(gpus_now=0, cpus_now=2, gpus_max=None, cpus_max=None)
AUTOSCALING_FROM_ZERO = ClusterCapacity(gpus_now=0, cpus_now=0, gpus_max=16, cpus_max=600)


def test_gpus_follow_what_the_cluster_can_offer() -> None:
    assert gpus_per_actor(None, LAPTOP) == 0.0
    assert gpus_per_actor(None, AUTOSCALING_FROM_ZERO) == 1.0  # none up yet, but the autoscaler can add them
    assert gpus_per_actor(0.5, AUTOSCALING_FROM_ZERO) == 0.5
    with pytest.raises(ValueError, match="no GPUs"):
        gpus_per_actor(1, LAPTOP)


def test_pool_size_auto_and_explicit() -> None:
    assert pool_size(1, 4, 1.0, 1.0, LAPTOP) == (1, 4)  # options win
    assert pool_size(1, 0, 1.0, 1.0, AUTOSCALING_FROM_ZERO) == (1, 16)  # one actor per GPU it can get
    assert pool_size(2, 0, 0.5, 1.0, AUTOSCALING_FROM_ZERO) == (2, 32)
    assert pool_size(1, 0, 0.0, 1.0, LAPTOP) == (1, 1)  # 2 CPUs: one stays free for reads and writes
    assert pool_size(3, 0, 0.0, 1.0, LAPTOP) == (3, 3)
    cpu_farm = ClusterCapacity(gpus_now=0, cpus_now=48, gpus_max=None, cpus_max=None)
    assert pool_size(1, 0, 0.0, 0.5, cpu_farm) == (1, 47)  # at most one actor per core, whatever its reservation


def test_default_layout_cpu_only_is_one_single_threaded_actor_per_core() -> None:
    # 2 cores: 2 actors x 1 thread, 0.5 Ray CPU each, so reads and writes keep a CPU between them.
    assert pool_layout(None, None, None, 0, 0.0, LAPTOP, 2) == PoolLayout(2, 2, CPU_ACTOR_CPUS, 1)
    assert LAPTOP.cpus >= 2 * CPU_ACTOR_CPUS + 0.5 + 0.5  # + one read task and one write task
    assert pool_layout(None, None, None, 0, 0.0, LAPTOP, 1) == PoolLayout(1, 1, CPU_ACTOR_CPUS, 1)
    big = ClusterCapacity(gpus_now=0, cpus_now=16, gpus_max=None, cpus_max=None)
    assert pool_layout(None, None, None, 0, 0.0, big, 16) == PoolLayout(4, 4, CPU_ACTOR_CPUS, 4)  # 4 x 4 threads


def test_default_layout_with_gpus_and_explicit_options() -> None:
    gpu_node = ClusterCapacity(gpus_now=1, cpus_now=8, gpus_max=None, cpus_max=None)
    assert pool_layout(None, None, None, 0, 1.0, gpu_node, 8) == PoolLayout(1, 1, 1.0, 8)
    assert pool_layout(1, 0, None, 0, 1.0, AUTOSCALING_FROM_ZERO, 8) == PoolLayout(1, 16, 1.0, 1)
    # Options win: the previous CPU default (one actor, all cores) is still one flag away.
    assert pool_layout(1, 1, 1.0, 0, 0.0, LAPTOP, 2) == PoolLayout(1, 1, 1.0, 2)
    assert pool_layout(None, 3, None, 2, 0.0, LAPTOP, 2) == PoolLayout(1, 3, CPU_ACTOR_CPUS, 2)


def test_launcher_config_gives_the_autoscaling_maximum(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEGRAY_AUTOSCALING_CONFIG", str(ROOT / "cluster.yaml"))
    limits = _limits_from_launcher_config()
    types = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    want = sum(t["resources"].get("GPU", 0) * t.get("max_workers", 0) for t in types.values())
    assert limits is not None and limits["GPU"] == want > 0
    monkeypatch.setenv("SEGRAY_AUTOSCALING_CONFIG", str(tmp_path / "absent.yaml"))
    assert _limits_from_launcher_config() is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("available_node_types: [1, 2")
    monkeypatch.setenv("SEGRAY_AUTOSCALING_CONFIG", str(bad))
    assert _limits_from_launcher_config() is None


def test_nightly_date_templates() -> None:
    day = date(2026, 11, 21)
    assert expand("s3://fleet/frames/{date}/", day, "input") == "s3://fleet/frames/2026-11-21/"
    assert expand("s3://fleet/{date:%Y/%m/%d}/", day, "input") == "s3://fleet/2026/11/21/"
    with pytest.raises(ValueError, match="no \\{date\\} placeholder"):
        expand("s3://fleet/frames/", day, "output")
    with pytest.raises(ValueError, match="only \\{date\\}"):
        expand("s3://fleet/{day}/{date}", day, "input")
    assert parse_date("2026-11-21") == day
    assert parse_date(None) < date.today()
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_date("21/11/2026")


@pytest.mark.usefixtures("ray_session")
def test_small_jobs_get_one_block_per_actor_and_no_idle_actors() -> None:
    import pyarrow as pa

    from segray.labelling.job import LISTING_BLOCK_ROWS, _spread

    def frames(n: int) -> pa.Table:
        return pa.table({"uri": [f"f{i}.png" for i in range(n)], "relative_path": [f"f{i}.png" for i in range(n)]})

    two = PoolLayout(2, 2, CPU_ACTOR_CPUS, 1)
    ds, pool = _spread(frames(5), two, threads_given=False, cores=2)  # 3 + 2 rows: both actors get work
    assert pool == two and ds.count() == 5 and ds.num_blocks() == 2
    ds, pool = _spread(frames(1), two, threads_given=False, cores=2)  # one frame: one actor, both cores
    assert pool == PoolLayout(1, 1, CPU_ACTOR_CPUS, 2) and ds.count() == 1
    _, pool = _spread(frames(1), two, threads_given=True, cores=2)  # --torch-threads given: kept
    assert pool == PoolLayout(1, 1, CPU_ACTOR_CPUS, 1)
    ds, pool = _spread(frames(10 * LISTING_BLOCK_ROWS), two, threads_given=False, cores=2)  # large: full blocks first
    assert pool == two and ds.count() == 10 * LISTING_BLOCK_ROWS and ds.num_blocks() == 15
    _, pool = _spread(frames(40), PoolLayout(1, 16, 1.0, 1), threads_given=False, cores=8)  # autoscaling pool
    assert pool.min_actors == 1 and pool.max_actors == 14  # 40 frames in blocks of 3: 14 blocks at most


def test_blocks_shrink_towards_the_end_so_no_actor_waits_long_for_another() -> None:
    from segray.labelling.job import LISTING_BLOCK_ROWS, TAIL_BLOCK_ROWS, block_sizes

    sizes = block_sizes(1010, 2)
    assert sum(sizes) == 1010 and max(sizes) == LISTING_BLOCK_ROWS
    assert sizes == sorted(sizes, reverse=True)  # never a big block after a small one
    assert sizes[-4:-1] == [TAIL_BLOCK_ROWS] * 3 and sizes[-1] <= TAIL_BLOCK_ROWS  # a short tail
    # No block is more than an actor's share, however small the job; nothing lost or duplicated.
    for n, actors in [(1, 2), (5, 2), (17, 4), (40, 16), (303, 2), (100_000, 8)]:
        sizes = block_sizes(n, actors)
        assert sum(sizes) == n and max(sizes) <= -(-n // actors) and min(sizes) >= 1
    assert block_sizes(0, 2) == []
