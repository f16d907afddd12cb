"""``segray evaluate`` and ``segray compare``: argument parsing only; the work is in this package."""

from __future__ import annotations

import argparse
import json
import sys

from segray.exit_codes import EXIT_CODES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate", help="score an artifact on a labelled split: metrics, confusion, overlays", epilog=EXIT_CODES
    )
    ev.add_argument("--model", required=True, help="model artifact folder or s3:// URI")
    add_data_args(ev)
    ev.add_argument("--output", required=True, help="folder or s3:// prefix for metrics.json/.parquet and pictures")
    ev.add_argument("--overlays", type=int, default=6, help="frame | truth | prediction pictures to write (default 6)")
    ev.set_defaults(func=cmd_evaluate)

    cp = sub.add_parser("compare", help="evaluate several artifacts on one split; Markdown table", epilog=EXIT_CODES)
    cp.add_argument("--models", nargs="+", required=True, help="model artifacts (folders or s3:// URIs)")
    add_data_args(cp)
    cp.add_argument(
        "--output", default=None, help="folder or s3:// prefix for comparison.md/.json and per-model outputs"
    )
    cp.add_argument("--overlays", type=int, default=0, help="overlay pictures per model (default 0)")
    cp.set_defaults(func=cmd_compare)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="dataset root (with --split) or a manifest (.parquet/.csv)")
    p.add_argument("--split", default="val", help="split under a dataset root (default val)")
    p.add_argument("--images", default=None, help="images folder (with --masks), instead of --data")
    p.add_argument("--masks", default=None, help="masks folder, files matched to frames by stem")
    p.add_argument("--image-column", default="image", help="manifest column of frame URIs (default image)")
    p.add_argument("--mask-column", default="mask", help="manifest column of mask URIs (default mask)")
    p.add_argument(
        "--include-prefix", action="append", default=[], help="keep frames whose name starts so (repeatable)"
    )
    p.add_argument(
        "--exclude-prefix", action="append", default=[], help="drop frames whose name starts so (repeatable)"
    )
    p.add_argument("--limit", type=int, default=None, help="first N pairs only")
    p.add_argument("--labels", default=None, help="the data's label map (default <root>/labels.json, else camvid)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per model call (default 8)")
    p.add_argument("--device", default="auto", help="auto (cuda if torch sees one), cpu, cuda")
    p.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def eval_options(a: argparse.Namespace, model: str):  # noqa: ANN201 - EvalOptions, imported lazily
    from segray.datasets.pairs import PairSource
    from segray.evaluation.evaluate import EvalOptions

    common = {"include_prefixes": a.include_prefix, "exclude_prefixes": a.exclude_prefix, "limit": a.limit}
    if a.images or a.masks:
        src = PairSource(images=a.images, masks=a.masks, **common)
    elif a.data and a.data.lower().endswith((".parquet", ".csv")):
        src = PairSource(manifest=a.data, image_column=a.image_column, mask_column=a.mask_column, **common)
    elif a.data:
        src = PairSource(root=a.data, split=a.split, **common)
    else:
        raise ValueError("give --data (a dataset root or manifest) or --images and --masks")
    return EvalOptions(
        model=model,
        data=src,
        output=getattr(a, "output", None),
        labels=a.labels,
        batch_size=a.batch_size,
        overlays=a.overlays,
        device=a.device,
        torch_threads=a.torch_threads,
    )


def cmd_evaluate(a: argparse.Namespace) -> int:
    """Scores the artifact the way its task is scored (:data:`EVALUATE`)."""
    from segray.models.artifact import read_info

    return EVALUATE[read_info(a.model).task](a)


def cmd_evaluate_semantic(a: argparse.Namespace) -> int:
    """A semantic artifact: mIoU, pixel accuracy, Dice and IoU per class on ``--data`` ``--split``."""
    from segray.evaluation.evaluate import evaluate

    r = evaluate(eval_options(a, a.model))
    d = r.to_dict()
    print(json.dumps({k: d[k] for k in ("model_id", "data", "frames", "miou", "pixel_accuracy", "mean_dice")}))
    for name, v in d["per_class"].items():
        print(f"  {name:>16}: IoU {100 * v['iou']:5.1f}")
    print(f"wrote metrics.json, metrics.parquet, confusion.png, overlays/ to {a.output}", file=sys.stderr)
    return 0


def cmd_evaluate_instances(a: argparse.Namespace) -> int:
    """An instance artifact: COCO mask AP and counts on ``--data`` ``--split`` (canonical instance layout)."""
    from segray.evaluation.instances import evaluate_instances, from_eval_options

    d = evaluate_instances(from_eval_options(eval_options(a, a.model))).to_dict()
    keys = ("model_id", "data", "frames", "ap", "ap50", "ap75", "exact_count_fraction", "count_mae")
    print(json.dumps({k: d[k] for k in keys}))
    for name, v in d["per_class"].items():
        print(f"  {name:>16}: AP {100 * v['ap']:5.1f}  AP50 {100 * v['ap50']:5.1f}  AP75 {100 * v['ap75']:5.1f}")
    print(f"wrote metrics.json, metrics.parquet, counts.parquet to {a.output}", file=sys.stderr)
    return 0


#: Task name -> the command that scores an artifact of that task.
EVALUATE = {"semantic": cmd_evaluate_semantic, "instance": cmd_evaluate_instances}


def cmd_compare(a: argparse.Namespace) -> int:
    from segray.evaluation.compare import compare

    md, _ = compare(a.models, eval_options(a, a.models[0]))
    print(md)
    return 0
