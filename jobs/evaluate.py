"""Entry point for ``python jobs/evaluate.py --model M --data D --output OUT``.

Same options as ``segray evaluate``; see ``segray evaluate --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/evaluate.py", ["evaluate"], sys.argv[1:]))
