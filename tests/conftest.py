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

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from seaweed import SeaweedS3, create_bucket, start_seaweed  # noqa: E402

from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import init_artifact  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Real datasets live outside the repository: $SEGRAY_DATA_DIR, else ../shared/data beside the checkout.
DATA_DIR = Path(os.environ.get("SEGRAY_DATA_DIR", ROOT.parent / "shared" / "data"))
BUCKET = "segray-test"
#: The tiny encoder every test model uses: fast on 2 CPU cores, small on disk.
TINY_ENCODER = "tu-mobilenetv3_small_050"


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


def write_frames(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, ext: str = ".png") -> list[Path]:
    """Synthetic street frames of the given (height, width) sizes, in two sub-folders."""
    import cv2

    from segray.datasets.synthetic import street_frame

    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        img, _ = street_frame(rng)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        p = folder / f"seq{i % 2}" / f"f{i:04d}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out.append(p)
    return out
