"""``segray landcover``: argument parsing only; the export itself is ``export.run_export``."""

from __future__ import annotations

import argparse

from segray.exit_codes import EXIT_CODES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "landcover",
        epilog=EXIT_CODES,
        help="area and share per class and group, from labelling stats (Ray Data); Parquet totals and charts",
        description="IN is a labelling job's output (or its stats/ folder), local or s3://; several may be "
        "given (e.g. one per nightly date). OUT receives totals/date=<date>/part-0.parquet (area and share "
        "per class, frames counted, frames failed, per group) and charts/<region>.png.",
    )
    p.add_argument("--stats", nargs="+", required=True, help="labelling output(s) or their stats/ folders")
    p.add_argument("--output", required=True, help="export folder or s3:// prefix")
    p.add_argument("--by", default="region,date", help="group columns, comma-separated (default region,date)")
    p.add_argument("--model-id", default=None, help="use only this model's rows (required if several)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.set_defaults(func=cmd_landcover)


def cmd_landcover(a: argparse.Namespace) -> int:
    from segray.landcover.export import run_export
    from segray.ray_runtime import init_ray

    by = [k.strip() for k in a.by.split(",") if k.strip()]
    init_ray(a.address)
    s = run_export(a.stats, a.output, by, a.model_id)
    print(
        f"{s.groups} groups ({', '.join(s.by)}), {s.frames} frames, {s.frames_failed} failed, model {s.model_id} "
        f"-> {s.output} ({len(s.files)} files)"
    )
    return 0
