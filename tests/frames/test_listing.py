"""A folder input is listed without following symbolic links: each frame once, nothing outside the input.

The tree below holds 5 real frames and every kind of link a user's archive may have: a folder alias
(``latest -> day1``), a link that loops back (``loop/self -> .``), a link to a frame inside the input,
a link to a frame and a link to a folder outside it, and a world file that is a link.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run
from helpers.tables import read_table
from PIL import Image

from segray import storage
from segray.frames.listing import list_folder
from segray.tiles.pixel_size import WORLD_FILE_COLUMN
from segray.tiles.worldfile import world_file_candidates

REAL = ["day1/f0.jpg", "day1/f1.jpg", "day1/f2.jpg", "day1/f3.jpg", "loop/x.jpg"]
WORLD = "0.5\n0\n0\n-0.5\n500000.0\n5600000.0\n"


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def linked_tree(tmp: Path) -> Path:
    """``tmp/in``: the 5 frames of ``REAL``, 6 links, and ``tmp/secret`` outside it."""
    root, secret = tmp / "in", tmp / "secret"
    for i, rel in enumerate(REAL):
        jpeg(root / rel, i)
    jpeg(secret / "s.jpg", 10)
    jpeg(secret / "t.jpg", 11)
    (secret / "f.jgw").write_text(WORLD)
    (root / "day1" / "f2.jgw").write_text(WORLD)  # a real world file: used
    os.symlink("day1", root / "latest")  # a folder alias: its 4 frames again, under other names
    os.symlink(".", root / "loop" / "self")  # a loop: loop/self/self/.../x.jpg
    os.symlink("f0.jpg", root / "day1" / "again.jpg")  # a frame inside, under a second name
    os.symlink("../secret/s.jpg", root / "stolen.jpg")  # a frame outside the input
    os.symlink("../secret", root / "elsewhere")  # a folder outside the input
    os.symlink("../../secret/f.jgw", root / "day1" / "f1.jgw")  # a world file outside the input
    return root


def test_links_are_not_followed_each_frame_listed_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = linked_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segray.listing"):
        table = list_folder(str(root))
    assert table.column("relative_path").to_pylist() == REAL
    assert table.column("uri").to_pylist() == [str(root / rel) for rel in REAL]
    warnings = [r.getMessage() for r in caplog.records if r.name == "segray.listing"]
    assert len(warnings) == 1, warnings
    assert "5 symbolic links not followed (day1/again.jpg -> f0.jpg, elsewhere -> ../secret, ...)" in warnings[0]
    assert "point --input at its target or list the files in a manifest" in warnings[0]


def test_world_files_obey_the_same_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = linked_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="segray.listing"):
        table = list_folder(str(root), {WORLD_FILE_COLUMN: world_file_candidates})
    assert table.column("relative_path").to_pylist() == REAL
    worlds = dict(zip(REAL, table.column(WORLD_FILE_COLUMN).to_pylist(), strict=True))
    assert worlds == {**dict.fromkeys(REAL), "day1/f2.jpg": str(root / "day1" / "f2.jgw")}  # not f1's link
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "segray.listing"]
    assert "6 symbolic links not followed (day1/again.jpg -> f0.jpg, day1/f1.jgw -> ../../secret/f.jgw, ...)" in (
        warning
    )


def test_the_input_folder_itself_may_be_a_link(tmp_path: Path) -> None:
    root = linked_tree(tmp_path)
    os.symlink(root, tmp_path / "tonight")
    table = list_folder(str(tmp_path / "tonight"))
    assert table.column("relative_path").to_pylist() == REAL
    assert table.column("uri").to_pylist() == [str(tmp_path / "tonight" / rel) for rel in REAL]


def test_list_tree_names_each_link_and_where_it_points(tmp_path: Path) -> None:
    root = linked_tree(tmp_path)
    os.symlink("b", root / "a")  # a chain of links that loops: leads nowhere
    os.symlink("a", root / "b")
    os.symlink("missing.jpg", root / "dangling.jpg")
    listing = storage.list_tree(str(root), (".jpg",))
    assert listing.paths == [str(root / rel) for rel in REAL]
    links = {os.path.relpath(link.path, root): (link.target, link.folder) for link in listing.links}
    assert links == {
        "a": ("b", False),
        "b": ("a", False),
        "dangling.jpg": ("missing.jpg", False),
        "day1/again.jpg": ("f0.jpg", False),
        "day1/f1.jgw": ("../../secret/f.jgw", False),
        "elsewhere": ("../secret", True),
        "latest": ("day1", True),
        "loop/self": (".", True),
        "stolen.jpg": ("../secret/s.jpg", False),
    }
    assert storage.list_tree(str(tmp_path / "nothing-here")).paths == []


@pytest.mark.usefixtures("ray_session")
def test_dry_run_and_a_run_over_links_label_the_five_frames_once(
    tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    root = linked_tree(tmp_path)
    out = str(tmp_path / "out")
    label = ["label", "--model", tiny_model, "--input", str(root), "--output", out]
    with caplog.at_level(logging.WARNING, logger="segray.listing"):
        code, text = run(capsys, *label, "--dry-run")
    assert code == 0, text
    assert "frames listed: 5; already labelled by this model: 0; would label: 5" in text
    assert any("6 symbolic links not followed" in r.getMessage() for r in caplog.records)

    code, text = run(capsys, *label)
    assert code == 0, text
    assert "5 labelled, 0 failed, 0 already done" in text
    stats = read_table(out, "stats")
    assert sorted(stats.column("relative_path").to_pylist()) == REAL
    masks = storage.list_files(storage.join(out, "masks"), (".png",))
    assert masks == [str(Path(out) / "masks" / f"{rel}.png") for rel in REAL]
    assert read_table(out, "errors").num_rows == 0
