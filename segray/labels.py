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

BUILTIN: dict[str, LabelMap] = {"camvid": CAMVID}


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
