"""Entry point for ``ray job submit -- python jobs/label_frames.py --model M --input IN --output OUT``.

Same options as ``segray label``; see ``segray label --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/label_frames.py", ["label"], sys.argv[1:]))
