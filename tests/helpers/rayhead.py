"""A real Ray head for tests: ``ray start --head`` with token authentication, plus ``ray job`` helpers.

Every port is picked free and the head gets a short temp dir of its own, so it runs beside the
session's local Ray (and other test runs) without touching them. It is stopped by killing its
process group, never with ``ray stop`` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class RayHead:
    proc_group: int
    gcs_address: str
    dashboard: str
    temp_dir: Path
    env: dict[str, str] = field(repr=False)  # what a client needs: token mode + token path

    def job(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """``ray job <args>`` against this head, as a user runs it."""
        return subprocess.run(
            [RAY, "job", *args],
            env={**os.environ, **self.env, **(env or {}), "RAY_ADDRESS": self.dashboard},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def submit(self, entrypoint: list[str], working_dir: Path, submission_id: str, timeout: float = 300) -> str:
        """Submit, wait for a terminal state, return it (SUCCEEDED / FAILED / STOPPED)."""
        proc = self.job(
            "submit",
            "--no-wait",
            "--submission-id",
            submission_id,
            "--working-dir",
            str(working_dir),
            "--",
            *entrypoint,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return self.wait(submission_id, timeout)

    def wait(self, submission_id: str, timeout: float = 300) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = re.sub(r"\x1b\[[0-9;]*m", "", self.job("status", submission_id, timeout=60).stdout)
            # `ray job status` prints "Job '<id>' succeeded" / "failed" / "was stopped" when done.
            m = re.search(r"Job '[^']+' (succeeded|failed|was stopped)", out)
            if m:
                return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[m.group(1)]
            time.sleep(2)
        raise TimeoutError(f"job {submission_id} still running after {timeout} s")

    def logs(self, submission_id: str) -> str:
        return self.job("logs", submission_id, timeout=60).stdout

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc_group, sig)
            except ProcessLookupError:
                break
            time.sleep(3 if sig == signal.SIGTERM else 0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_head(
    num_cpus: float = 2,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    attempts: int = 2,
    gcs_port: int | None = None,
) -> RayHead:
    """Start a head on loopback with token auth on; ``env`` goes to the head (and so to its jobs).

    Ray gives a raylet 30 s (hard-coded) to register; on a loaded 2-core machine that can pass, so a
    failed start is retried once on fresh ports.
    """
    for attempt in range(attempts):
        try:
            return _start_ray_head(num_cpus, env, extra_args, gcs_port)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start_ray_head(
    num_cpus: float, env: dict[str, str] | None, extra_args: list[str] | None, gcs_port: int | None
) -> RayHead:
    temp_dir = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Ray's socket paths must fit
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    gcs, dash, client, agent, metrics, agent_grpc, rt_agent = _free_ports(7)
    gcs = gcs_port or gcs
    cmd = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--metrics-export-port={metrics}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rt_agent}",
        f"--num-cpus={num_cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(extra_args or []),
    ]
    head_env = {**os.environ, **client_env, **(env or {}), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    head_env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(cmd, env=head_env, capture_output=True, text=True, timeout=180, start_new_session=True)
    # `ray start` exits once the head is up; the head's processes stay in the session it started.
    pgid = _group_of(temp_dir)
    if proc.returncode != 0 or pgid is None or pgid <= 1:
        if pgid is not None and pgid > 1:
            os.killpg(pgid, signal.SIGKILL)  # a half-started head must not outlive the test
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return RayHead(
        proc_group=pgid,
        gcs_address=f"127.0.0.1:{gcs}",
        dashboard=f"http://127.0.0.1:{dash}",
        temp_dir=temp_dir,
        env=client_env,
    )


def _group_of(temp_dir: Path) -> int | None:
    """The process group of the head's processes (found by their temp dir in the command line)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(temp_dir) in cmdline and "gcs_server" in cmdline:
            return os.getpgid(p.pid)
    return None
