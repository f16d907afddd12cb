"""Running the ``segray`` command in-process, as a user would type it."""

from __future__ import annotations

import pytest

from segray.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``segray *argv``: its exit code and its stdout+stderr with whitespace folded (a trailing newline kept)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # --help and --version end argparse's way
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split()) + ("\n" if out.out.endswith("\n") else "")
