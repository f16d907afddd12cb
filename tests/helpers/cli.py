"""Running the ``segray`` command in-process, as a user would type it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.common import ROOT
from segray.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``segray *argv``: its exit code and its stdout+stderr with whitespace folded (a trailing newline kept)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # --help and --version end argparse's way
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split()) + ("\n" if out.out.endswith("\n") else "")


def segray_process(*argv: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """``segray *argv`` as its own process connected to the session's Ray (``--address`` is added), with
    stdout and stderr captured as one stream, not a terminal (as ``ray job logs`` and a pipe see it)."""
    import ray

    address = ray.get_runtime_context().gcs_address
    return subprocess.run(
        [sys.executable, "-m", "segray.cli", *argv, "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
