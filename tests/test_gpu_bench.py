"""bench/gpu_label.sh: the tiny CPU run prints and writes the table with rows (a), (b) and (c), and
says which rows need a GPU; the bundle's wheels are unpacked only where their modules are missing
(the bundle itself needs PyPI, so these tests make their own small wheels)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.common import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import gpu_label  # noqa: E402


def run_tiny(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "t.json"
    env = dict(os.environ, PYTHON=sys.executable, SEGRAY_GPU_BUNDLE=str(tmp_path / "no-bundle"))
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_label.sh"), "--tiny", "--out", str(out), "--device", "cpu", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not [row for row in result["rows"] if row["note"].startswith("failed")], r.stderr[-3000:]
    return result, r.stdout


def by_variant(result: dict) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {}
    for row in result["rows"]:
        rows.setdefault((row["id"], row["variant"]), []).append(row)
    return rows


def test_tiny_run_measures_a_b_and_c_and_names_what_needs_a_gpu(tmp_path: Path) -> None:
    result, stdout = run_tiny(tmp_path)
    rows = by_variant(result)
    eager = rows[("a", "eager")]
    assert [r["batch"] for r in eager] == [1, 4, 8]
    assert all(r["fps"] > 0 and r["frames"] > 0 for r in eager)
    best = max(eager, key=lambda r: r["fps"])
    assert best["ratio"] == pytest.approx(1.0) and "best batch" in best["note"]
    assert result["summary"]["best_batch"] == best["batch"]
    for key in (("b", "cpu-decode"), ("c", "threads")):
        (row,) = rows[key]
        assert row["fps"] > 0 and row["frames"] == (16 if key[0] == "b" else 32) and row["batch"] == best["batch"]
        assert row["ratio"] == pytest.approx(row["fps"] / best["fps"])
    assert "without Ray" in rows[("c", "threads")][0]["what"]
    needs_gpu = [("a", "cudnn-benchmark"), ("b", "gpu-decode"), ("b", "gpu-decode-1step"), ("c", "threads-gpu-decode")]
    for key in (*needs_gpu, ("b", "gpu-vs-cpu-decode masks")):
        (row,) = rows[key]
        assert row["note"] == gpu_label.NO_GPU and row["fps"] is None
    assert rows[("a", "compile")][0]["note"] == "not run: --no-compile"
    assert set(result["summary"]) >= {"b/a cpu-decode", "c/a threads"}
    assert result["environment"]["bundle"] is None and result["environment"]["device"] == "cpu"
    # The same table is printed, last.
    table = stdout.strip().split("\n\n")[-1]
    assert table == result["table"]
    lines = table.splitlines()
    assert lines[0].startswith("| row | variant | what |") and len(lines) == 2 + len(result["rows"])
    assert {line.split("|")[1].strip() for line in lines[2:]} == {"(a)", "(b)", "(c)"}
    assert sum(gpu_label.NO_GPU in line for line in lines) == 5


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_the_bench_side_gpu_decode_path_also_runs_on_a_cpu(tmp_path: Path) -> None:
    """The nvJPEG rows run only on a GPU; their code (batched decode, resize, labelling in stripes
    or in one step, the counts' check) runs here on the CPU, where torchvision decodes lists too."""
    a = gpu_label.parse(["--tiny", "--device", "cpu", "--workdir", str(tmp_path), "--b-frames", "3", "--c-frames", "3"])
    bench = gpu_label.Bench(a)
    bench.setup()
    p = bench.predictor()
    for one_shot in (False, True):
        decode_s, rest_s = bench.gpu_batch(p, bench.frame_paths[:3], one_shot)
        assert decode_s > 0 and rest_s > 0


def make_wheel(folder: Path, dist: str, files: dict[str, str]) -> Path:
    wheel = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{dist}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    return wheel


@pytest.fixture
def own_sys_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_wheel_modules_names_packages_and_single_modules(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path, "pkg", {"pkg/__init__.py": "", "_pkg.cpython-312-x86_64-linux-gnu.so": "", "one.py": ""}
    )
    assert gpu_label.wheel_modules(wheel) == ["_pkg", "one", "pkg"]


@pytest.mark.usefixtures("own_sys_path")
def test_bundle_unpacks_only_the_wheels_whose_modules_are_missing(tmp_path: Path) -> None:
    bundle, site = tmp_path / "bundle", tmp_path / "site"
    bundle.mkdir()
    make_wheel(bundle, "segray_fake_probe", {"segray_fake_probe/__init__.py": "import segray_fake_dep\n"})
    make_wheel(bundle, "segray_fake_dep", {"segray_fake_dep/__init__.py": ""})
    make_wheel(bundle, "numpy", {"numpy/__init__.py": "raise ImportError('the bundled copy was used')\n"})
    done = gpu_label.unpack_bundle(bundle, site, probe="segray_fake_probe")
    assert done["mode"] == "missing" and done["probe"] == "ok"
    assert sorted(done["unpacked"]) == [
        "segray_fake_dep-1.0-py3-none-any.whl",
        "segray_fake_probe-1.0-py3-none-any.whl",
    ]
    assert not (site / "numpy").exists() and (site / "segray_fake_probe" / "__init__.py").is_file()
    assert str(site) in sys.path
    # A later run with nothing missing empties the folder and unpacks nothing.
    for wheel in bundle.glob("segray_fake_*.whl"):
        wheel.unlink()
    again = gpu_label.unpack_bundle(bundle, site, probe="json")
    assert again["mode"] == "none" and again["unpacked"] == [] and not (site / "segray_fake_probe").exists()


@pytest.mark.usefixtures("own_sys_path")
def test_bundle_unpacks_everything_when_an_installed_package_does_not_fit(tmp_path: Path) -> None:
    bundle, site = tmp_path / "bundle", tmp_path / "site"
    bundle.mkdir()
    # The probe needs a name that the installed yaml lacks and the bundled yaml has.
    make_wheel(bundle, "segray_fake_probe", {"segray_fake_probe/__init__.py": "from yaml import SEGRAY_MARK\n"})
    make_wheel(bundle, "pyyaml", {"yaml/__init__.py": "SEGRAY_MARK = 1\n"})
    done = gpu_label.unpack_bundle(bundle, site, probe="segray_fake_probe")
    assert done["mode"] == "all" and done["probe"] == "ok"
    assert done["unpacked"] == ["segray_fake_probe-1.0-py3-none-any.whl", "pyyaml-1.0-py3-none-any.whl"]


@pytest.mark.usefixtures("own_sys_path")
def test_bundle_that_cannot_supply_the_probe_fails_naming_why(tmp_path: Path) -> None:
    bundle, site = tmp_path / "bundle", tmp_path / "site"
    bundle.mkdir()
    make_wheel(bundle, "segray_fake_probe", {"segray_fake_probe/__init__.py": "import segray_not_bundled\n"})
    with pytest.raises(RuntimeError, match="segray_not_bundled"):
        gpu_label.unpack_bundle(bundle, site, probe="segray_fake_probe")
    with pytest.raises(RuntimeError, match="no wheels"):
        gpu_label.unpack_bundle(tmp_path / "empty", site)


def test_bundle_never_empties_a_folder_it_did_not_make(tmp_path: Path) -> None:
    bundle, site = tmp_path / "bundle", tmp_path / "site"
    bundle.mkdir()
    make_wheel(bundle, "segray_fake_dep", {"segray_fake_dep/__init__.py": ""})
    site.mkdir()
    (site / "keep.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="did not put there"):
        gpu_label.unpack_bundle(bundle, site)
    assert (site / "keep.txt").read_text() == "mine"
