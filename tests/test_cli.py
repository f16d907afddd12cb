"""The command line as a user meets it: version, help that answers with every default, one spelling of
--output for what a command writes."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run
from helpers.common import TINY_ENCODER
from helpers.train_data import write_shapes_dataset

from segray import __version__
from segray.cli import build_parser, subcommand
from segray.options import declared_option


def test_version_and_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"segray {__version__}\n")  # help text below is whitespace-folded
    code, text = run(capsys, "--help")
    assert code == 0 and "Label every frame of an image archive" in text and "Thin:" not in text


def test_each_command_says_its_exit_codes_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(capsys, "label", "--help")
    assert code == 0 and "exit codes: 0 done" in text and "3 more frames failed" in text
    assert "(default 268,435,456)" in text  # --max-pixels
    code, text = run(capsys, "nightly", "--help")
    assert code == 0 and "{date} in --input and --output is replaced by the date" in text
    for command in ("train", "evaluate", "compare", "data", "landcover", "runs", "compact"):
        code, text = run(capsys, command, "--help")
        assert code == 0 and "exit codes: 0 done" in text, command
    code, text = run(capsys, "model", "init", "--help")
    assert code == 0 and all(f"(default {d})" in text for d in ("unet", "resnet34", "camvid", "352", "480"))


def test_data_stats_takes_output_and_the_earlier_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 2})
    for flag, folder in (("--output", "new"), ("--out", "old")):
        code, text = run(capsys, "data", "stats", root, flag, str(tmp_path / folder))
        assert code == 0, text
        assert (tmp_path / folder / "summary.json").is_file()


def segray_with_stdout_closed(*argv: str) -> tuple[int, str]:
    """``segray ARGV`` whose reader has gone before it writes (as ``| head -1`` after its line):
    the exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "segray.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the only read end: every write the command makes fails with EPIPE
    err = proc.stderr.read()
    return proc.wait(60), err


def test_a_closed_stdout_ends_the_command_quietly(tiny_model: str, tmp_path: Path) -> None:
    for argv in (("model", "info", tiny_model), ("model", "info", "--json", tiny_model), ("runs", str(tmp_path))):
        code, err = segray_with_stdout_closed(*argv)
        assert code in (0, 141), (argv, code, err)
        assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    pipeline = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f'"{sys.executable}" -m segray.cli model info "{tiny_model}" | head -1'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pipeline.returncode in (0, 141), pipeline.stderr
    assert pipeline.stdout.startswith("model ") and pipeline.stdout.count("\n") == 1
    assert "Traceback" not in pipeline.stderr and "BrokenPipeError" not in pipeline.stderr, pipeline.stderr


def test_help_lists_the_sigterm_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("label", "nightly", "train", "landcover", "evaluate", "runs", "compact"):
        code, text = run(capsys, command, "--help")
        assert code == 0 and "143 stopped by SIGTERM" in text, command


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The argv prefix of every command ``segray`` runs (the leaves of its subcommand tree)."""
    subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [leaf for name, p in subs[0].choices.items() for leaf in leaves(p, (*path, name))]


def squashed(text: str) -> str:
    """``text`` without any whitespace: argparse wraps help lines anywhere, hyphens included."""
    return "".join(text.split())


def test_each_command_s_help_shows_the_default_of_every_option_that_has_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    commands = leaves(parser)
    assert len(commands) >= 15
    shown = 0
    for command in commands:
        code, text = run(capsys, *command, "--help")
        assert code == 0, command
        for action in subcommand(parser, list(command))._actions:
            spec = declared_option(action)
            switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
            if spec is None or spec.positional or action.required or switch or action.help == argparse.SUPPRESS:
                continue  # plumbing (--help), operands, required flags and on/off switches have no default
            default = re.search(r"\(default:? .*\)$", str(action.help).replace("%%", "%"))
            where = f"segray {' '.join(command)} {action.option_strings[0]}"
            assert default, f"{where}: its help does not say its default"
            assert squashed(f"{action.option_strings[0]}") in squashed(text), where
            assert squashed(spec.help + " " + default[0]) in squashed(text), where
            shown += 1
    assert shown > 100
    # The defaults a user asks about most, as --help words them.
    assert (
        "--device DEVICE torch device: auto (cuda if torch sees one), cpu, cuda (default auto)"
        in run(capsys, "label", "--help")[1]
    )
    code, text = run(capsys, "label", "--help")
    assert "(default: any share)" in text and "one number is a square (512 = 512x512)" in text
    code, text = run(capsys, "data", "convert", "--help")
    assert "19 train ids or 8 categories (default: trainids)" in text


def test_what_a_command_writes_is_its_output_flag_and_the_former_position_still_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    writers = []
    for command in leaves(parser):
        p = subcommand(parser, list(command))
        writes = [a for a in p._actions if (a.help or "").endswith("to write")]  # a required one: no default
        operands = [a.dest for a in p._actions if not a.option_strings and a.help != argparse.SUPPRESS]
        assert all(a.option_strings == ["--output"] for a in writes), command
        writers += [command] * len(writes)
        if command not in (("runs",), ("compact",)):  # their operand is the labelling output they read
            assert not {"output", "out", "dst"} & set(operands), command
    assert sorted(writers) == [("data", "convert"), ("model", "convert-weights"), ("model", "init")]
    init = ["model", "init", "--encoder", TINY_ENCODER, "--height", "64", "--width", "64"]
    assert run(capsys, *init, "--output", str(tmp_path / "new"))[0] == 0
    assert run(capsys, *init, str(tmp_path / "old"))[0] == 0  # scripts written for the positional form
    assert (tmp_path / "new" / "segray.json").is_file() and (tmp_path / "old" / "segray.json").is_file()
    code, text = run(capsys, *init, "--output", str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 2 and "--output is given twice" in text and not (tmp_path / "a").exists()
    code, text = run(capsys, *init)
    assert code == 2 and "the following arguments are required: --output" in text
    new = build_parser().parse_args(["data", "convert", "--format", "coco", "src/", "--output", "dst/"])
    old = build_parser().parse_args(["data", "convert", "--format", "coco", "src/", "dst/"])
    assert (new.src, new.dst) == (old.src, old.dst) == ("src/", "dst/")


def test_print_config_without_a_recipe_says_which_one_to_start_from(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["train", "--print-config"], ["train"]):
        code, text = run(capsys, *argv)
        assert code == 2, text
        assert "error: training and --print-config both need a recipe: configs/template.yaml" in text
        assert text.endswith("the following arguments are required: --config")
