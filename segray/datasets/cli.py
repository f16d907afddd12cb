"""``segray data convert`` and ``segray data stats``: parsing only, the work is in the library."""

from __future__ import annotations

import argparse

from segray.exit_codes import EXIT_CODES

#: command-line flag -> ConvertOptions field, for the per-format option check
FLAGS = {
    "--target": "target",
    "--tolerance": "tolerance",
    "--attribute": "attribute",
    "--priority": "priority",
    "--labels": "labels",
    "--images-dir": "images_dir",
    "--masks-dir": "masks_dir",
    "--color-masks": "color_masks",
    "--split": "split",
}


def cmd_convert(a: argparse.Namespace) -> int:
    from segray.datasets.formats import FORMATS, ConvertOptions, convert

    given = {field: getattr(a, field) for field in FLAGS.values() if getattr(a, field) is not None}
    used = FORMATS[a.format].options
    misplaced = sorted(flag for flag, field in FLAGS.items() if field in given and field not in used)
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``data convert`` / ``data stats`` to the ``segray`` command's sub-parsers."""
    from segray.datasets.formats.registry import FORMATS

    data = sub.add_parser(
        "data", help="datasets: convert to the canonical layout, exploratory stats", epilog=EXIT_CODES
    )
    dsub = data.add_subparsers(dest="data_command", required=True)

    conv = dsub.add_parser(
        "convert",
        help="convert a dataset into the canonical layout (folder or s3://)",
        description="Formats: " + "; ".join(f"{k}: {f.summary}" for k, f in FORMATS.items()),
    )
    conv.add_argument("--format", required=True, choices=sorted(FORMATS), help="the source's format")
    conv.add_argument("src", help="source folder, s3:// prefix (or, for via, a JSON file)")
    conv.add_argument("dst", help="destination root (folder or s3:// prefix)")
    conv.add_argument("--target", choices=["trainids", "categories"], help="cityscapes*: 19 train ids or 8 categories")
    conv.add_argument(
        "--tolerance", type=float, help="cityscapes-pairs (default 30), folders --color-masks: max RGB distance"
    )
    conv.add_argument("--attribute", help="via: region attribute naming each region's class (required for via)")
    conv.add_argument("--priority", help="via: classes strongest first, e.g. grape,leaf (default: file order)")
    conv.add_argument("--labels", help="via, folders: label-map JSON path/URI or built-in name")
    conv.add_argument("--images-dir", help="folders: images sub-folder of SRC (default images)")
    conv.add_argument("--masks-dir", help="folders: masks sub-folder of SRC (default masks)")
    conv.add_argument(
        "--color-masks", action="store_true", default=None, help="folders: masks are RGB in the label map's colours"
    )
    conv.add_argument("--split", help="split for sources without one (default train; folders: 'auto' = sub-folders)")
    conv.add_argument("--workers", type=int, default=8, help="threads reading and writing frames (default 8)")
    conv.set_defaults(func=cmd_convert)

    stats = dsub.add_parser(
        "stats",
        help="frame counts, sizes, class frequencies, charts and previews; for an instance set, "
        "instances per class and frame and their areas",
    )
    stats.add_argument("root", help="canonical dataset root, semantic or instance (folder or s3:// prefix)")
    stats.add_argument("--output", default=None, help="where figures go (default <root>/_eda)")
    stats.add_argument("--out", dest="output", default=None, help=argparse.SUPPRESS)  # the earlier spelling
    stats.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    stats.add_argument("--labels", default=None, help="label map (default <root>/labels.json, else camvid)")
    stats.add_argument(
        "--previews", type=int, default=4, help="semantic sets: frames in previews.png (0 = none, default 4)"
    )
    stats.set_defaults(func=cmd_stats)
