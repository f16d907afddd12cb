"""Constants every test folder uses: where the repository and the real datasets are, the test bucket,
the tiny encoder of every test model."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository's root (this file is tests/helpers/common.py).
ROOT = Path(__file__).resolve().parents[2]
#: Real datasets live outside the repository: $SEGRAY_DATA_DIR, else ../shared/data beside the checkout.
DATA_DIR = Path(os.environ.get("SEGRAY_DATA_DIR", ROOT.parent / "shared" / "data"))
#: The bucket the session's S3 server creates.
BUCKET = "segray-test"
#: The tiny encoder every test model uses: fast on 2 CPU cores, small on disk.
TINY_ENCODER = "tu-mobilenetv3_small_050"
