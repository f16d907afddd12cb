"""Land-cover areas per zone: polygons (parcels, districts, catchments) laid over a map's masks.

Counting rule: a pixel belongs to a zone when its centre lies inside the zone's polygon (GDAL's
rasterisation with ``all_touched=False``, done per mask block on the mask's own grid). A pixel is never
split between zones or weighted by the fraction inside, so a zone's counted area differs from its
polygon area by at most about one pixel's area per boundary pixel; ``covered_fraction`` compares the
counted labelled area with the polygon's true area, so a zone partly outside the data, or over nodata,
shows it.

Each pixel once: masks of one grid (same CRS, pixel size and alignment) that overlap, such as
neighbouring tiles with a shared margin, count a pixel at the same map coordinates once, from the first
mask (by key) that labels it. Pixels of masks on different grids cannot be matched one to one and are
counted per mask.

Zones come from any vector file GDAL reads (GeoPackage, GeoJSON, Shapefile), local or s3://, in any CRS:
each zone is reprojected to the map's CRS. Areas come from the map's CRS (:mod:`segray.geo.areas`).
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from segray import storage
from segray.geo.areas import row_areas_m2
from segray.geo.cog import NODATA
from segray.geo.scene import SceneInfo, is_geodata
from segray.landcover.maps import MAX_CLASSES, ClassMap, mask_windows, open_map
from segray.outputs.schema import to_parquet_bytes

#: The GeoPackage layer of the zones with their area columns.
LAYER = "zones"
#: Side files a Shapefile needs besides its ``.shp`` (fetched with it from S3 when present).
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg")


@dataclass(frozen=True)
class Zones:
    """The zones of a vector file: their ids (the ``--zone-id`` column), shapely geometries and the
    file's CRS (WKT or ``EPSG:<code>``)."""

    uri: str
    id_column: str
    ids: list[Any]
    geometries: list[Any]
    crs: str


def _read_vector(uri: str) -> tuple[dict[str, Any], np.ndarray, list[np.ndarray]]:
    import pyogrio.raw  # type: ignore[import-untyped]

    if not storage.is_s3(uri):
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri}: no such zones file")
        meta, _, geometry, values = pyogrio.raw.read(uri, return_fids=True)
        return meta, geometry, values
    if uri.lower().endswith(".shp"):  # a Shapefile is several files: fetch them side by side
        with tempfile.TemporaryDirectory(prefix="segray-zones-") as tmp:
            stem = uri[: -len(".shp")]
            name = posixpath.basename(stem)
            for suffix in (".shp", *SHAPEFILE_PARTS):
                if suffix == ".shp" or storage.exists(stem + suffix):
                    (Path(tmp) / (name + suffix)).write_bytes(storage.read_bytes(stem + suffix))
            meta, _, geometry, values = pyogrio.raw.read(str(Path(tmp) / (name + ".shp")), return_fids=True)
            return meta, geometry, values
    meta, _, geometry, values = pyogrio.raw.read(io.BytesIO(storage.read_bytes(uri)), return_fids=True)
    return meta, geometry, values


def read_zones(uri: str, id_column: str) -> Zones:
    """Read the zones; a missing id column, a duplicate id, a zone without a polygon or a file without
    a CRS is an error that says which."""
    import shapely  # type: ignore[import-untyped]

    meta, geometry, values = _read_vector(uri)
    fields = [str(f) for f in meta["fields"]]
    if id_column not in fields:
        raise ValueError(f"{uri}: no zone id column {id_column!r} (its columns: {', '.join(fields)})")
    if not meta.get("crs"):
        raise ValueError(f"{uri}: the zones have no CRS: they cannot be placed on the map")
    ids = [v.item() if hasattr(v, "item") else v for v in values[fields.index(id_column)]]
    dupes = sorted({str(i) for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"{uri}: zone ids repeat in column {id_column!r}: {', '.join(dupes[:10])}")
    geoms = []
    for zone_id, wkb in zip(ids, geometry, strict=True):
        geom = shapely.from_wkb(wkb) if wkb is not None else None
        if geom is None or geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
            kind = "no geometry" if geom is None or geom.is_empty else f"a {geom.geom_type}"
            raise ValueError(f"{uri}: zone {zone_id!r} has {kind}; zones must be polygons")
        geoms.append(geom)
    return Zones(uri, id_column, ids, geoms, str(meta["crs"]))


def to_crs(geometries: Sequence[Any], src: str, dst: str) -> list[Any]:
    """Geometries reprojected from ``src`` to ``dst`` (x/y order: easting/longitude first)."""
    import shapely  # type: ignore[import-untyped]
    from pyproj import CRS, Transformer

    if CRS.from_user_input(src) == CRS.from_user_input(dst):
        return list(geometries)
    project = Transformer.from_crs(src, dst, always_xy=True).transform
    return [shapely.transform(g, lambda xy: np.column_stack(project(xy[:, 0], xy[:, 1]))) for g in geometries]


def polygon_area_m2(geometry: Any, crs: str) -> float:
    """A polygon's true area in m^2: planar in a projected CRS (in the CRS's unit, converted), geodesic
    on the ellipsoid in a geographic one."""
    from pyproj import CRS

    parsed = CRS.from_user_input(crs)
    if parsed.is_geographic:
        geod = parsed.get_geod()
        if geod is None:
            raise ValueError(f"{parsed.name}: the CRS names no ellipsoid")
        return abs(float(geod.geometry_area_perimeter(geometry)[0]))
    x_unit, y_unit = (float(axis.unit_conversion_factor) for axis in parsed.axis_info[:2])
    return float(geometry.area) * x_unit * y_unit


# --- counting -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One raster counted per zone: a mask (class ids) or a pair of masks (from-to codes)."""

    key: str
    info: SceneInfo
    blocks: Callable[[], Any]  # () -> iterator of (window, int64 values with -1 for nodata)


def _grid(info: SceneInfo) -> tuple[tuple[Any, ...], int, int]:
    """The grid a mask lies on (CRS, pixel size, alignment) and its top-left pixel's column and row on
    that grid: masks of one grid name a pixel at the same place by the same (row, column)."""
    a, b, c, d, e, f = info.transform
    if b != 0 or d != 0:  # a rotated grid: matched only with masks of the very same transform
        return (info.crs, a, b, c, d, e, f), 0, 0
    col, row = c / a, f / e
    col0, row0 = math.floor(col + 1e-6), math.floor(row + 1e-6)
    frac_c, frac_f = round(col - col0, 6), round(row - row0, 6)
    return (info.crs, a, e, frac_c, frac_f), col0, row0


@dataclass
class ZoneCounts:
    """m^2 per value (shape (zones, n_values)) and m^2 of nodata per zone, each pixel counted once."""

    areas: np.ndarray
    nodata: np.ndarray


def count_zones(layers: Sequence[Layer], geometries: Sequence[Any] | None, n_values: int) -> ZoneCounts:
    """Area of each value inside each zone (pixel centre inside the polygon), over all layers, a pixel
    of one grid counted once. ``geometries`` None: one zone, every pixel of the layers. The geometries are
    in the layers' CRS."""
    from affine import Affine
    from rasterio.features import rasterize

    n_zones = 1 if geometries is None else len(geometries)
    areas = np.zeros((n_zones, n_values), np.float64)
    seen: dict[tuple[Any, int], np.ndarray] = {}
    nodata_keys: dict[tuple[Any, int], list[np.ndarray]] = {}
    nodata_areas: dict[tuple[Any, int], list[np.ndarray]] = {}
    boxes = None if geometries is None else [g.bounds for g in geometries]
    for layer in layers:
        info = layer.info
        grid, col0, row0 = _grid(info)
        affine = info.affine()
        rows = row_areas_m2(info.crs, info.transform, info.height)
        for window, values in layer.blocks():
            block_transform = affine @ Affine.translation(int(window.col_off), int(window.row_off))
            h, w = values.shape
            corners = np.array([block_transform @ xy for xy in ((0, 0), (w, 0), (0, h), (w, h))])
            (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
            zones = (
                [0]
                if boxes is None
                else [
                    z
                    for z, (bx0, by0, bx1, by1) in enumerate(boxes)
                    if bx0 <= x1 and bx1 >= x0 and by0 <= y1 and by1 >= y0
                ]
            )
            if not zones:
                continue
            r0, c0 = int(window.row_off), int(window.col_off)
            keys = (np.arange(h, dtype=np.int64)[:, None] + r0 + row0) * (1 << 32) + (
                np.arange(w, dtype=np.int64)[None, :] + c0 + col0
            )
            pixel_area = np.broadcast_to(rows[r0 : r0 + h, None], (h, w))
            for z in zones:
                if geometries is None:
                    inside = np.ones((h, w), bool)
                else:
                    inside = rasterize(
                        [(geometries[z], 1)], out_shape=(h, w), transform=block_transform, fill=0,
                        all_touched=False, dtype="uint8",
                    ).astype(bool)  # fmt: skip
                    if not inside.any():
                        continue
                k, v, a = keys[inside], values[inside], pixel_area[inside]
                slot = (grid, z)
                before = seen.get(slot)
                fresh = np.ones(k.shape, bool) if before is None else ~np.isin(k, before, assume_unique=True)
                labelled = fresh & (v >= 0)
                areas[z] += np.bincount(v[labelled], weights=a[labelled], minlength=n_values)[:n_values]
                if labelled.any():
                    seen[slot] = k[labelled] if before is None else np.union1d(before, k[labelled])
                gap = fresh & (v < 0)
                if gap.any():
                    nodata_keys.setdefault(slot, []).append(k[gap])
                    nodata_areas.setdefault(slot, []).append(a[gap])
    nodata = np.zeros(n_zones, np.float64)
    for slot, parts in nodata_keys.items():
        k = np.concatenate(parts)
        a = np.concatenate(nodata_areas[slot])
        k, first = np.unique(k, return_index=True)  # nodata in two overlapping masks: once
        a = a[first]
        if slot in seen:  # nodata in one mask but labelled in another: labelled
            a = a[~np.isin(k, seen[slot], assume_unique=True)]
        nodata[slot[1]] += float(a.sum())
    return ZoneCounts(areas, nodata)


def mask_layers(cmap: ClassMap) -> list[Layer]:
    """A map's masks as layers of class ids (nodata -1); a value beyond the label map is an error."""
    limit = cmap.label_map.num_classes if cmap.label_map is not None else MAX_CLASSES

    def blocks_of(m: Any) -> Callable[[], Any]:
        def blocks() -> Any:
            for window, ids in mask_windows(m):
                values = ids.astype(np.int64)
                values[ids == NODATA] = -1
                if (values >= limit).any():
                    stray = np.unique(values[values >= limit]).tolist()
                    raise ValueError(f"{m.uri}: mask values {stray} are not classes of the label map (0..{limit - 1})")
                yield window, values

        return blocks

    return [Layer(m.key, m.info, blocks_of(m)) for m in cmap.masks]


# --- the zones command -------------------------------------------------------------------------------


def map_date_model(uri: str) -> tuple[str, str]:
    """A map's date and model: the labelling output's stats ``date`` column when it holds one date (else
    the output's name), and its one model id (several: joined with ``,``; a single mask: empty)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if is_geodata(uri):
        return name.rsplit(".", 1)[0], ""
    parts = storage.list_files(storage.join(uri, "stats"), (".parquet",))
    dates: set[str] = set()
    models: set[str] = set()
    fs = storage.resolve(storage.join(uri, "stats"))[0]
    for part in parts:
        with fs.open_input_file(part) as f:
            table = pq.read_table(io.BytesIO(f.read()))
        names = table.column_names
        if "date" in names:
            dates |= {str(d) for d in table.column("date").to_pylist() if d is not None}
        if "model_id" in names:
            models |= {str(m) for m in table.column("model_id").to_pylist() if m is not None}
    return (dates.pop() if len(dates) == 1 else name), ",".join(sorted(models))


@dataclass
class ZonesSummary:
    maps: list[str]
    zones: int
    rows: int
    output: str
    files: list[str] = field(default_factory=list)


def _column_names(cmaps: Sequence[ClassMap], counts: Sequence[ZoneCounts]) -> list[tuple[str, int]]:
    """(class name, id) of the columns: a label map's classes; without one, the ids found in any map."""
    with_names = [c for c in cmaps if c.label_map is not None]
    if with_names:
        names = with_names[0].label_map.names  # type: ignore[union-attr]
        for c in with_names[1:]:
            if c.label_map.names != names:  # type: ignore[union-attr]
                raise ValueError(f"{cmaps[0].source} and {c.source} name their classes differently")
        return list(zip(names, range(len(names)), strict=True))
    found = sorted({int(i) for zc in counts for i in np.flatnonzero(zc.areas.sum(axis=0))})
    return [(str(i), i) for i in found]


def zone_table(
    zones: Zones, cmaps: Sequence[ClassMap], counts: Sequence[ZoneCounts], zone_areas: Sequence[np.ndarray]
) -> pa.Table:
    """One row per zone x map (date, model): areas, hectares and shares per class, nodata, covered fraction."""
    columns = _column_names(cmaps, counts)
    rows: dict[str, list[Any]] = {zones.id_column: [], "date": [], "model_id": [], "map": [], "zone_area_m2": []}
    for name, _ in columns:
        rows[f"area_m2_{name}"], rows[f"area_ha_{name}"], rows[f"share_{name}"] = [], [], []
    rows["area_labelled_m2"], rows["area_nodata_m2"], rows["covered_fraction"] = [], [], []
    for cmap, zc, polygon_areas in zip(cmaps, counts, zone_areas, strict=True):
        date, model = map_date_model(cmap.source)
        for z, zone_id in enumerate(zones.ids):
            labelled = float(zc.areas[z].sum())
            rows[zones.id_column].append(zone_id)
            rows["date"].append(date)
            rows["model_id"].append(model)
            rows["map"].append(cmap.source)
            rows["zone_area_m2"].append(float(polygon_areas[z]))
            for name, i in columns:
                area = float(zc.areas[z, i])
                rows[f"area_m2_{name}"].append(area)
                rows[f"area_ha_{name}"].append(area / 10_000)
                rows[f"share_{name}"].append(area / labelled if labelled else None)
            rows["area_labelled_m2"].append(labelled)
            rows["area_nodata_m2"].append(float(zc.nodata[z]))
            rows["covered_fraction"].append(labelled / polygon_areas[z] if polygon_areas[z] else None)
    return pa.table(rows)


def _field_values(column: pa.ChunkedArray) -> np.ndarray:
    """A column as the array a GeoPackage field is written from (a null number: NaN)."""
    if pa.types.is_floating(column.type):
        return np.asarray(column.to_pylist(), dtype=np.float64)
    return column.to_numpy(zero_copy_only=False)


def write_zone_gpkg(uri: str, table: pa.Table, zones: Zones) -> None:
    """The zones with their area columns as a GeoPackage layer (one feature per zone x date x model), in
    the zones' own CRS, so a GIS opens the result as a layer."""
    import pyogrio.raw
    import shapely  # type: ignore[import-untyped]

    by_id = {str(i): g for i, g in zip(zones.ids, zones.geometries, strict=True)}
    geoms = [by_id[str(i)] for i in table.column(zones.id_column).to_pylist()]
    multi = any(g.geom_type == "MultiPolygon" for g in geoms)
    if multi:
        geoms = [shapely.MultiPolygon([g]) if g.geom_type == "Polygon" else g for g in geoms]
    wkb = np.array([shapely.to_wkb(g) for g in geoms], dtype=object)
    names = table.column_names
    data = [_field_values(table.column(n)) for n in names]
    with tempfile.TemporaryDirectory(prefix="segray-zones-") as tmp:
        path = Path(tmp) / "zones.gpkg"
        pyogrio.raw.write(
            str(path), wkb, data, names, layer=LAYER, driver="GPKG",
            geometry_type="MultiPolygon" if multi else "Polygon", crs=zones.crs,
        )  # fmt: skip
        storage.write_bytes(uri, path.read_bytes())


def zone_counts(cmap: ClassMap, zones: Zones) -> tuple[ZoneCounts, np.ndarray]:
    """A map's areas per zone, and each zone's polygon area in the map's CRS."""
    geoms = to_crs(zones.geometries, zones.crs, cmap.crs)
    polygon_areas = np.array([polygon_area_m2(g, cmap.crs) for g in geoms], np.float64)
    return count_zones(mask_layers(cmap), geoms, MAX_CLASSES), polygon_areas


def run_zones(maps: Sequence[str], zones_uri: str, zone_id: str, output: str, labels: str | None) -> ZonesSummary:
    """Areas per class in each zone for each map; writes ``zones.parquet``, ``zones.gpkg`` and
    ``_zones.json`` under ``output``."""
    zones = read_zones(zones_uri, zone_id)
    cmaps = [open_map(m, labels) for m in maps]
    results = [zone_counts(c, zones) for c in cmaps]
    table = zone_table(zones, cmaps, [r[0] for r in results], [r[1] for r in results])
    files = [storage.join(output, "zones.parquet"), storage.join(output, "zones.gpkg")]
    storage.write_bytes(files[0], to_parquet_bytes(table))
    write_zone_gpkg(files[1], table, zones)
    summary = ZonesSummary(list(maps), len(zones.ids), table.num_rows, output, files)
    info = {
        "maps": list(maps),
        "zones": zones_uri,
        "zone_id": zone_id,
        "counting": "pixel centre inside the zone polygon; a pixel of one grid counted once across masks",
        "rows": table.num_rows,
        "files": files,
    }
    storage.write_bytes(storage.join(output, "_zones.json"), json.dumps(info, indent=2).encode())
    return summary
