"""``segray evaluate`` and ``segray compare``: argument parsing only; the work is in this package.

Each flag is declared once, as a field of :class:`DataFlags` (the data and how it is run, shared by
both commands), :class:`EvaluateFlags` or :class:`CompareFlags`; the parsers are made from them
(:func:`segray.options.add_dataclass_arguments`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segray.exit_codes import EXIT_CODES
from segray.options import add_dataclass_arguments, from_namespace, opt

if TYPE_CHECKING:
    from segray.tasks.scoring import EvalOptions


@dataclass
class DataFlags:
    """The labelled data and how it is predicted, for ``evaluate`` and ``compare`` alike."""

    data: str | None = opt(
        None, help="dataset root (with --split) or a manifest (.parquet/.csv)", flag="--data",
        default_help="none; give it or --images and --masks",
    )  # fmt: skip
    split: str = opt("val", help="split under a dataset root", flag="--split")
    images: str | None = opt(
        None, help="images folder (with --masks), instead of --data", flag="--images", default_help="none"
    )
    masks: str | None = opt(
        None, help="masks folder, files matched to frames by stem", flag="--masks", default_help="none"
    )
    image_column: str = opt("image", help="manifest column of frame URIs", flag="--image-column")
    mask_column: str = opt("mask", help="manifest column of mask URIs", flag="--mask-column")
    include_prefix: list[str] = opt(
        help="keep frames whose name starts so (repeatable)", flag="--include-prefix", action="append",
        default_factory=list, default_help="every frame",
    )  # fmt: skip
    exclude_prefix: list[str] = opt(
        help="drop frames whose name starts so (repeatable)", flag="--exclude-prefix", action="append",
        default_factory=list, default_help="none",
    )  # fmt: skip
    limit: int | None = opt(
        None,
        help="score at most N frames (image and mask pairs), the first in listing order",
        flag="--limit",
        default_help="every frame",
        metavar="N",
    )
    labels: str | None = opt(
        None, help="the data's label map", flag="--labels", default_help="<root>/labels.json, else camvid"
    )
    batch_size: int = opt(8, help="frames per model call", flag="--batch-size")
    device: str = opt("auto", help="auto (cuda if torch sees one), cpu, cuda", flag="--device")
    torch_threads: int = opt(0, help="torch CPU threads", flag="--torch-threads", default_help="torch's choice")


@dataclass
class EvaluateFlags:
    """``segray evaluate``'s own flags."""

    model: str = opt(help="model artifact folder or s3:// URI", flag="--model")
    output: str = opt(help="folder or s3:// prefix for metrics.json/.parquet and pictures", flag="--output")
    overlays: int = opt(6, help="frame | truth | prediction pictures to write", flag="--overlays")


@dataclass
class CompareFlags:
    """``segray compare``'s own flags."""

    models: list[str] = opt(help="model artifacts (folders or s3:// URIs)", flag="--models", nargs="+")
    output: str | None = opt(
        None, help="folder or s3:// prefix for comparison.md/.json and per-model outputs", flag="--output",
        default_help="print only",
    )  # fmt: skip
    overlays: int = opt(0, help="overlay pictures per model", flag="--overlays")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate", help="score an artifact on a labelled split: metrics, confusion, overlays", epilog=EXIT_CODES
    )
    add_dataclass_arguments(ev, EvaluateFlags, only=["model"])
    add_dataclass_arguments(ev, DataFlags)
    add_dataclass_arguments(ev, EvaluateFlags, skip=["model"])
    ev.set_defaults(func=cmd_evaluate)

    cp = sub.add_parser("compare", help="evaluate several artifacts on one split; Markdown table", epilog=EXIT_CODES)
    add_dataclass_arguments(cp, CompareFlags, only=["models"])
    add_dataclass_arguments(cp, DataFlags)
    add_dataclass_arguments(cp, CompareFlags, skip=["models"])
    cp.set_defaults(func=cmd_compare)


def eval_options(a: argparse.Namespace, model: str, output: str | None, overlays: int) -> EvalOptions:
    """The options of evaluating ``model`` on the data the flags name."""
    from segray.datasets.pairs import PairSource
    from segray.tasks.scoring import EvalOptions

    d = from_namespace(DataFlags, a)
    common: dict[str, Any] = {
        "include_prefixes": d.include_prefix,
        "exclude_prefixes": d.exclude_prefix,
        "limit": d.limit,
    }
    if d.images or d.masks:
        src = PairSource(images=d.images, masks=d.masks, **common)
    elif d.data and d.data.lower().endswith((".parquet", ".csv")):
        src = PairSource(manifest=d.data, image_column=d.image_column, mask_column=d.mask_column, **common)
    elif d.data:
        src = PairSource(root=d.data, split=d.split, **common)
    else:
        raise ValueError("give --data (a dataset root or manifest) or --images and --masks")
    return EvalOptions(
        model=model, data=src, output=output, labels=d.labels, batch_size=d.batch_size, overlays=overlays,
        device=d.device, torch_threads=d.torch_threads,
    )  # fmt: skip


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Scores the artifact the way its task is scored, and prints the task's summary."""
    from segray.evaluation.evaluate import evaluate
    from segray.models.artifact import read_info
    from segray.tasks import task_named

    f = from_namespace(EvaluateFlags, a)
    task = task_named(read_info(f.model).task)
    result = evaluate(eval_options(a, f.model, f.output, f.overlays))
    for line in task.eval_summary(result):
        print(line)
    print(f"wrote {', '.join(task.eval_files)} to {f.output}", file=sys.stderr)
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from segray.evaluation.compare import compare

    f = from_namespace(CompareFlags, a)
    md, _ = compare(a.models, eval_options(a, a.models[0], f.output, f.overlays))
    print(md)
    return 0
