"""``segray landcover``: argument parsing only; the export itself is ``export.run_export``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from segray.exit_codes import EXIT_CODES
from segray.options import add_dataclass_arguments, opt


@dataclass
class LandcoverCommand:
    """``segray landcover``'s options."""

    stats: list[str] = opt(help="labelling output(s) or their stats/ folders", flag="--stats", nargs="+")
    output: str = opt(help="export folder or s3:// prefix", flag="--output")
    by: str = opt("region,date", help="group columns, comma-separated", flag="--by")
    model_id: str | None = opt(
        None,
        help="use only this model's rows",
        flag="--model-id",
        default_help="the rows' one model; required if there are several",
    )
    address: str | None = opt(None, help="Ray address", flag="--address", default_help="$RAY_ADDRESS, else a local Ray")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "landcover",
        epilog=EXIT_CODES,
        help="area and share per class and group, from labelling stats (Ray Data); Parquet totals and charts",
        description="IN is a labelling job's output (or its stats/ folder), local or s3://; several may be "
        "given (e.g. one per nightly date). OUT receives totals/date=<date>/part-0.parquet (area and share "
        "per class, frames counted, frames failed, per group) and charts/<region>.png.",
    )
    add_dataclass_arguments(p, LandcoverCommand)
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
