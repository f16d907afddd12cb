"""Faults during labelling: a killed inference actor, a killed driver, an S3 outage.

Each ends with exactly one stats row and one mask per input frame, and no reader ever sees a
half-written output file.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers.common import ROOT
from helpers.frames import write_frames
from helpers.seaweed import SeaweedS3
from helpers.tables import read_table
from PIL import Image

from segray import storage
from segray.labelling.job import LabelOptions, RunSummary, run_label_job

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def frame_set(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.png")}


def assert_exactly_once(output: str, frames: set[str]) -> None:
    stats = read_table(output, "stats")
    rels = stats.column("relative_path").to_pylist()
    assert len(rels) == len(set(rels)), "duplicate stats rows"
    assert set(rels) == frames
    for rel in frames:
        assert storage.exists(storage.join(output, "masks", rel + ".png")), rel


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def stats_parts(output: str) -> int:
    return len(storage.list_files(storage.join(output, "stats"), (".parquet",)))


class RunInThread(threading.Thread):
    def __init__(self, opts: LabelOptions) -> None:
        super().__init__(daemon=True)
        self.opts, self.summary, self.error = opts, None, None

    def run(self) -> None:
        try:
            self.summary: RunSummary | None = run_label_job(self.opts)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e


class CompletenessWatcher(threading.Thread):
    """Reads every visible output file over and over; any file that does not parse fully is a failure."""

    def __init__(self, output: str) -> None:
        super().__init__(daemon=True)
        self.output, self.stop, self.bad, self.checked = output, threading.Event(), [], 0

    def run(self) -> None:
        fs, _ = storage.resolve(self.output)
        while not self.stop.is_set():
            try:
                paths = storage.list_files(self.output, (".parquet", ".png", ".json"))
            except storage.StorageError:
                continue
            for path in paths:
                try:
                    with fs.open_input_stream(path) as f:
                        data = f.read()
                except FileNotFoundError:
                    continue  # replaced between listing and reading
                try:
                    if path.endswith(".parquet"):
                        pq.read_table(io.BytesIO(data))
                    elif path.endswith(".png"):
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                    self.checked += 1
                except Exception as e:  # noqa: BLE001 - recorded as the failure it is
                    self.bad.append((path, repr(e)))
            time.sleep(0.05)


def predictor_pids() -> list[int]:
    """PIDs of this session's inference actors (children of this Ray's raylet)."""
    import psutil
    import ray

    node = ray._private.worker._global_node
    raylet = node.all_processes["raylet"][0].process.pid
    out = []
    for p in psutil.Process(raylet).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::MapWorker") and "Predictor" in title:
            out.append(p.pid)
    return out


def test_inference_actor_killed_mid_run(tmp_path: Path, tiny_model: str) -> None:
    write_frames(tmp_path / "in", [(48, 64)] * 160)
    frames = frame_set(tmp_path / "in")
    out = str(tmp_path / "out")
    job = RunInThread(
        LabelOptions(model=tiny_model, input=str(tmp_path / "in"), output=out, batch_size=2, write_batch_size=4)
    )
    job.start()
    wait_for(lambda: stats_parts(out) >= 1 or not job.is_alive(), 300, "no output within 300 s")
    pids = predictor_pids()
    assert job.is_alive() and pids, "the job finished before the actor could be killed: make it longer"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed_at = stats_parts(out)
    job.join(600)
    assert job.error is None, job.error
    assert job.summary is not None and job.summary.labelled == len(frames) and job.summary.failed == 0
    assert stats_parts(out) > killed_at, "nothing was written after the kill"
    assert_exactly_once(out, frames)


def label_script(tiny_model: str, src: Path, out: Path) -> list[str]:
    import ray

    return [
        sys.executable, str(ROOT / "jobs" / "label_frames.py"), "--model", tiny_model, "--input", str(src),
        "--output", str(out), "--address", ray.get_runtime_context().gcs_address,
        "--batch-size", "2", "--write-batch-size", "4",
    ]  # fmt: skip


def test_driver_killed_then_rerun_finishes_exactly_once(tmp_path: Path, tiny_model: str) -> None:
    write_frames(tmp_path / "in", [(48, 64)] * 160)
    frames = frame_set(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    watcher = CompletenessWatcher(str(out))
    watcher.start()
    try:
        # The killed driver's lease lapses 2 s after its last heartbeat, before the rerun below.
        env = {**os.environ, "SEGRAY_LEASE_TTL_S": "2"}
        driver = subprocess.Popen(label_script(tiny_model, tmp_path / "in", out), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, env=env)  # fmt: skip
        wait_for(lambda: stats_parts(str(out)) >= 2 or driver.poll() is not None, 300, "no output within 300 s")
        assert driver.poll() is None, "the driver finished before it could be killed: make the run longer"
        driver.kill()
        driver.wait(30)
        partial = read_table(str(out), "stats").num_rows
        assert 0 < partial < len(frames)
        time.sleep(3)  # the dead driver's tasks are torn down by Ray; nothing may appear half-written
        rerun = subprocess.run(label_script(tiny_model, tmp_path / "in", out), capture_output=True, text=True,
                               timeout=600)  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        already = len(frames) - int(rerun.stdout.split(" labelled")[0].rsplit(" ", 1)[-1])
        assert f"{already} already done" in rerun.stdout and already >= partial
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert watcher.bad == [], watcher.bad[:5]
    assert watcher.checked > 0
    assert_exactly_once(str(out), frames)
    # Leftovers of the kill are hidden temporaries only (never *.parquet / *.png names).
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".") and not p.name.endswith(".tmp")]


def put_frames_s3(prefix: str, n: int, tmp: Path) -> set[str]:
    paths = write_frames(tmp, [(48, 64)] * n)
    for p in paths:
        storage.write_bytes(storage.join(prefix, str(p.relative_to(tmp))), p.read_bytes())
    return {str(p.relative_to(tmp)) for p in paths}


def test_s3_outage_mid_run_is_ridden_out(tmp_path: Path, tiny_model: str, s3: SeaweedS3, s3_prefix: str) -> None:
    frames = put_frames_s3(f"{s3_prefix}/in", 120, tmp_path / "src")
    out = f"{s3_prefix}/out"
    job = RunInThread(
        LabelOptions(model=tiny_model, input=f"{s3_prefix}/in", output=out, batch_size=2, write_batch_size=4)
    )
    job.start()
    wait_for(lambda: stats_parts(out) >= 1 or not job.is_alive(), 300, "no output within 300 s")
    assert job.is_alive(), "the job finished before the outage: make it longer"
    s3.stop()
    time.sleep(10)
    s3.start_again()
    job.join(900)
    assert not job.is_alive(), "job still running 15 minutes after the outage"
    if job.error is not None:  # allowed: a clear failure, then a rerun completes exactly once
        assert "s3://" in str(job.error), job.error
        run_label_job(LabelOptions(model=tiny_model, input=f"{s3_prefix}/in", output=out))
    else:
        assert job.summary is not None and job.summary.failed == 0, "frames were failed by a 10 s outage"
    assert_exactly_once(out, frames)
    again = run_label_job(LabelOptions(model=tiny_model, input=f"{s3_prefix}/in", output=out))
    assert (again.labelled, again.failed, again.skipped_done) == (0, 0, len(frames))
    assert np.isclose(read_table(out, "stats").num_rows, len(frames))


def test_sigterm_stops_the_driver_cleanly_then_a_rerun_finishes_exactly_once(tmp_path: Path, tiny_model: str) -> None:
    """SIGTERM (``ray job stop``, a scheduler's timeout, ``kill``) to a labelling driver: exit 143 with
    one line saying so, no C++ stack dump or abort, the output's lease released (not left to lapse)."""
    from segray.outputs.lease import read_lease

    write_frames(tmp_path / "in", [(48, 64)] * 160)
    frames = frame_set(tmp_path / "in")
    out = tmp_path / "out"
    driver = subprocess.Popen(label_script(tiny_model, tmp_path / "in", out), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: stats_parts(str(out)) >= 1 or driver.poll() is not None, 300, "no output within 300 s")
    assert driver.poll() is None, "the driver finished before SIGTERM: make the run longer"
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-3000:]
    for dump in ("SIGTERM received", "Stack trace", "SIGABRT", "core dumped", "Traceback"):
        assert dump not in err, err[-3000:]
    assert "segray: stopped by SIGTERM; what was written is kept, and rerunning the same command finishes" in err
    lease = read_lease(str(out))
    assert lease is not None and lease.released and lease.pid == driver.pid
    partial = read_table(str(out), "stats").num_rows
    assert 0 < partial < len(frames)
    rerun = subprocess.run(label_script(tiny_model, tmp_path / "in", out), capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "took over the lease" not in rerun.stderr  # released at once, not lapsed
    already = len(frames) - int(rerun.stdout.split(" labelled")[0].rsplit(" ", 1)[-1])
    assert f"{already} already done" in rerun.stdout and already >= partial
    assert_exactly_once(str(out), frames)
