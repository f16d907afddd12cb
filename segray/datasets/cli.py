"""``segray data convert``, ``segray data stats`` and ``segray data band-stats``: parsing only, the work is
in the library."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from segray.datasets.formats.base import ConvertOptions
from segray.datasets.formats.cityscapes_pairs import DEFAULT_TOLERANCE
from segray.datasets.formats.registry import FORMATS
from segray.exit_codes import EXIT_CODES
from segray.options import add_dataclass_arguments, opt, option_of


@dataclass
class DataConvert:
    """``segray data convert``'s options. The format's own ones (each a :class:`ConvertOptions` field, of
    the same name) are None (False for a switch) when not given: a format refuses those it does not use."""

    src: str = opt(help="source folder, s3:// prefix (or, for via, a JSON file)", positional=True)
    dst: str = opt(help="dataset root (folder or s3:// prefix) to write", flag="--output", former_positional=True)
    format: str = opt(help="the source's format", flag="--format", choices=tuple(sorted(FORMATS)))
    target: str | None = opt(
        None,
        help="cityscapes*: 19 train ids or 8 categories",
        flag="--target",
        choices=("trainids", "categories"),
        default_help=ConvertOptions.target,
    )
    tolerance: float | None = opt(
        None,
        help="cityscapes-pairs, folders --color-masks: max RGB distance",
        flag="--tolerance",
        default_help=f"cityscapes-pairs {DEFAULT_TOLERANCE:g}, folders exact colours",
    )
    attribute: str | None = opt(
        None,
        help="via: region attribute naming each region's class",
        flag="--attribute",
        default_help="none; via needs one",
    )
    priority: str | None = opt(
        None, help="via: classes strongest first, e.g. grape,leaf", flag="--priority", default_help="file order"
    )
    labels: str | None = opt(
        None,
        help="via, folders: label-map JSON path/URI or built-in name",
        flag="--labels",
        default_help="via: the classes found; folders: SRC/labels.json",
    )
    images_dir: str | None = opt(
        None, help="folders: images sub-folder of SRC", flag="--images-dir", default_help=ConvertOptions.images_dir
    )
    masks_dir: str | None = opt(
        None, help="folders: masks sub-folder of SRC", flag="--masks-dir", default_help=ConvertOptions.masks_dir
    )
    color_masks: bool = opt(False, help="folders: masks are RGB in the label map's colours", flag="--color-masks")
    split: str | None = opt(
        None,
        help="split for sources without one",
        flag="--split",
        default_help=f"{ConvertOptions.split}; folders: 'auto' = sub-folders",
    )
    workers: int = opt(8, help="threads reading and writing frames", flag="--workers")


#: DataConvert fields that are ConvertOptions fields (the format's options) -> their flags.
FORMAT_FLAGS = {
    f.name: str(getattr(option_of(f), "flag", f.name))
    for f in fields(DataConvert)
    if f.name in ConvertOptions.__dataclass_fields__
}


@dataclass
class DataStats:
    """``segray data stats``'s options."""

    root: str = opt(help="canonical dataset root, semantic or instance (folder or s3:// prefix)", positional=True)
    output: str | None = opt(
        None, help="where figures go", flag="--output", default_help="<root>/_eda", former_flags=("--out",)
    )
    splits: str | None = opt(None, help="comma-separated splits", flag="--splits", default_help="all")
    labels: str | None = opt(None, help="label map", flag="--labels", default_help="<root>/labels.json, else camvid")
    previews: int = opt(4, help="semantic sets: frames in previews.png (0 = none)", flag="--previews")


@dataclass
class DataBandStats:
    """``segray data band-stats``'s options."""

    scenes: list[str] = opt(
        help="GeoTIFF scenes: .tif/.tiff files, or folders or s3:// prefixes listed for them",
        positional=True,
        nargs="+",
    )
    bands: str | None = opt(
        None,
        help="comma-separated band names or 1-based indexes (e.g. B04,B03,B02,B08)",
        flag="--bands",
        default_help="every band of the first scene",
    )
    output: str | None = opt(
        None,
        help="JSON file (local or s3://) for `segray model init --band-stats`",
        flag="--output",
        default_help="print only",
    )


def cmd_convert(a: argparse.Namespace) -> int:
    from segray.datasets.formats import convert

    # A format option not given is None, or False for --color-masks (whose default is False too).
    values = {name: getattr(a, name) for name in FORMAT_FLAGS}
    given = {name: v for name, v in values.items() if v is not None and v is not False}  # 0 is given
    used = FORMATS[a.format].options
    misplaced = sorted(FORMAT_FLAGS[name] for name in given if name not in used)
    if misplaced:
        raise ValueError(f"--format {a.format} does not use {', '.join(misplaced)}")
    if "priority" in given:
        given["priority"] = tuple(p for p in given["priority"].split(",") if p)
    report = convert(a.format, a.src, a.dst, ConvertOptions(**given), workers=a.workers)
    print(report.summary())
    return 0


def cmd_stats(a: argparse.Namespace) -> int:
    from segray.datasets.eda import format_table, splits_of, write_stats
    from segray.datasets.instance_eda import format_instance_table, instance_splits, write_instance_stats

    splits = [s for s in a.splits.split(",") if s] if a.splits else None
    if not splits_of(a.root) and instance_splits(a.root):  # the canonical instance layout
        istats, out = write_instance_stats(a.root, a.output, splits, a.labels)
        print(format_instance_table(istats))
        print(f"tables written to {out}")
        return 0
    stats, out = write_stats(a.root, a.output, splits, a.previews, a.labels)
    print(format_table(stats))
    print(f"figures and tables written to {out}")
    return 0


def cmd_band_stats(a: argparse.Namespace) -> int:
    from segray.geo.bandstats import band_stats, write_band_stats

    bands = [b.strip() for b in a.bands.split(",") if b.strip()] if a.bands else None
    stats = band_stats(a.scenes, bands, say=print)
    width = max(4, *(len(b) for b in stats.bands))
    print(f"{'band':<{width}}  {'mean':>12}  {'std':>12}  {'valid pixels':>14}")
    for b, m, s, n in zip(stats.bands, stats.mean, stats.std, stats.pixels, strict=True):
        print(f"{b:<{width}}  {m:>12.4f}  {s:>12.4f}  {n:>14,}")
    if a.output:
        write_band_stats(stats, a.output)
        print(f"written to {a.output}: use it with `segray model init --band-stats {a.output}`")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``data convert`` / ``data stats`` / ``data band-stats`` to the ``segray`` command's sub-parsers."""
    data = sub.add_parser(
        "data",
        help="datasets: convert to the canonical layout, exploratory stats, band statistics of GeoTIFF scenes",
        epilog=EXIT_CODES,
    )
    dsub = data.add_subparsers(dest="data_command", required=True)

    conv = dsub.add_parser(
        "convert",
        help="convert a dataset into the canonical layout (folder or s3://)",
        description="Formats: " + "; ".join(f"{k}: {f.summary}" for k, f in FORMATS.items()),
    )
    add_dataclass_arguments(conv, DataConvert)
    conv.set_defaults(func=cmd_convert)

    stats = dsub.add_parser(
        "stats",
        help="frame counts, sizes, class frequencies, charts and previews; for an instance set, "
        "instances per class and frame and their areas",
    )
    add_dataclass_arguments(stats, DataStats)
    stats.set_defaults(func=cmd_stats)

    bstats = dsub.add_parser(
        "band-stats",
        help="each band's mean and std over the valid pixels of GeoTIFF scenes, for a multi-band model",
    )
    add_dataclass_arguments(bstats, DataBandStats)
    bstats.set_defaults(func=cmd_band_stats)
