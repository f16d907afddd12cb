"""Label maps: a dataset's classes, their display colours and the id that means "ignore".

A model predicts ``num_classes`` channels, one per class in :attr:`LabelMap.classes` (ids
``0..num_classes-1``). The ignore id (void, unlabelled) lies outside that range: ground truth may
carry it, a prediction never does, and metrics skip it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


#: The ignore value of a label map without an ignore class.
IGNORE_FALLBACK = 255


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    color: tuple[int, int, int]


@dataclass(frozen=True)
class LabelMap:
    """Classes ``0..N-1`` in id order plus an optional ignore class (id >= N)."""

    name: str
    classes: tuple[LabelClass, ...]
    ignore: LabelClass | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"label map {self.name!r}: class ids must be 0..N-1 in order, got {ids}")
        if not ids:
            raise ValueError(f"label map {self.name!r}: no classes")
        names = [c.name for c in self.classes] + ([self.ignore.name] if self.ignore else [])
        for n in names:
            if not _IDENT.match(n):
                raise ValueError(
                    f"label map {self.name!r}: class name {n!r} must be lower-case letters, digits "
                    "and '_' (it becomes a column name in the stats Parquet)"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"label map {self.name!r}: duplicate class names {names}")
        if self.ignore is not None and self.ignore.id < len(self.classes):
            raise ValueError(
                f"label map {self.name!r}: ignore id {self.ignore.id} must be >= the number of "
                f"classes ({len(self.classes)})"
            )
        if self.ignore is not None and self.ignore.id > 255:
            raise ValueError(f"label map {self.name!r}: ignore id must fit in a uint8 mask")
        for c in (*self.classes, *([self.ignore] if self.ignore else [])):
            if len(c.color) != 3 or not all(0 <= v <= 255 for v in c.color):
                raise ValueError(f"label map {self.name!r}: colour of {c.name!r} must be 3 values 0..255")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ignore_id(self) -> int | None:
        return None if self.ignore is None else self.ignore.id

    @property
    def ignore_index(self) -> int:
        """The mask value that no loss, metric or padding counts: the ignore id, else 255 (what
        converters write for unlabelled pixels and what augmentation pads with)."""
        return IGNORE_FALLBACK if self.ignore is None else self.ignore.id

    def palette(self) -> list[int]:
        """A 256-entry flat RGB palette for palette PNGs (unused entries black)."""
        pal = [0] * (256 * 3)
        for c in (*self.classes, *([self.ignore] if self.ignore else [])):
            pal[c.id * 3 : c.id * 3 + 3] = list(c.color)
        return pal

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """Class-index mask (H, W) -> RGB image (H, W, 3) in the display colours."""
        lut = np.asarray(self.palette(), dtype=np.uint8).reshape(256, 3)
        return lut[mask]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "classes": [{"id": c.id, "name": c.name, "color": list(c.color)} for c in self.classes],
        }
        if self.ignore is not None:
            d["ignore"] = {"id": self.ignore.id, "name": self.ignore.name, "color": list(self.ignore.color)}
        d.update(self.extra)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> LabelMap:
        try:
            classes = tuple(
                LabelClass(int(c["id"]), str(c["name"]), tuple(int(v) for v in c["color"]))  # type: ignore[arg-type]
                for c in d["classes"]
            )
            ig = d.get("ignore")
            ignore = (
                LabelClass(int(ig["id"]), str(ig["name"]), tuple(int(v) for v in ig.get("color", (0, 0, 0))))  # type: ignore[arg-type]
                if ig
                else None
            )
            extra = {k: v for k, v in d.items() if k not in {"name", "classes", "ignore"}}
            return cls(str(d.get("name", "custom")), classes, ignore, extra)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a valid label map ({e})") from e

    @classmethod
    def from_json(cls, text: str, source: str = "<json>") -> LabelMap:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from e
        return cls.from_dict(d, source)


def _lm(
    name: str, rows: list[tuple[str, tuple[int, int, int]]], ignore: tuple[str, tuple[int, int, int]] | None
) -> LabelMap:
    classes = tuple(LabelClass(i, n, c) for i, (n, c) in enumerate(rows))
    ig = LabelClass(len(rows), ignore[0], ignore[1]) if ignore else None
    return LabelMap(name, classes, ig)


#: CamVid in the SegNet layout: 11 classes, 11 = unlabelled (void), ignored.
CAMVID = _lm(
    "camvid",
    [
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
    ],
    ("void", (0, 0, 0)),
)


@dataclass(frozen=True)
class CityscapesLabel:
    """One row of cityscapesScripts' ``helpers/labels.py`` (the fields a converter needs)."""

    name: str
    id: int
    train_id: int
    category: str
    category_id: int
    color: tuple[int, int, int]


#: The official Cityscapes label table, row for row as cityscapesScripts' ``labels.py`` defines it
#: (34 label ids 0..33 plus license plate -1; train id 255 or -1 = not trained). A test compares it
#: with the ``cityscapesscripts`` package itself.
CITYSCAPES_LABELS: tuple[CityscapesLabel, ...] = tuple(
    CityscapesLabel(*row)
    for row in [
        ("unlabeled", 0, 255, "void", 0, (0, 0, 0)),
        ("ego vehicle", 1, 255, "void", 0, (0, 0, 0)),
        ("rectification border", 2, 255, "void", 0, (0, 0, 0)),
        ("out of roi", 3, 255, "void", 0, (0, 0, 0)),
        ("static", 4, 255, "void", 0, (0, 0, 0)),
        ("dynamic", 5, 255, "void", 0, (111, 74, 0)),
        ("ground", 6, 255, "void", 0, (81, 0, 81)),
        ("road", 7, 0, "flat", 1, (128, 64, 128)),
        ("sidewalk", 8, 1, "flat", 1, (244, 35, 232)),
        ("parking", 9, 255, "flat", 1, (250, 170, 160)),
        ("rail track", 10, 255, "flat", 1, (230, 150, 140)),
        ("building", 11, 2, "construction", 2, (70, 70, 70)),
        ("wall", 12, 3, "construction", 2, (102, 102, 156)),
        ("fence", 13, 4, "construction", 2, (190, 153, 153)),
        ("guard rail", 14, 255, "construction", 2, (180, 165, 180)),
        ("bridge", 15, 255, "construction", 2, (150, 100, 100)),
        ("tunnel", 16, 255, "construction", 2, (150, 120, 90)),
        ("pole", 17, 5, "object", 3, (153, 153, 153)),
        ("polegroup", 18, 255, "object", 3, (153, 153, 153)),
        ("traffic light", 19, 6, "object", 3, (250, 170, 30)),
        ("traffic sign", 20, 7, "object", 3, (220, 220, 0)),
        ("vegetation", 21, 8, "nature", 4, (107, 142, 35)),
        ("terrain", 22, 9, "nature", 4, (152, 251, 152)),
        ("sky", 23, 10, "sky", 5, (70, 130, 180)),
        ("person", 24, 11, "human", 6, (220, 20, 60)),
        ("rider", 25, 12, "human", 6, (255, 0, 0)),
        ("car", 26, 13, "vehicle", 7, (0, 0, 142)),
        ("truck", 27, 14, "vehicle", 7, (0, 0, 70)),
        ("bus", 28, 15, "vehicle", 7, (0, 60, 100)),
        ("caravan", 29, 255, "vehicle", 7, (0, 0, 90)),
        ("trailer", 30, 255, "vehicle", 7, (0, 0, 110)),
        ("train", 31, 16, "vehicle", 7, (0, 80, 100)),
        ("motorcycle", 32, 17, "vehicle", 7, (0, 0, 230)),
        ("bicycle", 33, 18, "vehicle", 7, (119, 11, 32)),
        ("license plate", -1, -1, "vehicle", 7, (0, 0, 142)),
    ]
)


def _ident(name: str) -> str:
    return name.replace(" ", "_")


def _cityscapes_trainids() -> LabelMap:
    trained = sorted((lab.train_id, lab) for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255)
    classes = tuple(LabelClass(t, _ident(lab.name), lab.color) for t, lab in trained)
    return LabelMap("cityscapes", classes, LabelClass(255, "void", (0, 0, 0)))


def _cityscapes_categories() -> LabelMap:
    # The official table gives categories no colour: each takes the colour of its first trained
    # label (flat = road, construction = building, ...); void, with none, takes unlabeled's black.
    colours: dict[int, tuple[str, tuple[int, int, int]]] = {0: ("void", (0, 0, 0))}
    for lab in CITYSCAPES_LABELS:
        if 0 <= lab.train_id < 255:
            colours.setdefault(lab.category_id, (lab.category, lab.color))
    classes = tuple(LabelClass(cid, name, color) for cid, (name, color) in sorted(colours.items()))
    return LabelMap("cityscapes_categories", classes, LabelClass(255, "ignore", (0, 0, 0)))


#: Cityscapes' 19 train ids (0..18) with their official names and colours; 255 = ignore.
CITYSCAPES = _cityscapes_trainids()
#: Cityscapes' 8 categories (category ids 0..7: void, flat, construction, object, nature, sky,
#: human, vehicle); void is a class here, as the 8-category tutorials train it. 255 = ignore.
CITYSCAPES_CATEGORIES = _cityscapes_categories()
#: KITTI road: binary as two output channels (softmax and argmax, like every other label map, so
#: training, evaluation and labelling need no special case); 255 = outside the region of interest.
KITTI_ROAD = LabelMap(
    "kitti_road",
    (LabelClass(0, "not_road", (255, 0, 0)), LabelClass(1, "road", (255, 0, 255))),
    LabelClass(255, "void", (0, 0, 0)),
)

BUILTIN: dict[str, LabelMap] = {
    "camvid": CAMVID,
    "cityscapes_trainids": CITYSCAPES,
    "cityscapes_categories": CITYSCAPES_CATEGORIES,
    "kitti_road": KITTI_ROAD,
}


def load_label_map(spec: str) -> LabelMap:
    """A built-in name (``camvid``) or a path/URI to a label-map JSON file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if "://" in spec:
        from segray.storage import read_bytes

        return LabelMap.from_json(read_bytes(spec).decode("utf-8"), spec)
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"label map {spec!r}: not a built-in name ({', '.join(BUILTIN)}) and no such file")
    return LabelMap.from_json(p.read_text(), spec)
