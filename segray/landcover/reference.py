"""Reference points read back from a GeoPackage (or any vector file GDAL reads) and placed on a map:
each point's map class is the map's pixel under it, its reference class the interpreters' column."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segray import storage
from segray.geo.cog import NODATA
from segray.landcover.maps import ClassMap, classes_at

#: Why a reference point was left out.
OUTSIDE, ON_NODATA, NOT_INTERPRETED = "outside the map", "on nodata", "no reference class"


@dataclass
class ReferencePoints:
    """The points of a reference file: ids (its ``point_id`` column, else the feature ids), x/y in the
    map's CRS, the mask each was drawn from (None when the file does not say) and the reference value."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    masks: list[str | None]
    reference: list[Any]


def point_xy(wkb: bytes | None, uri: str) -> tuple[float, float]:
    """x and y of a point's WKB (ISO or extended, with or without Z/M); another geometry is an error."""
    if wkb is None or len(wkb) < 21:
        raise ValueError(f"{uri}: a feature without a point geometry: the reference sample must be points")
    order = "<" if wkb[0] == 1 else ">"
    (kind,) = struct.unpack(order + "I", wkb[1:5])
    if (kind & 0x0FFFFFFF) % 1000 != 1:
        raise ValueError(f"{uri}: a geometry of WKB type {kind}: the reference sample must be points")
    start = 9 if kind & 0x20000000 else 5  # an extended WKB with an SRID carries it before the coordinates
    x, y = struct.unpack(order + "dd", wkb[start : start + 16])
    return float(x), float(y)


def read_reference(uri: str, column: str, crs: str) -> ReferencePoints:
    """Read the points, their ids, masks and ``column``; points in another CRS than the map's are
    transformed to it. A missing column is an error naming the file's columns."""
    import pyogrio.raw  # type: ignore[import-untyped]

    source: Any = uri if not storage.is_s3(uri) else io.BytesIO(storage.read_bytes(uri))
    if not storage.is_s3(uri) and not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: no such reference file")
    meta, fids, geometry, values = pyogrio.raw.read(source, return_fids=True)
    fields = [str(f) for f in meta["fields"]]
    if column not in fields:
        raise ValueError(f"{uri}: no reference column {column!r} (its columns: {', '.join(fields)})")
    data = dict(zip(fields, values, strict=True))
    xy = np.array([point_xy(g, uri) for g in geometry], dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    if meta.get("crs") and len(xy):
        from pyproj import CRS, Transformer

        if CRS.from_user_input(meta["crs"]) != CRS.from_user_input(crs):
            x, y = Transformer.from_crs(meta["crs"], crs, always_xy=True).transform(x, y)
    ids = np.asarray(data.get("point_id", fids), dtype=np.int64)
    masks: list[str | None] = [None if m is None else str(m) for m in data.get("mask", [None] * len(ids))]
    return ReferencePoints(ids, np.asarray(x, np.float64), np.asarray(y, np.float64), masks, list(data[column]))


def map_classes(cmap: ClassMap, points: ReferencePoints) -> np.ndarray:
    """Each point's map class id; -1 outside every mask, 255 on nodata. A point is looked up in the mask
    it names first, else in the first mask (by key) whose grid it falls on."""
    n = len(points.ids)
    found = np.full(n, -1, dtype=np.int64)
    named = np.array([m or "" for m in points.masks], dtype=object)
    where: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # mask index -> (points, rows, cols)
    taken = np.zeros(n, dtype=bool)
    for own_mask_only in (True, False):
        for k, m in enumerate(cmap.masks):
            candidates = ~taken & ((named == m.key) if own_mask_only else True)
            row, col, inside = m.pixel(points.x, points.y)
            hit = candidates & inside
            if hit.any():
                prev = where.get(k, (np.array([], np.int64),) * 3)
                idx = np.flatnonzero(hit)
                where[k] = (np.r_[prev[0], idx], np.r_[prev[1], row[hit]], np.r_[prev[2], col[hit]])
                taken |= hit
    for k, (idx, row, col) in where.items():
        found[idx] = classes_at(cmap.masks[k], row, col)
    return found


@dataclass
class Placed:
    """Points that count: (map class id, reference class id) pairs; and those left out, with why."""

    map_ids: np.ndarray
    reference_ids: np.ndarray
    left_out: list[dict[str, Any]] = field(default_factory=list)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def place(cmap: ClassMap, points: ReferencePoints) -> Placed:
    """Points outside the map, on nodata or without a reference class are left out (listed); a reference
    class the map does not have is an error naming it, and the points that give it."""
    mapped = map_classes(cmap, points)
    unknown: dict[str, list[int]] = {}
    keep, ref, left = [], [], []
    for i, (value, m) in enumerate(zip(points.reference, mapped.tolist(), strict=True)):
        why = OUTSIDE if m < 0 else ON_NODATA if m == NODATA else NOT_INTERPRETED if _blank(value) else None
        cid = None if _blank(value) else cmap.class_id(value)
        if cid is None and not _blank(value):
            unknown.setdefault(str(value), []).append(int(points.ids[i]))
        if why is not None:
            left.append({"point_id": int(points.ids[i]), "x": float(points.x[i]), "y": float(points.y[i]), "why": why})
        elif cid is not None:
            keep.append(i)
            ref.append(cid)
    if unknown:
        said = "; ".join(f"{v!r} (points {ids[:10]})" for v, ids in sorted(unknown.items()))
        classes = cmap.label_map.names if cmap.label_map is not None else "class ids 0..254"
        raise ValueError(f"reference classes that the map {cmap.source} does not have: {said}; its classes: {classes}")
    return Placed(mapped[keep], np.asarray(ref, dtype=np.int64), left)
