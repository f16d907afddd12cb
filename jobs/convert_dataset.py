"""Entry point for ``ray job submit -- python jobs/convert_dataset.py --format F SRC DST``.

Same options as ``segray data convert``; see ``segray data convert --help``. The conversion runs in
the job's driver on a thread pool (it is I/O-bound), so it needs no workers beyond the head node.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/convert_dataset.py", ["data", "convert"], sys.argv[1:]))
