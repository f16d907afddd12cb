"""No one let in, nothing leaked: a key the job may not read, and the secret searched for everywhere.

The job runs as a separate process (its own local Ray) with a limited S3 identity that may use
only the test bucket. Its input manifest names one object in a bucket it may not read: that frame
must land in ``errors/`` as access denied while the rest are labelled. Then every byte the job
wrote (all objects under its output, Ray's session logs) and printed is searched for the secret.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import s3fs
from helpers.common import ROOT, TINY_ENCODER
from helpers.frames import write_frames
from helpers.seaweed import SeaweedS3
from helpers.tables import read_table

from segray import storage
from segray.labels import CAMVID
from segray.models.artifact import init_artifact

pytestmark = pytest.mark.slow
PRIVATE_BUCKET = "segray-private"


def test_unreadable_key_is_recorded_and_no_secret_escapes(tmp_path: Path, s3: SeaweedS3, s3_prefix: str) -> None:
    admin = s3fs.S3FileSystem(
        key=s3.access_key, secret=s3.secret_key, client_kwargs={"endpoint_url": s3.endpoint}, skip_instance_cache=True
    )
    if not admin.exists(PRIVATE_BUCKET):
        admin.mkdir(PRIVATE_BUCKET)
    frames = write_frames(tmp_path / "src", [(48, 64)] * 3)
    private_key = f"{PRIVATE_BUCKET}/{uuid.uuid4().hex[:8]}/frame.png"
    admin.pipe(private_key, frames[0].read_bytes())
    uris = []
    for p in frames:
        uri = f"{s3_prefix}/in/{p.relative_to(tmp_path / 'src')}"
        storage.write_bytes(uri, p.read_bytes())
        uris.append(uri)
    broken = f"{s3_prefix}/in/broken.png"
    storage.write_bytes(broken, np.random.default_rng(1).bytes(300))
    private_uri = f"s3://{private_key}"
    manifest = f"{s3_prefix}/manifest.csv"
    storage.write_bytes(manifest, ("uri\n" + "\n".join([*uris, broken, private_uri]) + "\n").encode())
    model = f"{s3_prefix}/model"
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64).save(model)
    out = f"{s3_prefix}/out"

    ray_tmp = Path("/tmp") / f"srs{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths must fit
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(s3.env(limited=True), RAY_TMPDIR=str(ray_tmp))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "jobs" / "label_frames.py"),
                "--model",
                model,
                "--input",
                manifest,
                "--output",
                out,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "3 labelled, 2 failed" in proc.stdout

        assert sorted(read_table(out, "stats").column("source_uri").to_pylist()) == sorted(uris)
        errors = {e["source_uri"]: e for e in read_table(out, "errors").to_pylist()}
        assert set(errors) == {broken, private_uri}
        assert "access denied" in errors[private_uri]["error"] and errors[private_uri]["stage"] == "read"
        assert errors[broken]["stage"] == "decode"

        # Everything written and printed, searched for both secrets (and the limited one's key id
        # is allowed: it is not a secret).
        secrets = [s3.limited_secret.encode(), s3.secret_key.encode()]
        haystacks: list[tuple[str, bytes]] = [("stdout", proc.stdout.encode()), ("stderr", proc.stderr.encode())]
        for path in admin.find(out.removeprefix("s3://")):
            haystacks.append((path, admin.cat(path)))
        assert len(haystacks) > 6  # masks, stats, errors, run summary
        assert any(name.endswith("/_lease.json") for name, _ in haystacks)  # the lease record too
        for f in ray_tmp.rglob("*"):
            if f.is_file() and not f.is_socket() and f.stat().st_size < 50_000_000:
                haystacks.append((str(f), f.read_bytes()))
        assert any("/logs/" in name for name, _ in haystacks), "Ray's session logs were not searched"
        leaks = [name for name, data in haystacks for s in secrets if s in data]
        assert leaks == [], leaks
    finally:
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
