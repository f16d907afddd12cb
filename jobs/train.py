"""Entry point for ``ray job submit -- python jobs/train.py --config configs/camvid-unet-cpu.yaml [key=value ...]``.

Same options as ``segray train``; see ``segray train --help`` and the Training section of the README.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/train.py", ["train"], sys.argv[1:]))
