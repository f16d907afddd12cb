"""GDAL (rasterio) is loaded only by segray.geo: the labelling job, the frame decoders and the
command line start without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.common import ROOT


def loaded_modules(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["segray.labelling.job", "segray.frames", "segray.frames.decode"])
def test_importing_segray_does_not_load_gdal(module: str) -> None:
    loaded = loaded_modules(module)
    assert module in loaded  # the import really happened
    assert not {m for m in loaded if m.split(".")[0] in {"rasterio", "rio_cogeo"}}


def test_the_check_sees_gdal_when_it_is_loaded() -> None:
    assert "rasterio" in loaded_modules("segray.geo.scene")
