"""The command line as a user meets it: version, help that answers, one spelling of --output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run
from helpers.train_data import write_shapes_dataset

from segray import __version__


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
