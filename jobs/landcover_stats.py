"""Land-cover export: ``python jobs/landcover_stats.py --stats IN [IN...] --output OUT [--by region,date]``.

Same options as ``segray landcover`` (see ``segray landcover --help``). IN is a labelling job's output
(or its ``stats/`` folder), local or ``s3://``; OUT receives ``totals/date=<date>/part-0.parquet`` and
``charts/<region>.png``. Runs on Ray Data, so it scales with the stats; as
``ray job submit --working-dir . -- python jobs/landcover_stats.py ...`` it joins the cluster it is
submitted to.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir

from segray.cli import job_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(job_main("jobs/landcover_stats.py", ["landcover"], sys.argv[1:]))
