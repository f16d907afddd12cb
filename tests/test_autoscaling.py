"""Autoscaling with Ray's fake multinode provider and cluster.yaml's own node types (fake GPUs).

The head starts with no worker nodes. A labelling job submitted with ``ray job submit`` asks for a
GPU per inference actor (the default when the autoscaler can add GPU nodes, even with none up), so
GPU nodes come up from zero; when the job is done and the nodes sit idle past the idle timeout,
they go away again. The test records the node-count timeline and asserts both directions.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.common import ROOT, TINY_ENCODER
from helpers.frames import write_frames
from helpers.rayhead import RayHead, start_ray_head

from segray.labels import CAMVID
from segray.models.artifact import init_artifact

pytestmark = pytest.mark.slow
#: The one thing the test changes in cluster.yaml's scaling: minutes, shortened so the test ends.
IDLE_TIMEOUT_MINUTES = 0.25


def fake_cluster_config(cluster_yaml: Path, gcs_port: int) -> dict:
    """cluster.yaml's node types (same resources; GPUs are fake) under the fake multinode provider."""
    real = yaml.safe_load(cluster_yaml.read_text())
    types = copy.deepcopy(real["available_node_types"])
    head = types.pop(real["head_node_type"])
    node_types = {
        # The fake provider names its head "ray.head.default"; resources stay cluster.yaml's.
        "ray.head.default": {"resources": head["resources"], "node_config": {}, "max_workers": 0},
    }
    for name, t in types.items():
        node_types[name] = {
            "resources": {**t["resources"], "object_store_memory": 200 * 1024**2},
            "node_config": {},
            "min_workers": t["min_workers"],
            "max_workers": t["max_workers"],
        }
    return {
        "cluster_name": "segray-fake",
        "max_workers": real["max_workers"],
        "upscaling_speed": real["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{gcs_port}",
        },
        "available_node_types": node_types,
        "head_node_type": "ray.head.default",
        "docker": {},
        "auth": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def fake_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayHead]:
    from helpers.rayhead import _free_ports

    (gcs_port,) = _free_ports(1)
    config = tmp_path_factory.mktemp("fake") / "fake-cluster.yaml"
    config.write_text(yaml.safe_dump(fake_cluster_config(ROOT / "cluster.yaml", gcs_port)))
    head = start_ray_head(
        num_cpus=0,  # cluster.yaml's head runs no model work
        # SEGRAY_AUTOSCALING_CONFIG stands in for ~/ray_bootstrap_config.yaml, where `ray up` puts it.
        env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "SEGRAY_AUTOSCALING_CONFIG": str(config)},
        extra_args=[f"--autoscaling-config={config}"],
        gcs_port=gcs_port,
    )
    try:
        yield head
    finally:
        head.stop()


def alive_worker_types(head: RayHead) -> list[str]:
    """Kinds of the alive non-head nodes, from the dashboard's state API (token in the header)."""
    token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    req = urllib.request.Request(
        f"{head.dashboard}/api/v0/nodes?limit=1000&detail=1", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=20) as r:
        nodes = json.load(r)["data"]["result"]["result"]
    # The fake provider's nodes carry their node type's resources: GPU nodes are the ones with GPUs.
    return sorted(
        f"gpu{int(n['resources_total']['GPU'])}" if n.get("resources_total", {}).get("GPU") else "cpu"
        for n in nodes
        if n["state"] == "ALIVE" and not n.get("is_head_node")
    )


class Timeline(threading.Thread):
    """(seconds since start, worker node types) sampled every second in the background."""

    def __init__(self, head: RayHead) -> None:
        super().__init__(daemon=True)
        self.head, self.samples, self.stop = head, [], threading.Event()
        self.t0 = time.time()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError):  # the dashboard is busy; the next sample will do
                self.samples.append((round(time.time() - self.t0, 1), alive_worker_types(self.head)))
            self.stop.wait(1.0)

    def gpu_nodes(self, at: int) -> int:
        return sum(1 for t in self.samples[at][1] if t.startswith("gpu"))


def test_gpu_nodes_scale_up_from_zero_and_back_down(fake_head: RayHead, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    write_frames(frames, [(48, 64)] * 12)
    model = tmp_path / "model"
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64).save(str(model))
    timeline = Timeline(fake_head)
    timeline.start()
    try:
        while not timeline.samples:
            time.sleep(0.5)
        assert timeline.gpu_nodes(0) == 0, timeline.samples
        sid = f"scale-{uuid.uuid4().hex[:6]}"
        entry = [
            "python", "jobs/label_frames.py", "--model", str(model), "--input", str(frames),
            "--output", str(tmp_path / "out"), "--batch-size", "4",
        ]  # fmt: skip
        state = fake_head.submit(entry, ROOT, sid, timeout=420)
        logs = fake_head.logs(sid)
        assert state == "SUCCEEDED", logs[-4000:]
        assert "12 labelled, 0 failed" in logs
        pool = [line for line in logs.splitlines() if "inference pool" in line]
        assert pool and "1 GPU, 1 CPU and" in pool[0], pool  # GPUs asked for though none was up
        during = len(timeline.samples) - 1
        deadline = time.time() + 240
        while time.time() < deadline and timeline.gpu_nodes(-1) > 0:
            time.sleep(2)
    finally:
        timeline.stop.set()
        timeline.join(timeout=30)
    up = max(timeline.gpu_nodes(i) for i in range(during + 1))
    compact = [s for i, s in enumerate(timeline.samples) if i == 0 or s[1] != timeline.samples[i - 1][1]]
    print("node timeline (s, worker types):", compact)
    assert up >= 1, f"no GPU node came up: {compact}"
    assert timeline.gpu_nodes(-1) == 0, f"GPU nodes did not scale down after the idle timeout: {compact}"
