"""``segray landcover``: argument parsing only; the export itself is ``export.run_export``, the
reference sample ``sample.run_sample`` and the accuracy assessment ``accuracy.run_accuracy``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segray.exit_codes import EXIT_CODES
from segray.options import ArgumentParser, add_dataclass_arguments, check_bounds, from_namespace, opt


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


def parse_per_class(text: str) -> int | dict[str, int]:
    """``--per-class``: one number for every class (``50``), or ``class=number`` pairs
    (``forest=50,quarry=30``)."""
    text = text.strip()
    if "=" not in text:
        if not text.isdigit():
            raise ValueError(f"{text!r}: expected a number of points per class, or CLASS=N,... pairs")
        return int(text)
    out: dict[str, int] = {}
    for item in text.split(","):
        name, _, value = (s.strip() for s in item.partition("="))
        if not name or not value.isdigit():
            raise ValueError(f"{item!r}: expected CLASS=N (a class name and a whole number)")
        out[name] = int(value)
    return out


MAP_HELP = "a labelling output of GeoTIFF scenes (its masks/*.tif) or one mask GeoTIFF, local or s3://"
LABELS_HELP = (
    "label map naming the map's class ids: a built-in name, a JSON file, or a labelling output (its stats' label map)"
)
LABELS_DEFAULT = "the labelling output's; a single mask's classes are named by their ids"


@dataclass
class LandcoverSample:
    """``segray landcover sample``'s options."""

    map: str = opt(help=MAP_HELP, flag="--map")
    per_class: int | dict[str, int] = opt(
        help="points per map class: one number for every class, or CLASS=N pairs (forest=50,quarry=30; a class "
        "left out gets --min-per-class)",
        flag="--per-class",
        parse=parse_per_class,
        metavar="N|CLASS=N,...",
    )
    output: str = opt(help="GeoPackage of the points (local or s3://)", flag="--output")
    min_per_class: int = opt(0, help="at least this many points in every map class", flag="--min-per-class", min=0)
    seed: int = opt(0, help="random seed: the same seed and map give the same points", flag="--seed")
    labels: str | None = opt(None, help=LABELS_HELP, flag="--labels", default_help=LABELS_DEFAULT)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass
class LandcoverAccuracy:
    """``segray landcover accuracy``'s options."""

    map: str = opt(help=MAP_HELP, flag="--map")
    reference: str = opt(
        help="reference points (the GeoPackage of `segray landcover sample`, filled in)", flag="--reference"
    )
    output: str = opt(help="folder or s3:// prefix for the Parquet, JSON and markdown results", flag="--output")
    reference_column: str = opt(
        "reference", help="the points' column holding the reference class", flag="--reference-column"
    )
    labels: str | None = opt(None, help=LABELS_HELP, flag="--labels", default_help=LABELS_DEFAULT)
    print_table: bool = opt(False, help="print the markdown tables", flag="--print-table")


ZONES_HELP = "zone polygons: GeoPackage, GeoJSON or Shapefile, local or s3://, in any CRS"
ZONE_ID_HELP = "the zones' column that names each zone (one row per zone and map in the results)"


@dataclass
class LandcoverZones:
    """``segray landcover zones``'s options."""

    maps: list[str] = opt(
        help=MAP_HELP + "; several (one per date) give one row per zone and date", flag="--map", nargs="+"
    )
    zones: str = opt(help=ZONES_HELP, flag="--zones")
    zone_id: str = opt(help=ZONE_ID_HELP, flag="--zone-id")
    output: str = opt(help="folder or s3:// prefix for zones.parquet, zones.gpkg and _zones.json", flag="--output")
    labels: str | None = opt(None, help=LABELS_HELP, flag="--labels", default_help=LABELS_DEFAULT)


@dataclass
class LandcoverChange:
    """``segray landcover change``'s options."""

    before: str = opt(help="the earlier map: " + MAP_HELP, flag="--from")
    after: str = opt(help="the later map, of the same masks (keys) or one mask", flag="--to")
    output: str = opt(help="folder or s3:// prefix for the matrices, change COGs and _change.json", flag="--output")
    zones: str | None = opt(None, help=ZONES_HELP + "; the matrix per zone too", flag="--zones", default_help="none")
    zone_id: str | None = opt(None, help=ZONE_ID_HELP + " (with --zones)", flag="--zone-id", default_help="none")
    resample: str | None = opt(
        None,
        help="read the later mask onto the earlier one's grid where the grids differ",
        flag="--resample",
        choices=("nearest",),
        default_help="masks on different grids are refused",
    )
    labels: str | None = opt(None, help=LABELS_HELP, flag="--labels", default_help=LABELS_DEFAULT)

    def __post_init__(self) -> None:
        check_bounds(self)


class LandcoverParser(ArgumentParser):
    """``segray landcover``'s parser: the export's flags, or a subcommand named first (``sample``,
    ``accuracy``) whose own parser takes the rest. The export keeps its flags right after ``landcover``
    and required, which argparse's optional subparsers cannot give beside required flags."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_known_args(  # type: ignore[override]  # one signature for argparse's overloads
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        command = self.commands.get(argv[0]) if argv else None
        if command is not None:
            return command.parse_known_args(argv[1:], namespace)
        return super().parse_known_args(argv, namespace)


SUBCOMMANDS_TEXT = (
    "Accuracy: `segray landcover sample --map MAP --per-class N --output points.gpkg` draws a stratified "
    "random reference sample by map class; `segray landcover accuracy --map MAP --reference points.gpkg "
    "--output ACC` estimates accuracy and error-adjusted areas (Olofsson et al. 2014). See `segray landcover "
    "sample --help` and `segray landcover accuracy --help`. Zones and change: `segray landcover zones --map MAP... "
    "--zones ZONES --zone-id COLUMN --output OUT` gives areas per class in each zone and date; `segray landcover "
    "change --from MAP_A --to MAP_B --output OUT` the from-to matrix, gains, losses and a change COG."
)


def _landcover_parser(sub: argparse._SubParsersAction, **kwargs: Any) -> LandcoverParser:
    """``sub.add_parser("landcover")``, made a :class:`LandcoverParser`."""
    base = sub._parser_class
    sub._parser_class = LandcoverParser
    try:
        parser: LandcoverParser = sub.add_parser("landcover", **kwargs)
    finally:
        sub._parser_class = base
    return parser


def _add_subcommands(p: LandcoverParser) -> None:
    """``sample``, ``accuracy``, ``zones`` and ``change``: each its own parser, which ``p`` hands the
    arguments to when the subcommand's name comes first."""
    commands = {
        "sample": (
            LandcoverSample,
            cmd_sample,
            "A stratified random sample of pixel centres, the map classes being the strata (Olofsson et "
            "al. 2014): N points per class, each pixel of a class equally likely, nodata never. The GeoPackage "
            "holds each point's mask, pixel, x/y in the masks' CRS, map class and an empty reference column "
            "for interpreters to fill in.",
        ),
        "accuracy": (
            LandcoverAccuracy,
            cmd_accuracy,
            "Error matrix in sample counts and in estimated area proportions; overall, user's and "
            "producer's accuracy, each with its standard error and 95% confidence interval; error-adjusted area "
            "of each class in hectares with its 95% confidence interval (Olofsson et al. 2014). Mapped areas "
            "come from the map's pixels and CRS. Points outside the map, on nodata or without a reference class "
            "are listed and left out. OUT receives classes.parquet, error_matrix_counts.parquet, "
            "error_matrix_proportions.parquet, accuracy.json and accuracy.md.",
        ),
        "zones": (
            LandcoverZones,
            cmd_zones,
            "Area of each class in each zone polygon, for each map (one per date): a pixel counts in a "
            "zone when its centre is inside the polygon; overlapping masks of one grid count a pixel once. OUT "
            "receives zones.parquet and zones.gpkg (the zones with area_m2_<class>, area_ha_<class>, share_<class>, "
            "area_nodata_m2 and covered_fraction, one feature per zone, date and model) and _zones.json.",
        ),
        "change": (
            LandcoverChange,
            cmd_change,
            "Change between two maps of the same masks: the from-to matrix in hectares (per zone too "
            "with --zones), gains, losses and net change per class, and a change COG per mask (code from*K+to, "
            "colour table, legend in _change.json). OUT receives from_to_ha.parquet, class_change.parquet, "
            "change/<scene>.tif, zones_*.parquet with --zones, and _change.json.",
        ),
    }
    p.commands = {}
    for name, (options, func, description) in commands.items():
        parser = ArgumentParser(prog=f"{p.prog} {name}", description=description, epilog=EXIT_CODES)
        add_dataclass_arguments(parser, options)
        parser.set_defaults(func=func)
        p.commands[name] = parser


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = _landcover_parser(
        sub,
        epilog=EXIT_CODES,
        help="area and share per class and group, from labelling stats (Ray Data); Parquet totals and charts",
        description="IN is a labelling job's output (or its stats/ folder), local or s3://; several may be "
        "given (e.g. one per nightly date). OUT receives totals/date=<date>/part-0.parquet (area and share "
        "per class, frames counted, frames failed, per group) and charts/<region>.png. " + SUBCOMMANDS_TEXT,
    )
    add_dataclass_arguments(p, LandcoverCommand)
    p.set_defaults(func=cmd_landcover)
    _add_subcommands(p)


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


def cmd_sample(a: argparse.Namespace) -> int:
    from segray.landcover.sample import run_sample

    o = from_namespace(LandcoverSample, a)
    s = run_sample(o.map, o.output, o.per_class, o.min_per_class, o.seed, o.labels)
    classes = ", ".join(f"{name} {n}/{pixels:,} px" for name, (n, pixels) in s.per_class.items())
    print(f"{s.points} points (seed {s.seed}): {classes} -> {s.output}")
    return 0


def cmd_accuracy(a: argparse.Namespace) -> int:
    from segray.landcover.accuracy import markdown, run_accuracy

    o = from_namespace(LandcoverAccuracy, a)
    r = run_accuracy(o.map, o.reference, o.output, o.reference_column, o.labels)
    left = ", ".join(f"{n} {why}" for why, n in r.left_out_counts().items())
    est = r.estimates
    print(
        f"{r.points_used} of {r.points_read} reference points used "
        f"({len(r.left_out)} left out{': ' + left if left else ''}); "
        f"overall accuracy {est.overall:.3f} ± {est.ci(est.overall_se):.3f} -> {r.output} ({len(r.files)} files)"
    )
    if o.print_table:
        print(markdown(r), end="")
    return 0


def cmd_zones(a: argparse.Namespace) -> int:
    from segray.landcover.zones import run_zones

    o = from_namespace(LandcoverZones, a)
    s = run_zones(o.maps, o.zones, o.zone_id, o.output, o.labels)
    print(f"{s.zones} zones x {len(s.maps)} maps: {s.rows} rows -> {s.output} ({len(s.files)} files)")
    return 0


def cmd_change(a: argparse.Namespace) -> int:
    from segray.landcover.change import run_change

    o = from_namespace(LandcoverChange, a)
    s = run_change(o.before, o.after, o.output, o.zones, o.zone_id, o.resample, o.labels)
    unpaired = f", {len(s.unpaired)} masks in only one map" if s.unpaired else ""
    print(
        f"{s.changed_ha:.2f} ha changed class ({len(s.classes)} classes{unpaired}) -> {s.output} ({len(s.files)} files)"
    )
    return 0
