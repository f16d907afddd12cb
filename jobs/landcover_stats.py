"""Land-cover export: ``python jobs/landcover_stats.py --stats IN [IN...] --output OUT [--by region,date]``.

IN is a labelling job's output (or its ``stats/`` folder), local or ``s3://``; several may be given
(e.g. one per nightly date). OUT receives ``totals/date=<date>/part-0.parquet`` (area and share per
class, frames counted, frames failed, per group) and ``charts/<region>.png``. Runs on Ray Data, so
it scales with the stats; as ``ray job submit --working-dir . -- python jobs/landcover_stats.py ...``
it joins the cluster it is submitted to.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout / --working-dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stats", nargs="+", required=True, help="labelling output(s) or their stats/ folders")
    p.add_argument("--output", required=True, help="export folder or s3:// prefix")
    p.add_argument("--by", default="region,date", help="group columns, comma-separated (default region,date)")
    p.add_argument("--model-id", default=None, help="use only this model's rows (required if several)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from segray import storage
    from segray.landcover.export import run_export

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    a = parse_args(argv)
    by = [k.strip() for k in a.by.split(",") if k.strip()]
    import ray

    if not ray.is_initialized():
        ray.init(address=a.address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)
    try:
        s = run_export(a.stats, a.output, by, a.model_id)
    except (storage.StorageError, ValueError) as e:
        print(f"landcover_stats: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{s.groups} groups ({', '.join(s.by)}), {s.frames} frames, {s.frames_failed} failed, model {s.model_id} "
        f"-> {s.output} ({len(s.files)} files)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
