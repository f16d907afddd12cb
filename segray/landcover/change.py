"""Land-cover change between two maps of the same place: the from-to matrix in hectares (whole map, and
per zone when zones are given), gains, losses and net change per class, and a change COG per mask.

The masks of the two maps are paired by their key (``masks/<scene>.tif``); two maps of one mask each are
paired as they are. A pair must lie on one grid (CRS, transform, size): otherwise the pair is refused
with the reason, unless ``resample="nearest"`` reads the "to" mask onto the "from" mask's grid (nearest
neighbour: class ids are never averaged). A pixel counts when both maps label it; nodata in either map
is nodata in the change. Pixels are counted as in :mod:`segray.landcover.zones` (each pixel of a grid
once, zone membership by pixel centre).

The change COG holds code ``from * K + to`` (K classes) in each pixel, with a colour table: unchanged
pixels in a pale tint of their class's colour, changed pixels in the new class's colour. The legend
(code, from, to, colour) is in ``_change.json``. A uint8 COG holds K * K codes only for K <= 15;
with more classes the COG is left out (the matrix is still written) and the JSON says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from segray import storage
from segray.geo.cog import NODATA, CogMaskWriter
from segray.geo.scene import block_windows, open_scene
from segray.labels import LabelMap
from segray.landcover.maps import ClassMap, MapMask, map_totals, open_map
from segray.landcover.zones import Layer, count_zones, polygon_area_m2, read_zones, to_crs
from segray.outputs.schema import to_parquet_bytes

#: The most classes whose K * K from-to codes fit a uint8 COG beside nodata (255).
MAX_COG_CLASSES = 15
RESAMPLING = ("nearest",)
#: Colours of classes when the maps carry no label map (a fixed qualitative palette).
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


@dataclass(frozen=True)
class MaskPair:
    key: str
    before: MapMask
    after: MapMask
    resampled: bool


def grid_difference(a: MapMask, b: MapMask) -> str | None:
    """Why two masks are not on one grid (None: they are)."""
    ia, ib = a.info, b.info
    if ia.crs != ib.crs:
        return f"CRS {ia.crs} vs {ib.crs}"
    if (ia.width, ia.height) != (ib.width, ib.height):
        return f"size {ia.width}x{ia.height} vs {ib.width}x{ib.height} pixels"
    if not np.allclose(ia.transform, ib.transform, rtol=0, atol=1e-9 * max(1.0, *map(abs, ia.transform))):
        return f"transform {tuple(ia.transform)} vs {tuple(ib.transform)}"
    return None


def pair_masks(before: ClassMap, after: ClassMap, resample: str | None) -> tuple[list[MaskPair], list[str]]:
    """Pairs of masks on one grid, and the keys found in only one map."""
    if len(before.masks) == 1 and len(after.masks) == 1:
        matched = [(before.masks[0].key, before.masks[0], after.masks[0])]
        unpaired: list[str] = []
    else:
        after_by_key = {m.key: m for m in after.masks}
        matched = [(m.key, m, after_by_key[m.key]) for m in before.masks if m.key in after_by_key]
        keys = {m.key for m in before.masks} ^ set(after_by_key)
        unpaired = sorted(keys)
        if not matched:
            raise ValueError(f"{before.source} and {after.source} have no mask key in common")
    pairs = []
    for key, a, b in matched:
        why = grid_difference(a, b)
        if why is not None and resample is None:
            raise ValueError(
                f"{a.uri} and {b.uri} are on different grids ({why}): pass --resample nearest to read the "
                "second onto the first's grid"
            )
        pairs.append(MaskPair(key, a, b, why is not None))
    return pairs, unpaired


def pair_blocks(pair: MaskPair, n_classes: int) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """``(window, from ids, to ids)`` of each block of the "from" mask (nodata stays 255); the "to" mask
    read onto the "from" grid with nearest neighbour when the grids differ."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    info = pair.before.info
    with open_scene(pair.before.uri) as da, open_scene(pair.after.uri) as db:
        src = db
        if pair.resampled:
            src = WarpedVRT(
                db, crs=info.crs, transform=info.affine(), width=info.width, height=info.height,
                resampling=Resampling.nearest, nodata=NODATA, src_nodata=NODATA,
            )  # fmt: skip
        try:
            for window in block_windows(info):
                a, b = da.read(1, window=window), src.read(1, window=window)
                for ids, m in ((a, pair.before), (b, pair.after)):
                    stray = (ids != NODATA) & (ids >= n_classes)
                    if stray.any():
                        values = np.unique(ids[stray]).tolist()
                        raise ValueError(f"{m.uri}: mask values {values} are not classes 0..{n_classes - 1}")
                yield window, a, b
        finally:
            if src is not db:
                src.close()


def codes(a: np.ndarray, b: np.ndarray, n_classes: int) -> np.ndarray:
    """From-to codes ``from * K + to`` (int64), -1 where either mask is nodata."""
    out = a.astype(np.int64) * n_classes + b.astype(np.int64)
    out[(a == NODATA) | (b == NODATA)] = -1
    return out


def pair_layer(pair: MaskPair, n_classes: int) -> Layer:
    def blocks() -> Iterator[tuple[Any, np.ndarray]]:
        for window, a, b in pair_blocks(pair, n_classes):
            yield window, codes(a, b, n_classes)

    return Layer(pair.key, pair.before.info, blocks)


def class_names(before: ClassMap, after: ClassMap) -> tuple[list[str], list[tuple[int, int, int]]]:
    """The classes both maps share (their label map's names and colours); maps without a label map are
    named by id, as many classes as the highest id either map holds."""
    lm = before.label_map or after.label_map
    if before.label_map is not None and after.label_map is not None and before.label_map.names != after.label_map.names:
        raise ValueError(
            f"{before.source} and {after.source} have different classes ({before.label_map.names} vs "
            f"{after.label_map.names}): change is measured between maps of one label map"
        )
    if lm is not None:
        return lm.names, [c.color for c in lm.classes]
    pixels = map_totals(before).pixels + map_totals(after).pixels
    k = int(np.flatnonzero(pixels).max()) + 1 if pixels.any() else 1
    return [str(i) for i in range(k)], [PALETTE[i % len(PALETTE)] for i in range(k)]


def legend(names: Sequence[str], colours: Sequence[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Every from-to code with its classes and colour: unchanged a pale tint of the class's colour,
    changed the new class's colour."""
    out = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            colour = tuple(int(v + (255 - v) * 0.6) for v in colours[i]) if i == j else tuple(colours[j])
            out.append({"code": i * len(names) + j, "from": a, "to": b, "changed": i != j, "color": list(colour)})
    return out


def legend_label_map(entries: Sequence[dict[str, Any]]) -> LabelMap:
    """The legend as a label map (what the COG writer colours a mask with)."""
    classes = [{"id": e["code"], "name": f"c{e['code']}", "color": e["color"]} for e in entries]
    return LabelMap.from_dict({"name": "change", "classes": classes})


def matrix_rows(matrix_m2: np.ndarray, names: Sequence[str]) -> dict[str, list[Any]]:
    """A from-to matrix (m^2) as columns: ``from`` and one hectare column per "to" class."""
    rows: dict[str, list[Any]] = {"from": list(names)}
    for j, b in enumerate(names):
        rows[f"to_{b}_ha"] = [float(v) / 10_000 for v in matrix_m2[:, j]]
    return rows


def class_change(matrix_m2: np.ndarray, names: Sequence[str]) -> dict[str, list[Any]]:
    """Per class: hectares in each map, gains (from other classes), losses (to other classes), net."""
    ha = matrix_m2 / 10_000
    stay = np.diag(ha)
    before, after = ha.sum(axis=1), ha.sum(axis=0)
    gains, losses = after - stay, before - stay
    return {
        "class": list(names),
        "from_ha": before.tolist(),
        "to_ha": after.tolist(),
        "unchanged_ha": stay.tolist(),
        "gains_ha": gains.tolist(),
        "losses_ha": losses.tolist(),
        "net_ha": (gains - losses).tolist(),
    }


@dataclass
class ChangeSummary:
    before: str
    after: str
    output: str
    classes: list[str]
    matrix_ha: np.ndarray
    changed_ha: float
    unpaired: list[str]
    files: list[str] = field(default_factory=list)


def write_change_cogs(output: str, pairs: Sequence[MaskPair], n_classes: int, labels: LabelMap) -> list[str]:
    """One change COG per mask pair, under ``output``/change/ with the mask's key."""
    files = []
    for pair in pairs:
        key = pair.key if pair.key.startswith("masks/") else f"masks/{pair.key}"
        uri = storage.join(output, "change/" + key.removeprefix("masks/"))
        with CogMaskWriter(uri, pair.before.info, labels) as writer:
            for window, a, b in pair_blocks(pair, n_classes):
                c = codes(a, b, n_classes)
                c[c < 0] = NODATA
                writer.write(window, c)
        files.append(uri)
    return files


def run_change(
    before_uri: str,
    after_uri: str,
    output: str,
    zones_uri: str | None = None,
    zone_id: str | None = None,
    resample: str | None = None,
    labels: str | None = None,
) -> ChangeSummary:
    """Compare two maps; writes ``from_to_ha.parquet``, ``class_change.parquet``, the change COGs, with
    zones ``zones_from_to_ha.parquet`` and ``zones_class_change.parquet``, and ``_change.json``."""
    if (zones_uri is None) != (zone_id is None):
        raise ValueError("--zones and --zone-id go together")
    if resample is not None and resample not in RESAMPLING:
        raise ValueError(f"--resample {resample!r}: one of {', '.join(RESAMPLING)}")
    before, after = open_map(before_uri, labels), open_map(after_uri, labels)
    pairs, unpaired = pair_masks(before, after, resample)
    names, colours = class_names(before, after)
    k = len(names)
    layers = [pair_layer(p, k) for p in pairs]
    counts = count_zones(layers, None, k * k)
    matrix = counts.areas[0].reshape(k, k)
    files = [storage.join(output, "from_to_ha.parquet"), storage.join(output, "class_change.parquet")]
    storage.write_bytes(files[0], to_parquet_bytes(pa.table(matrix_rows(matrix, names))))
    storage.write_bytes(files[1], to_parquet_bytes(pa.table(class_change(matrix, names))))
    entries = legend(names, colours)
    cog_note = None
    if k <= MAX_COG_CLASSES:
        files += write_change_cogs(output, pairs, k, legend_label_map(entries))
    else:
        cog_note = f"{k} classes: {k * k} from-to codes do not fit a uint8 COG (at most {MAX_COG_CLASSES} classes)"
    if zones_uri is not None and zone_id is not None:
        zones = read_zones(zones_uri, zone_id)
        geoms = to_crs(zones.geometries, zones.crs, before.crs)
        zc = count_zones(layers, geoms, k * k)
        per_zone: dict[str, list[Any]] = {zone_id: [], "zone_area_m2": []}
        per_class: dict[str, list[Any]] = {zone_id: []}
        for z, (zid, g) in enumerate(zip(zones.ids, geoms, strict=True)):
            m = zc.areas[z].reshape(k, k)
            rows = matrix_rows(m, names)
            per_zone[zone_id] += [zid] * k
            per_zone["zone_area_m2"] += [polygon_area_m2(g, before.crs)] * k
            for col, values in rows.items():
                per_zone.setdefault(col, []).extend(values)
            cc = class_change(m, names)
            per_class[zone_id] += [zid] * k
            for col, values in cc.items():
                per_class.setdefault(col, []).extend(values)
        zone_files = [
            storage.join(output, "zones_from_to_ha.parquet"),
            storage.join(output, "zones_class_change.parquet"),
        ]
        storage.write_bytes(zone_files[0], to_parquet_bytes(pa.table(per_zone)))
        storage.write_bytes(zone_files[1], to_parquet_bytes(pa.table(per_class)))
        files += zone_files
    changed = float((matrix.sum() - np.trace(matrix)) / 10_000)
    info = {
        "from": before_uri,
        "to": after_uri,
        "classes": names,
        "resample": resample,
        "resampled_masks": [p.key for p in pairs if p.resampled],
        "unpaired_masks": unpaired,
        "code": "from_index * classes + to_index; 255 where either map has no class",
        "legend": entries,
        "cog": cog_note or "written",
        "changed_ha": changed,
        "files": files,
    }
    storage.write_bytes(storage.join(output, "_change.json"), json.dumps(info, indent=2).encode())
    return ChangeSummary(before_uri, after_uri, output, names, matrix / 10_000, changed, unpaired, files)
