"""Entry point for ``python jobs/compare_models.py --models M1 M2 --data D --output OUT``.

Same options as ``segray compare``; see ``segray compare --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/compare_models.py", ["compare"], sys.argv[1:]))
