"""``segray label``'s progress display when its output is not a terminal (``ray job logs``, a pipe)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.frames import write_frames

from segray.cli import main

pytestmark = pytest.mark.usefixtures("ray_session")


def test_label_prints_plain_progress_lines(tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_frames(tmp_path / "frames", [(60, 80)] * 5)
    (tmp_path / "frames" / "seq1" / "zz-corrupt.png").write_bytes(b"not an image")
    frames, out = str(tmp_path / "frames"), str(tmp_path / "out")
    assert main(["--progress-every", "0", "label", "--model", tiny_model, "--input", frames, "--output", out]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("labelling run ")]
    # One line per change at --progress-every 0; the last counts every frame, the corrupt one as failed.
    assert lines, "no progress lines"
    assert re.fullmatch(r"labelling run \S+: 6/6 frames, 1 failed, [\d.]+ frames/s, \d+:\d\d elapsed", lines[-1])
    assert all(re.match(r"labelling run \S+: [1-6]/6 frames, [01] failed, ", line) for line in lines), lines
