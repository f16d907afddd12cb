"""Nightly fleet labelling for ``ray job submit``: one date's frames, skipping those already labelled.

    ray job submit --working-dir . -- python jobs/nightly_label.py --date 2026-11-21 \\
        --model s3://models/unet --input 's3://fleet/frames/{date}/' --output 's3://fleet/labels/{date}/' \\
        --max-failed-fraction 0.01

Same options as ``segray nightly`` (``segray nightly --help``). Exit codes: 0 done, 2 bad input or
configuration (nothing labelled), 3 more frames failed than --max-failed-fraction allows.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/nightly_label.py", ["nightly"], sys.argv[1:]))
