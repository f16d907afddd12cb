"""World files, the pixel-size order (manifest, world file, option) and the null-area rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from segray import storage
from segray.tiles.pixel_size import pixel_area
from segray.tiles.worldfile import WorldFileError, find_world_file, parse_world_file, world_file_candidates

NORTH_UP = "0.25\n0.0\n0.0\n-0.25\n500000.125\n4649999.875\n"


def test_parse_north_up_and_rotated() -> None:
    wf = parse_world_file(NORTH_UP)
    assert (wf.a, wf.e, wf.c, wf.f) == (0.25, -0.25, 500000.125, 4649999.875)
    assert wf.pixel_area == pytest.approx(0.0625)
    # A pixel rotated by 30 degrees keeps its area: |A*E - D*B|.
    s, t = 0.5 * math.cos(math.radians(30)), 0.5 * math.sin(math.radians(30))
    rotated = parse_world_file(f"{s}\n{t}\n{t}\n{-s}\n0\n0\n")
    assert rotated.pixel_area == pytest.approx(0.25)
    assert parse_world_file("2\r\n0\r\n0\r\n-3\r\n10\r\n20\r\n\r\n").pixel_area == 6  # CRLF, trailing blank


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.25\n0\n0\n-0.25\n5\n", "6 numbers"),
        ("0.25\n0\nzero\n-0.25\n5\n6\n", "not a number"),
        ("0.25\n0\n0\n0\n5\n6\n", "pixel area"),
        ("0.25\n0\n0\nnan\n5\n6\n", "finite"),
        ("0.0000089\n0\n0\n-0.0000089\n7.1\n46.2\n", "degrees"),
    ],
)
def test_malformed_world_files_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(WorldFileError, match=message) as e:
        parse_world_file(text, "tiles/a.pgw")
    assert "tiles/a.pgw" in str(e.value)


def test_candidates_follow_the_esri_naming() -> None:
    assert world_file_candidates("s3://b/t/a.png") == ["s3://b/t/a.pgw", "s3://b/t/a.pngw", "s3://b/t/a.wld"]
    assert world_file_candidates("/x/a.jpeg")[0] == "/x/a.jgw"
    assert world_file_candidates("/x/a.tif")[0] == "/x/a.tfw"
    assert world_file_candidates("/x/a.tiff")[0] == "/x/a.tfw"


def test_find_world_file_locally_and_on_s3(tmp_path: Path, s3_prefix: str) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    assert find_world_file(str(tmp_path / "a.png")) is None
    (tmp_path / "a.pngw").write_text("0.5\n0\n0\n-0.5\n0\n0\n")
    uri, wf = find_world_file(str(tmp_path / "a.png"))  # type: ignore[misc]
    assert uri.endswith("a.pngw") and wf.pixel_area == 0.25
    (tmp_path / "a.pgw").write_text(NORTH_UP)  # the short form is preferred
    assert find_world_file(str(tmp_path / "a.png"))[0].endswith("a.pgw")  # type: ignore[index]

    storage.write_bytes(storage.join(s3_prefix, "t", "b.jgw"), NORTH_UP.encode())
    uri, wf = find_world_file(storage.join(s3_prefix, "t", "b.jpg"))  # type: ignore[misc]
    assert uri == storage.join(s3_prefix, "t", "b.jgw") and wf.pixel_area == 0.0625
    assert find_world_file(storage.join(s3_prefix, "t", "c.jpg")) is None
    storage.write_bytes(storage.join(s3_prefix, "t", "d.tfw"), b"1\n2\n3\n")
    with pytest.raises(WorldFileError, match="d.tfw"):
        find_world_file(storage.join(s3_prefix, "t", "d.tif"))


def test_pixel_size_order_and_null_rule(tmp_path: Path) -> None:
    img = str(tmp_path / "a.png")
    (tmp_path / "a.pgw").write_text(NORTH_UP)
    assert pixel_area(img, 2.0, 3.0) == (4.0, "manifest")
    assert pixel_area(img, None, 3.0) == (0.0625, f"world_file:{tmp_path / 'a.pgw'}")
    assert pixel_area(img, float("nan"), 3.0)[1].startswith("world_file:")  # NaN = no manifest value
    assert pixel_area(img, None, 3.0, world_file=False) == (9.0, "option")
    assert pixel_area(img, None, 3.0, world_file=None) == (9.0, "option")  # a listing found none: not looked for
    listed = str(tmp_path / "elsewhere.wld")
    (tmp_path / "elsewhere.wld").write_text("2\n0\n0\n-2\n0\n0\n")
    assert pixel_area(img, None, 3.0, world_file=listed) == (4.0, f"world_file:{listed}")
    assert pixel_area(str(tmp_path / "b.png"), None, None) == (None, "")  # nothing known: no area, no guess
    with pytest.raises(ValueError, match="pixel_size_m must be a positive"):
        pixel_area(img, -1.0, None)
    with pytest.raises(ValueError, match="not a number"):
        pixel_area(img, "ten", None)
