"""Label maps: the CamVid built-in, JSON round trips, validation messages, palette and colorize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segray.labels import BUILTIN, CAMVID, LabelClass, LabelMap, load_label_map

CAMVID_ROWS = [
    ("sky", (128, 128, 128)),
    ("building", (128, 0, 0)),
    ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)),
    ("sidewalk", (60, 40, 222)),
    ("tree", (128, 128, 0)),
    ("sign_symbol", (192, 128, 128)),
    ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)),
    ("bicyclist", (0, 128, 192)),
]


def small_map_dict() -> dict[str, Any]:
    return {
        "name": "tiny",
        "classes": [
            {"id": 0, "name": "background", "color": [0, 0, 0]},
            {"id": 1, "name": "crack", "color": [255, 0, 0]},
            {"id": 2, "name": "rust_2", "color": [10, 20, 30]},
        ],
        "ignore": {"id": 255, "name": "unlabelled", "color": [255, 255, 255]},
    }


# --- CamVid built-in -------------------------------------------------------------------------


def test_camvid_classes_in_order_with_colours() -> None:
    assert CAMVID.name == "camvid"
    assert CAMVID.num_classes == 11
    assert CAMVID.names == [n for n, _ in CAMVID_ROWS]
    assert [(c.id, c.name, c.color) for c in CAMVID.classes] == [(i, n, c) for i, (n, c) in enumerate(CAMVID_ROWS)]


def test_camvid_ignore_is_void_11_black() -> None:
    assert CAMVID.ignore == LabelClass(11, "void", (0, 0, 0))
    assert CAMVID.ignore_id == 11


def test_load_label_map_builtin_name() -> None:
    assert BUILTIN["camvid"] is CAMVID
    assert load_label_map("camvid") is CAMVID


# --- JSON round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("lm", [CAMVID, LabelMap.from_dict(small_map_dict())], ids=["camvid", "tiny"])
def test_json_round_trip(lm: LabelMap) -> None:
    text = lm.to_json()
    back = LabelMap.from_json(text)
    assert back == lm
    assert back.ignore_id == lm.ignore_id
    assert json.loads(back.to_json()) == json.loads(text)


def test_round_trip_without_ignore_and_extra_keys_kept() -> None:
    d = small_map_dict()
    del d["ignore"]
    d["source"] = "field survey 2024"
    lm = LabelMap.from_dict(d)
    assert lm.ignore is None and lm.ignore_id is None
    assert lm.extra == {"source": "field survey 2024"}
    back = LabelMap.from_json(lm.to_json())
    assert back.ignore is None
    assert back.to_dict()["source"] == "field survey 2024"
    assert "ignore" not in back.to_dict()


def test_ignore_colour_defaults_to_black() -> None:
    d = small_map_dict()
    d["ignore"] = {"id": 3, "name": "void"}
    assert LabelMap.from_dict(d).ignore == LabelClass(3, "void", (0, 0, 0))


def test_load_label_map_from_file(tmp_path: Path) -> None:
    lm = LabelMap.from_dict(small_map_dict())
    path = tmp_path / "labels.json"
    path.write_text(lm.to_json())
    loaded = load_label_map(str(path))
    assert loaded == lm
    assert loaded.names == ["background", "crack", "rust_2"]
    assert loaded.ignore_id == 255


def test_load_label_map_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(CAMVID.to_json())
    assert load_label_map(f"file://{path}") == CAMVID


# --- invalid maps ------------------------------------------------------------------------------


def _mutate(fn: Any) -> dict[str, Any]:
    d = small_map_dict()
    fn(d)
    return d


INVALID = {
    "gap_in_ids": (_mutate(lambda d: d["classes"][2].update(id=3)), "ids must be 0..N-1"),
    "ids_out_of_order": (
        _mutate(lambda d: d["classes"].reverse()),
        "ids must be 0..N-1",
    ),
    "upper_case_name": (_mutate(lambda d: d["classes"][1].update(name="Crack")), "'Crack'"),
    "name_with_space": (_mutate(lambda d: d["classes"][1].update(name="big crack")), "'big crack'"),
    "name_starts_with_digit": (_mutate(lambda d: d["classes"][1].update(name="2crack")), "'2crack'"),
    "bad_ignore_name": (_mutate(lambda d: d["ignore"].update(name="Void")), "'Void'"),
    "duplicate_names": (_mutate(lambda d: d["classes"][2].update(name="crack")), "duplicate"),
    "ignore_duplicates_class": (_mutate(lambda d: d["ignore"].update(name="background")), "duplicate"),
    "ignore_below_num_classes": (_mutate(lambda d: d["ignore"].update(id=2)), "ignore id 2 must be >="),
    "ignore_above_uint8": (_mutate(lambda d: d["ignore"].update(id=256)), "uint8"),
    "colour_out_of_range": (_mutate(lambda d: d["classes"][0].update(color=[0, 0, 256])), "colour"),
    "colour_two_values": (_mutate(lambda d: d["classes"][0].update(color=[0, 0])), "colour"),
    "no_classes": ({"name": "x", "classes": []}, "no classes"),
    "missing_classes_key": ({"name": "x"}, "classes"),
    "class_without_name": (_mutate(lambda d: d["classes"][0].pop("name")), "name"),
    "id_not_a_number": (_mutate(lambda d: d["classes"][0].update(id="zero")), "zero"),
}


@pytest.mark.parametrize(("d", "why"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_map_rejected_naming_source(d: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match="not a valid label map") as ei:
        LabelMap.from_json(json.dumps(d), "maps/site-a.json")
    msg = str(ei.value)
    assert msg.startswith("maps/site-a.json: ")
    assert why in msg


@pytest.mark.parametrize("d", [INVALID["gap_in_ids"][0], INVALID["duplicate_names"][0]], ids=["gap", "dup"])
def test_invalid_map_file_rejected_naming_path(tmp_path: Path, d: dict[str, Any]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="not a valid label map") as ei:
        load_label_map(str(path))
    assert str(path) in str(ei.value)


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match="ids must be 0..N-1"):
        LabelMap("x", (LabelClass(1, "a", (0, 0, 0)),))
    with pytest.raises(ValueError, match="ignore id 0 must be >= the number of classes"):
        LabelMap("x", (LabelClass(0, "a", (0, 0, 0)),), LabelClass(0, "void", (0, 0, 0)))


@pytest.mark.parametrize("text", ["{", "", "not json", '{"classes": [}'], ids=["brace", "empty", "words", "bad_list"])
def test_bad_json_rejected_naming_source(text: str) -> None:
    with pytest.raises(ValueError, match=r"^labels/x\.json: not valid JSON"):
        LabelMap.from_json(text, "labels/x.json")


def test_json_that_is_not_an_object_rejected() -> None:
    with pytest.raises(ValueError, match=r"^labels/x\.json: not a valid label map"):
        LabelMap.from_json("[1, 2, 3]", "labels/x.json")


def test_bad_json_file_rejected_naming_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x", "classes": [')
    with pytest.raises(ValueError, match="not valid JSON") as ei:
        load_label_map(str(path))
    assert str(path) in str(ei.value)


def test_missing_file_rejected_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "labels.json"
    with pytest.raises(FileNotFoundError) as ei:
        load_label_map(str(path))
    assert str(path) in str(ei.value)
    assert "camvid" in str(ei.value)  # says which built-in names exist


def test_unknown_builtin_name_rejected() -> None:
    with pytest.raises(FileNotFoundError, match="'cityscapes'"):
        load_label_map("cityscapes")


# --- palette / colorize ------------------------------------------------------------------------


def test_palette_camvid() -> None:
    pal = CAMVID.palette()
    assert len(pal) == 256 * 3
    for i, (_, colour) in enumerate(CAMVID_ROWS):
        assert tuple(pal[i * 3 : i * 3 + 3]) == colour
    assert pal[11 * 3 : 12 * 3] == [0, 0, 0]
    assert set(pal[12 * 3 :]) == {0}


def test_palette_places_ignore_at_its_id() -> None:
    lm = LabelMap.from_dict(small_map_dict())
    pal = lm.palette()
    assert pal[255 * 3 :] == [255, 255, 255]
    assert pal[2 * 3 : 3 * 3] == [10, 20, 30]
    assert set(pal[3 * 3 : 255 * 3]) == {0}


def test_colorize_maps_each_id_to_its_colour() -> None:
    mask = np.array([[0, 1, 2], [3, 10, 11]], dtype=np.uint8)
    rgb = CAMVID.colorize(mask)
    assert rgb.shape == (2, 3, 3)
    assert rgb.dtype == np.uint8
    expected = np.array(
        [
            [CAMVID_ROWS[0][1], CAMVID_ROWS[1][1], CAMVID_ROWS[2][1]],
            [CAMVID_ROWS[3][1], CAMVID_ROWS[10][1], (0, 0, 0)],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(rgb, expected)


def test_colorize_ignore_255_and_unused_ids() -> None:
    lm = LabelMap.from_dict(small_map_dict())
    mask = np.array([[1, 255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(lm.colorize(mask), np.array([[[255, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8))
