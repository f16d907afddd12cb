"""The command line as a user meets it: version, help that answers, one spelling of --output."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_data import write_shapes_dataset

from segray import __version__
from segray.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # --help and --version end argparse's way
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split()) + ("\n" if out.out.endswith("\n") else "")


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
