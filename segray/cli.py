"""``segray`` command line: ``label``, ``nightly``, ``runs``, ``compact``, ``model init|info|convert-weights``,
``demo``, ``train``, ``evaluate``, ``compare``, ``data``, ``landcover``, ``serve``. Parsing and printing only; the
work is in the library, so every command is also a function a program can call."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from segray.datasets import cli as datasets_cli
from segray.evaluation import cli as evaluation_cli
from segray.exit_codes import BROKEN_PIPE, COMPACT_EXIT_CODES, EXIT_CODES, LABEL_EXIT_CODES, TERMINATED
from segray.landcover import cli as landcover_cli
from segray.options import ArgumentParser, add_dataclass_arguments, check_bounds, from_namespace, opt
from segray.outputs.compact import DEFAULT_ROWS_PER_FILE
from segray.progress import DEFAULT_EVERY
from segray.progress import configure as configure_progress
from segray.ray_runtime import init_ray
from segray.serving import cli as serving_cli
from segray.training import cli as training_cli

if TYPE_CHECKING:
    from segray.labelling.job import LabelOptions


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the command (``ray job stop``, a scheduler, ``kill``). Raised in the main thread
    so that every ``finally`` runs (the output's lease is released, Ray is shut down) before the command
    exits 143. A KeyboardInterrupt, as Ctrl-C is: no ``except Exception`` on the way takes it for a
    failure, and Ray's blocking calls (``ray.get`` in Ray Train's driver) stop waiting for it, where any
    other exception raised by a signal handler during them is printed and dropped."""


#: Set by the SIGTERM handler: a KeyboardInterrupt that Ray raised in place of :class:`Terminated`
#: (its blocking calls raise a new one) is then known to be the SIGTERM.
_sigterm = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    _sigterm.set()
    raise Terminated


@dataclass
class LabelCommand:
    """``segray label``'s (and ``nightly``'s) options besides the run's own (:class:`LabelOptions`)."""

    address: str | None = opt(None, help="Ray address", flag="--address", default_help="$RAY_ADDRESS, else a local Ray")
    print_table: bool = opt(False, help="print the per-class area table at the end", flag="--print-table")
    dry_run: bool = opt(
        False,
        help="check the model, input and output, and print how many frames a run would label and which "
        "are already done, without starting Ray, taking the output or writing anything",
        flag="--dry-run",
    )


@dataclass
class NightlyCommand:
    """``segray nightly``'s own option: the date it labels."""

    date: str | None = opt(None, help="YYYY-MM-DD", flag="--date", default_help="yesterday, UTC")


def add_label_args(p: argparse.ArgumentParser) -> None:
    """The options of ``segray label`` (and ``nightly``): one flag per :class:`LabelOptions` field, made
    from its declaration, and the flags of the command itself (:class:`LabelCommand`)."""
    from segray.labelling.job import LabelOptions

    add_dataclass_arguments(p, LabelOptions)
    add_dataclass_arguments(p, LabelCommand)


def label_options(a: argparse.Namespace) -> LabelOptions:
    """The run's options from ``segray label``'s parsed flags."""
    from segray.labelling.job import LabelOptions

    return from_namespace(LabelOptions, a)


def cmd_label(a: argparse.Namespace) -> int:
    from segray.labelling.job import FailureBudgetExceeded, new_run_id, preflight, run_label_job
    from segray.outputs.lease import LeaseLost, OutputLease
    from segray.outputs.report import area_table, format_area_table

    opts = label_options(a)
    opts.run_id = new_run_id()
    info = preflight(opts, dry_run=a.dry_run)  # bad model/input/credentials fail before Ray starts
    if a.dry_run:
        print_plan(opts, info)
        return 0
    lease = OutputLease(opts.output, opts.run_id).acquire()  # so does a run already writing the output
    try:
        init_ray(a.address)
        s = run_label_job(opts, info, lease)
    except FailureBudgetExceeded as e:
        print_summary(e.summary)
        print(f"segray: error: {e}", file=sys.stderr)
        return 3
    except LeaseLost as e:
        print(f"segray: error: {e}", file=sys.stderr)
        return 1
    finally:
        lease.release()
    print_summary(s)
    if a.print_table:
        print(format_area_table(area_table(s.output, s.model_id)))
    return 0


def print_plan(opts, info) -> None:  # noqa: ANN001 - LabelOptions, ArtifactInfo, imported lazily
    from segray.labelling.job import plan_run

    p = plan_run(opts, info)
    limited = f"; --limit {opts.limit} leaves {p.left_by_limit} for a later run" if p.left_by_limit else ""
    print(f"dry run: {opts.input} -> {opts.output} with {p.model_id}")
    print(f"frames listed: {p.frames_in}; already labelled by this model: {p.done}; would label: {p.to_label}{limited}")
    if p.first:
        more = f" (and {p.to_label - len(p.first)} more)" if p.to_label > len(p.first) else ""
        print("first to label: " + ", ".join(p.first) + more)
    print(f"output lease: {p.lease}")


def print_summary(s) -> None:  # noqa: ANN001 - RunSummary, imported lazily
    left = f", {s.left_by_limit} left by --limit (rerun to go on)" if s.left_by_limit else ""
    windows = f" ({s.windowed} in windows: above --tile-above)" if s.windowed else ""
    print(
        f"run {s.run_id}: {s.labelled} labelled{windows}, {s.failed} failed, {s.skipped_done} already done{left}, "
        f"{s.seconds:.1f} s, {s.frames_per_s:.2f} frames/s -> {s.output}"
    )


def cmd_nightly(a: argparse.Namespace) -> int:
    from segray.labelling.nightly import expand, parse_date

    day = parse_date(a.date)
    a.input = expand(a.input, day, "input")
    a.output = expand(a.output, day, "output")
    if not any(t.startswith("date=") for t in a.tags):
        a.tags = [*a.tags, f"date={day.isoformat()}"]
    print(f"nightly run for {day.isoformat()}: {a.input} -> {a.output}")
    return cmd_label(a)


@dataclass
class ModelInit:
    """``segray model init``'s options."""

    out: str = opt(help="artifact folder or s3:// URI to write", flag="--output", former_positional=True)
    arch: str = opt(
        "unet",
        help="unet, pspnet, fpn, deeplabv3plus, ..., fcn or segnet, see docs/models.md; maskrcnn for instances, "
        "see docs/instances.md",
        flag="--arch",
    )
    encoder: str = opt("resnet34", help="any segmentation-models-pytorch encoder", flag="--encoder")
    labels: str = opt("camvid", help="built-in label map name or label-map JSON path/URI", flag="--labels")
    name: str | None = opt(None, help="model name", flag="--name", default_help="<arch>-<encoder>")
    height: int = opt(352, help="model input height, a multiple of 32", flag="--height")
    width: int = opt(480, help="model input width, a multiple of 32", flag="--width")
    encoder_weights: str | None = opt(
        None,
        help="encoder start: a weights name smp knows for the encoder (e.g. imagenet; needs a network) "
        "or a local or s3:// .safetensors file (see `segray model convert-weights`)",
        flag="--encoder-weights",
        default_help="random weights",
    )
    bands: str | None = opt(
        None,
        help="a model of geodata scene bands instead of RGB frames: comma-separated band names or 1-based "
        "indexes, one input channel each, in this order (e.g. B04,B03,B02,B08)",
        flag="--bands",
        default_help="RGB frames",
    )
    band_mean: str | None = opt(
        None, help="with --bands: each band's mean, comma-separated, in raw units", flag="--band-mean", default_help="0"
    )
    band_std: str | None = opt(
        None, help="with --bands: each band's std, comma-separated, in raw units", flag="--band-std", default_help="1"
    )
    band_stats: str | None = opt(
        None,
        help="JSON from `segray data band-stats --output` (local or s3://): each band's mean and std, and --bands "
        "when not given (--bands picks some of its bands, in any order); replaces --band-mean/--band-std",
        flag="--band-stats",
        default_help="none",
    )


@dataclass
class ModelInfo:
    """``segray model info``'s options."""

    model: str = opt(help="model artifact folder or s3:// URI", positional=True)
    json: bool = opt(False, help="print everything as one JSON object", flag="--json")


@dataclass
class ConvertWeights:
    """``segray model convert-weights``'s options."""

    input: str = opt(help="checkpoint file or s3:// URI (a state dict, or one under state_dict/model)", positional=True)
    output: str = opt(help=".safetensors file or s3:// URI to write", flag="--output", former_positional=True)
    encoder: str | None = opt(
        None,
        help="check the result against this encoder and report the fit",
        flag="--encoder",
        default_help="no check",
    )
    arch: str = opt("unet", help="architecture for the --encoder check", flag="--arch")


@dataclass
class Demo:
    """``segray demo``'s options."""

    dir: str = opt("segray-demo", help="working folder", flag="--dir", shown_default="./segray-demo")
    epochs: int | None = opt(None, help="training epochs", flag="--epochs", default_help="16, the demo recipe's")
    address: str | None = opt(None, help="Ray address", flag="--address", default_help="a local Ray")


@dataclass
class Runs:
    """``segray runs``'s options."""

    output: str = opt(help="labelling output folder or s3:// prefix to report on", positional=True)


@dataclass
class Compact:
    """``segray compact``'s options."""

    output: str = opt(help="labelling output folder or s3:// prefix to compact in place", positional=True)
    rows_per_file: int = opt(DEFAULT_ROWS_PER_FILE, help="rows per compacted file", flag="--rows-per-file", min=1)

    def __post_init__(self) -> None:
        check_bounds(self)


def cmd_model_init(a: argparse.Namespace) -> int:
    from segray.labels import load_label_map
    from segray.models.artifact import init_artifact
    from segray.models.preprocessing import band_arguments

    if a.band_stats is not None and (a.band_mean is not None or a.band_std is not None):
        raise ValueError("--band-stats gives each band's mean and std: leave out --band-mean/--band-std")
    bands = band_arguments(a.bands, a.band_mean, a.band_std)
    if a.band_stats is not None:
        from segray.geo.bandstats import read_band_stats

        stats = read_band_stats(a.band_stats).pick(bands.get("bands"))
        bands = {"bands": tuple(stats.bands), "band_mean": tuple(stats.mean), "band_std": tuple(stats.std)}
    art = init_artifact(
        a.arch,
        a.encoder,
        load_label_map(a.labels),
        name=a.name,
        height=a.height,
        width=a.width,
        encoder_weights=a.encoder_weights,
        **bands,
    )
    art.save(a.out)
    print(f"wrote {art.model_id} ({a.arch}/{a.encoder}, {art.label_map.num_classes} classes) to {a.out}")
    if art.preprocessing.bands:
        print(f"input: {art.preprocessing.channels} bands {', '.join(art.preprocessing.bands)}")
    return 0


def cmd_model_convert_weights(a: argparse.Namespace) -> int:
    from segray.models.convert import convert_weights

    c = convert_weights(a.input, a.output, arch=a.arch, encoder=a.encoder)
    skipped = f" ({c.skipped} non-tensor entries left out)" if c.skipped else ""
    print(f"wrote {c.tensors} tensors to {a.output}{skipped}")
    if c.encoder_matched is not None:
        print(f"{c.encoder_matched} of {c.encoder_total} {a.arch}/{a.encoder} encoder tensors match")
    return 0


def cmd_model_info(a: argparse.Namespace) -> int:
    import json

    from segray.models.info import format_info, model_info

    info = model_info(a.model)
    print(json.dumps(info, indent=2) if a.json else format_info(info))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from segray.demo import run_demo
    from segray.outputs.report import format_area_table

    d = from_namespace(Demo, a)
    started = time.time()
    init_ray(d.address)
    r = run_demo(d.dir, epochs=d.epochs, say=lambda line: print(line, flush=True))
    print(f"\n{r.labelled} test frames labelled ({r.failed} failed) -> {r.labels}/masks, {r.labels}/stats")
    print(f"mIoU of the job's masks against the ground truth: {r.miou:.1%}")
    print("  " + ", ".join(f"{name} {iou:.0%}" for name, iou in r.iou.items()))
    print("\nper-class area over the labelled frames")
    print(format_area_table(r.areas))
    print(f"\nframe | ground truth | predicted mask: {r.overlay}")
    print(f"demo done in {time.time() - started:.0f} s; next: `segray model info {r.model}`, `segray runs {r.labels}`")
    return 0


def cmd_compact(a: argparse.Namespace) -> int:
    from segray.outputs.compact import compact

    c = from_namespace(Compact, a)
    s = compact(c.output, c.rows_per_file)
    print(
        f"compacted {a.output}/stats: {s.parts_before} parts, {s.rows_before} rows -> {s.files_after} files, "
        f"{s.rows_after} rows (one per frame and model) in {s.seconds:.1f} s"
    )
    if s.instance_parts_before:
        print(
            f"compacted {a.output}/instances: {s.instance_parts_before} parts, {s.instance_rows_before} rows -> "
            f"{len(s.instance_files)} files, {s.instance_rows_after} rows (those of the runs the stats rows name)"
        )
    return 0


def cmd_runs(a: argparse.Namespace) -> int:
    from segray import storage
    from segray.outputs.runs import format_report, output_report

    storage.check_readable(a.output)  # a misspelt path is an error (exit 2), not an output never written
    print(format_report(output_report(a.output)))
    return 0


DESCRIPTION = """\
Label every frame of an image archive with a segmentation model, and write masks and per-class
area statistics as Parquet to a folder or S3; train the models; export land-cover areas. Runs on
a local Ray or a Ray cluster. Start with `segray demo`; `segray COMMAND --help` for each command.
"""


def build_parser() -> argparse.ArgumentParser:
    from segray import __version__

    p = ArgumentParser(prog="segray", description=DESCRIPTION, epilog=EXIT_CODES)  # suggests misspelt flags
    p.add_argument("--version", action="version", version=f"segray {__version__}")
    _add_common(p)  # -v before or after the command
    p.set_defaults(**{f.name: f.default for f in fields(CommonOptions)})
    sub = p.add_subparsers(dest="command", required=True)
    _add_label_parsers(sub)  # label, nightly
    _add_model_parsers(sub)  # model init, info, convert-weights
    _add_demo_parser(sub)
    _add_output_parsers(sub)  # runs, compact
    training_cli.add_parsers(sub)  # train
    evaluation_cli.add_parsers(sub)  # evaluate, compare
    datasets_cli.add_parsers(sub)  # data convert, data stats
    landcover_cli.add_parser(sub)
    serving_cli.add_parser(sub)
    for parser in _all_subparsers(p):
        _add_common(parser)
    return p


@dataclass
class CommonOptions:
    """Options every command takes, before or after the command's name."""

    verbose: int = opt(
        0,
        help="show Ray's own logs and the workers' output too; -vv: Ray's debug logs",
        flag="--verbose",
        short="-v",
        action="count",
    )
    progress_every: float = opt(
        DEFAULT_EVERY,
        help="seconds between progress lines when the output is not a terminal (on a terminal: a live bar)",
        flag="--progress-every",
        above=0,
        metavar="SECONDS",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    """``-v`` and ``--progress-every`` on ``p``; their defaults live on the top-level parser only, so a
    value given before the command's name is not reset by the command's own parser."""
    add_dataclass_arguments(p, CommonOptions, defaults_elsewhere=True)


def _all_subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) command's parser under ``p``."""
    found = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += [child, *_all_subparsers(child)]
    return found


def _add_label_parsers(sub: argparse._SubParsersAction) -> None:
    """``segray label`` and ``segray nightly``: the labelling job, on given or date-templated paths."""
    lab = sub.add_parser(
        "label", help="label frames: masks, per-class stats, errors (Ray Data)", epilog=LABEL_EXIT_CODES
    )
    add_label_args(lab)
    lab.set_defaults(func=cmd_label)

    nightly = sub.add_parser(
        "nightly",
        help="label one date's frames (date-templated --input/--output); reruns label only new frames",
        description="Label one date's frames. {date} in --input and --output is replaced by the date "
        "(YYYY-MM-DD; {date:%%Y/%%m/%%d} for other layouts), and every stats row gets a date column.",
        epilog=LABEL_EXIT_CODES,
    )
    add_label_args(nightly)
    add_dataclass_arguments(nightly, NightlyCommand)
    nightly.set_defaults(func=cmd_nightly)


def _add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``segray model init|info|convert-weights``: model artifacts."""
    model = sub.add_parser("model", help="model artifacts")
    msub = model.add_subparsers(dest="model_command", required=True)
    init = msub.add_parser("init", help="write an untrained model artifact")
    add_dataclass_arguments(init, ModelInit)
    init.set_defaults(func=cmd_model_init)
    info = msub.add_parser(
        "info",
        help="what is in a model: architecture, classes and colours, input size, weights, metrics, recipe",
        description="Read from the artifact's small files and the weights file's header: an S3 "
        "artifact answers without its weights being downloaded.",
        epilog=EXIT_CODES,
    )
    add_dataclass_arguments(info, ModelInfo)
    info.set_defaults(func=cmd_model_info)
    conv = msub.add_parser(
        "convert-weights",
        help="PyTorch checkpoint (.pth, tensors only) -> .safetensors file for --encoder-weights",
    )
    add_dataclass_arguments(conv, ConvertWeights)
    conv.set_defaults(func=cmd_model_convert_weights)


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``segray demo``: train, label and score on synthetic frames, with nothing to download."""
    demo = sub.add_parser(
        "demo",
        help="train a small model on synthetic street frames, label held-out ones, print mIoU and areas",
        description="No download, no cloud account: synthesises street-like frames with ground truth, "
        "trains a UNet-ResNet18 on 64 of them with Ray Train, labels 16 held-out frames with the labelling "
        "job on a local Ray, prints the mIoU of the masks it wrote and the per-class area table, and writes "
        "DIR/overlay.png (frame | ground truth | predicted mask). About 2-3 minutes on 2 cores.",
        epilog=EXIT_CODES,
    )
    add_dataclass_arguments(demo, Demo)
    demo.set_defaults(func=cmd_demo)


def _add_output_parsers(sub: argparse._SubParsersAction) -> None:
    """``segray runs`` and ``segray compact``: reading and tidying a labelling output."""
    runs = sub.add_parser(
        "runs",
        help="what the runs on a labelling output did, who is writing it now, frames per model",
        epilog=EXIT_CODES,
    )
    add_dataclass_arguments(runs, Runs)
    runs.set_defaults(func=cmd_runs)
    comp = sub.add_parser(
        "compact",
        help="rewrite stats/ (and instances/) as a few large Parquet files, one row per frame and model "
        "(takes the output's lease)",
        epilog=COMPACT_EXIT_CODES,
    )
    add_dataclass_arguments(comp, Compact)
    comp.set_defaults(func=cmd_compact)


def subcommand(parser: argparse.ArgumentParser, path: list[str]) -> argparse.ArgumentParser:
    """The parser of ``segray <path...>`` (e.g. ``["data", "convert"]``)."""
    for name in path:
        actions = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
        parser = actions[0].choices[name]
    return parser


def job_main(script: str, command: list[str], argv: list[str]) -> int:
    """Entry of a ``jobs/*.py`` script: ``segray <command>``, with the script's own name in usage
    and error lines, so that a ``ray job submit`` log says which file was run with what."""
    return main([*command, *argv], prog=f"python {script}", command=command)


def main(argv: list[str] | None = None, prog: str | None = None, command: list[str] | None = None) -> int:
    from segray import storage
    from segray.models.artifact import ArtifactError
    from segray.outputs.lease import LeaseHeld

    _setup_logging()
    parser = build_parser()
    if prog and command:
        subcommand(parser, command).prog = prog
    a = parser.parse_args(argv)  # --help and --version: argparse itself ignores a closed stdout
    configure_progress(a.verbose, a.progress_every)
    in_main_thread = threading.current_thread() is threading.main_thread()
    _sigterm.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        code = int(a.func(a))
        sys.stdout.flush()  # a reader that went away (`| head -1`) is found here, not at interpreter exit
        return code
    except (storage.StorageError, ArtifactError, FileNotFoundError, ValueError, LeaseHeld) as e:
        print(f"segray: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        if not _sigterm.is_set():
            raise  # Ctrl-C
        _shutdown_ray()
        print(
            "segray: stopped by SIGTERM; what was written is kept, and rerunning the same command finishes the run",
            file=sys.stderr,
            flush=True,
        )
        return TERMINATED
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _stdout_closed() -> int:
    """The reader of stdout closed it early (``segray model info M | head -1``): point stdout at
    /dev/null, so that the interpreter's last flush does not fail again with a traceback, and exit as a
    program ended by SIGPIPE would (https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return BROKEN_PIPE


def _shutdown_ray() -> None:
    """Disconnect from Ray (stopping the local Ray this command started), if this command connected."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
