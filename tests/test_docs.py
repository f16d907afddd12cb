"""The docs cannot rot: every ``segray`` command in a fenced block of README.md or docs/ parses,
every recipe it names loads with its overrides, and every command that can run on synthetic data
runs here, in the order a reader would type it. The docs speak of the product, not of its making."""

from __future__ import annotations

import re
import runpy
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run
from helpers.common import ROOT, TINY_ENCODER
from helpers.frames import write_frames
from helpers.geodata import write_geotiff
from helpers.train_data import SHAPES, png, shape_pair

from segray.cli import build_parser
from segray.recipe import load_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def fenced_commands(path: Path) -> list[str]:
    """``segray ...`` lines of the file's bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["segray"]:
                out.append(shlex.join(words))
    return out


ALL = sorted({c for p in DOCS for c in fenced_commands(p)})

#: Commands that cannot run on synthetic data here, and why; they are parsed and their recipes loaded.
NOT_RUN = {
    "s3://": "names the reader's own bucket",
    "CAMVID": "trains or scores on the real CamVid set (docs/results.md quotes each run)",
    "configs/camvid-": "a CamVid recipe: minutes to hours of training",
    "--per-class forest=": "names the classes of the reader's own map (the walk's scenes have other classes)",
    "landcover accuracy": "needs the reference column a person fills in (tests/landcover/test_accuracy.py runs it)",
    "strzegom": "trains on, labels or reads the real Strzegom scenes (docs/results.md quotes the run)",
    "flanders-fields": "trains on or labels the real Flanders scene (docs/results.md quotes the run)",
}


def why_not_run(command: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in command), None)


def test_there_are_commands_to_check() -> None:
    assert len(ALL) >= 15 and any(c.startswith("segray label ") for c in ALL)


@pytest.mark.parametrize("command", ALL)
def test_every_documented_command_parses_and_its_recipe_loads(command: str) -> None:
    argv = shlex.split(command)[1:]
    a = build_parser().parse_args(argv)  # an unknown option or a missing argument exits here
    if argv[0] == "train":
        load_config(str(ROOT / a.config), a.overrides)  # unknown keys, bad values


#: Overrides appended to a documented ``segray train`` so that it trains in seconds here.
TINY_TRAINING = [
    f"model.encoder={TINY_ENCODER}",
    "model.height=64",
    "model.width=64",
    "run.epochs=1",
    "run.batch_size=4",
    "run.cpus_per_worker=1",
    "run.torch_threads=1",
    "run.max_failures=0",
]


def user_files(home: Path) -> None:
    """What the docs assume a user has: ``mydata/images|masks/{train,val}``, ``labels.json``,
    ``frames/``, ``scenes/`` (two 4-band uint16 GeoTIFFs), and the repository's ``configs/``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for i in range(n):
            img, mask = shape_pair(rng, 64, 64)
            for kind, arr in (("images", img), ("masks", mask)):
                p = home / "mydata" / kind / split / f"f{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(png(arr))
    (home / "labels.json").write_text(SHAPES.to_json())
    write_frames(home / "frames", [(64, 64)] * 4)
    (home / "scenes").mkdir()
    for i in range(2):
        bands = rng.integers(500, 4000, size=(4, 80, 96), dtype=np.uint16)
        write_geotiff(home / "scenes" / f"s{i}.tif", bands, nodata=0, descriptions=("B02", "B03", "B04", "B08"))
    shutil.copytree(ROOT / "configs", home / "configs")


@pytest.mark.usefixtures("ray_session")
def test_the_documented_walk_runs_on_synthetic_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = []
    # README order: train on your own data, then label; then the other pages.
    for path in DOCS:
        for command in fenced_commands(path):
            if why_not_run(command) or command in ran:
                continue
            argv = shlex.split(command)[1:]
            if argv[0] == "train":
                argv += ["run.storage=runs", *TINY_TRAINING]
            if argv[:2] == ["model", "init"]:
                argv += ["--height", "64", "--width", "64"]  # the documented encoder, at a size CPUs label fast
            code, text = run(capsys, *argv)
            assert code == 0, f"{path.name}: `{command}` exited {code}: {text[-2000:]}"
            ran.append(command)
    runnable = [c for c in ALL if not why_not_run(c)]
    assert sorted(ran) == sorted(runnable)
    assert {"segray train --config configs/template.yaml data.root=data/mine name=mine"} <= set(ran)
    assert (tmp_path / "runs" / "mine" / "model" / "recipe.yaml").is_file()
    assert (tmp_path / "out" / "stats").is_dir() and (tmp_path / "eval" / "mine").is_dir()


#: How a project's development leaks into its docs and code: rounds of work, the machines of the
#: people who made it, the tracker's wording.
HISTORY = re.compile(r"\bsessions? [0-9]|\bAMD\b|\bEPYC\b|\bXeon\b|\bthe issue\b", re.I)


def test_docs_configs_and_code_speak_of_the_product_not_of_its_making() -> None:
    assert HISTORY.search("measured in session 12 on the EPYC box") and not HISTORY.search("a Ray session")
    files = [*DOCS, *sorted((ROOT / "configs").rglob("*")), *sorted((ROOT / "segray").rglob("*.py"))]
    files += [ROOT / "Dockerfile", *sorted((ROOT / "jobs").glob("*.py")), *sorted((ROOT / "bench").glob("*"))]
    found = []
    for f in files:
        if f.is_file():
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if HISTORY.search(line):
                    found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_options_tables_in_the_docs_are_the_commands_own_flags() -> None:
    gen = runpy.run_path(str(ROOT / "docs" / "gen_options.py"))
    tables = 0
    for path in DOCS:
        text = path.read_text()
        tables += len(gen["MARKED"].findall(text))
        assert gen["rendered"](text) == text, (
            f"{path.relative_to(ROOT)}: an options table differs from the command's flags; "
            "regenerate it with `python docs/gen_options.py`"
        )
    assert tables >= 1
    labelling = (ROOT / "docs" / "labelling.md").read_text()
    for flag in ("--max-failed-fraction", "--window", "--dry-run", "--limit N", "--device"):
        assert f"| `{flag}` |" in labelling, flag


def test_exit_codes_read_the_same_in_the_readme_the_docs_and_help() -> None:
    from segray.exit_codes import LABEL_EXIT_CODES

    said = LABEL_EXIT_CODES.removeprefix("exit codes: ")
    for page in (ROOT / "README.md", ROOT / "docs" / "labelling.md"):
        text = " ".join(page.read_text().replace("`", "").split())
        assert said in text, f"{page.name}: its exit codes of segray label are not those of `segray label --help`"


def test_every_recipe_in_configs_is_in_the_training_page_s_recipe_table() -> None:
    recipes = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if "\nmodel:" in p.read_text())
    assert {"camvid-segnet-cpu.yaml", "camvid-vgg-unet-gpu.yaml", "template.yaml"} <= set(recipes)
    table = (ROOT / "docs" / "training.md").read_text().split("## Recipes", 1)[1].split("\n## ", 1)[0]
    assert [r for r in recipes if f"| `configs/{r}` |" not in table] == []


def test_docstrings_point_to_docs_that_exist() -> None:
    """A docstring or comment sends a reader to a page, never to a README section that may move."""
    found = []
    for f in sorted((ROOT / "segray").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"\(README\b|\bREADME[,)]", line):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
            for page in re.findall(r"\bdocs/([a-z-]+\.md)", line):
                if not (ROOT / "docs" / page).is_file():
                    found.append(f"{f.relative_to(ROOT)}:{n}: docs/{page} does not exist")
    assert found == []
