"""Session-wide real components: one SeaweedFS S3 server and one Ray instance per pytest run.

The S3 server starts first and its endpoint/credentials go into the environment, so the local Ray
that starts next hands them to its workers exactly as a real cluster's environment would.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ on sys.path: test files in every folder import the shared pieces as `helpers.*`.
sys.path.insert(0, str(Path(__file__).parent))

from helpers.common import BUCKET, TINY_ENCODER  # noqa: E402
from helpers.seaweed import SeaweedS3, create_bucket, start_seaweed  # noqa: E402

from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import init_artifact  # noqa: E402


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweed"))
    try:
        create_bucket(server, BUCKET)
        os.environ.update(server.env())
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_session(s3: SeaweedS3) -> Iterator[None]:
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def s3_prefix(s3: SeaweedS3) -> str:
    """A fresh, empty prefix in the test bucket."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained UNet with a tiny encoder and 64x64 input, saved as a local artifact."""
    path = tmp_path_factory.mktemp("models") / "tiny-unet"
    init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64).save(str(path))
    return str(path)
