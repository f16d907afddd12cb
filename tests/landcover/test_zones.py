"""Areas per zone and change between dates, through `segray landcover zones` and `segray landcover change`
on real COG masks and vector files: zones crossing a tile boundary and partly outside the data checked
against shapely, overlapping tiles counted once, and a from-to matrix of known changes checked exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pyogrio.raw
import pytest
import rasterio
import shapely
from helpers.cli import run
from helpers.geodata import UTM33_ORIGIN
from rasterio.transform import from_origin
from rasterio.windows import Window

from segray.geo.cog import NODATA, CogMaskWriter
from segray.geo.scene import SceneInfo
from segray.labels import LabelMap

X0, Y0 = UTM33_ORIGIN
PIXEL = 10.0
NAMES = ["forest", "water", "urban"]
LABELS = LabelMap.from_dict(
    {"name": "lc", "classes": [{"id": i, "name": n, "color": c} for i, (n, c) in enumerate(
        zip(NAMES, [[30, 120, 40], [20, 60, 200], [200, 40, 40]], strict=True))]}
)  # fmt: skip


def write_mask(path: Path, mask: np.ndarray, col_off: int = 0, pixel: float = PIXEL) -> Path:
    """A class mask COG as segray writes a scene's, ``col_off`` pixels east of the shared origin."""
    h, w = mask.shape
    transform = from_origin(X0 + col_off * pixel, Y0, pixel, pixel)
    info = SceneInfo(
        uri=str(path), width=w, height=h, count=1, dtypes=("uint8",), descriptions=(None,), crs="EPSG:32633",
        transform=tuple(transform)[:6], bounds=(0.0, 0.0, 0.0, 0.0), bounds_wgs84=None, nodata=255.0,
        block_shape=(h, w), is_geographic=False,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with CogMaskWriter(str(path), info, LABELS) as writer:
        writer.write(Window(0, 0, w, h), mask)
    return path


def write_zones(path: Path, ids: list[str], polygons: list[Any], crs: str = "EPSG:32633") -> Path:
    driver = "GeoJSON" if path.suffix == ".geojson" else "GPKG"
    wkb = np.array([shapely.to_wkb(p) for p in polygons], dtype=object)
    pyogrio.raw.write(
        str(path), wkb, [np.array(ids, dtype=object)], ["parcel"], driver=driver, geometry_type="Polygon", crs=crs
    )
    return path


def box(col0: float, row0: float, col1: float, row1: float) -> Any:
    """A rectangle in map coordinates given in (fractional) pixel columns and rows of the shared grid."""
    return shapely.box(X0 + col0 * PIXEL, Y0 - row1 * PIXEL, X0 + col1 * PIXEL, Y0 - row0 * PIXEL)


# Two tiles of one grid, 40 rows: tile A columns 0..59, tile B columns 50..109 (10 shared columns). Classes
# vary with the column; A has nodata in the shared columns' top rows (B labels them), B a nodata band.
HEIGHT, WIDTH_A, OFF_B, WIDTH_B = 40, 60, 50, 60


def truth(seed: int) -> np.ndarray:
    """The class of every pixel of the grid (columns 0..109), as both tiles agree on it."""
    cols = np.arange(OFF_B + WIDTH_B)
    rows = np.arange(HEIGHT)
    return ((cols[None, :] // 7 + rows[:, None] // 9 + seed) % 3).astype(np.uint8)


def write_tiles(root: Path, seed: int) -> tuple[Path, np.ndarray]:
    """A labelling output of two overlapping tiles; returns it and the mosaic (nodata where no tile labels)."""
    t = truth(seed)
    a = t[:, :WIDTH_A].copy()
    a[:8, OFF_B:] = NODATA  # labelled by B only
    b = t[:, OFF_B:].copy()
    b[30:34, :] = NODATA  # nodata in both tiles where they overlap, in B alone elsewhere
    a[30:34, OFF_B:] = NODATA
    write_mask(root / "masks" / "tile_a.tif", a)
    write_mask(root / "masks" / "tile_b.tif", b, col_off=OFF_B)
    mosaic = t.copy()
    mosaic[30:34, OFF_B:] = NODATA
    return root, mosaic


def centre_counts(mosaic: np.ndarray, polygon: Any) -> tuple[np.ndarray, int]:
    """Pixels of each class and of nodata whose centre is inside the polygon, by shapely."""
    rows, cols = np.mgrid[0 : mosaic.shape[0], 0 : mosaic.shape[1]]
    inside = shapely.contains_xy(polygon, X0 + (cols + 0.5) * PIXEL, Y0 - (rows + 0.5) * PIXEL)
    values = mosaic[inside]
    return np.bincount(values[values != NODATA], minlength=3), int((values == NODATA).sum())


def boundary_pixels(polygon: Any, height: int, width: int) -> int:
    """Pixels of the grid that the polygon's boundary crosses."""
    cells = [box(c, r, c + 1, r + 1) for r in range(height) for c in range(width)]
    return int(sum(cell.intersects(polygon.boundary) for cell in cells))


def test_zone_areas_across_tiles_and_outside_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.json"
    labels.write_text(LABELS.to_json())
    june, june_mosaic = write_tiles(tmp_path / "2026-06-05", seed=0)
    july, july_mosaic = write_tiles(tmp_path / "2026-07-10", seed=1)
    polygons = {
        "across": shapely.Polygon(  # crosses the tile boundary and the shared columns, slanted edges
            [
                (X0 + 31.3 * PIXEL, Y0 - 2.6 * PIXEL),
                (X0 + 88.2 * PIXEL, Y0 - 4.1 * PIXEL),
                (X0 + 80.7 * PIXEL, Y0 - 36.4 * PIXEL),
                (X0 + 40.5 * PIXEL, Y0 - 29.9 * PIXEL),
            ]
        ),  # fmt: skip
        "outside": box(95.4, -6.3, 130.8, 20.2),  # beyond tile B's east edge and above the tiles
        "nowhere": box(200.0, 0.0, 210.0, 10.0),  # off the data altogether
    }
    zones = write_zones(tmp_path / "zones.gpkg", list(polygons), list(polygons.values()))
    out = tmp_path / "zones_out"

    code, text = run(
        capsys, "landcover", "zones", "--map", str(june), str(july), "--zones", str(zones),
        "--zone-id", "parcel", "--output", str(out), "--labels", str(labels),
    )  # fmt: skip
    assert code == 0, text
    assert "3 zones x 2 maps: 6 rows" in text
    table = pq.read_table(out / "zones.parquet").to_pylist()
    assert [(r["parcel"], r["date"]) for r in table] == [(z, d) for d in ("2026-06-05", "2026-07-10") for z in polygons]

    data_extent = box(0, 0, OFF_B + WIDTH_B, HEIGHT)
    for row in table:
        polygon = polygons[row["parcel"]]
        mosaic = june_mosaic if row["date"] == "2026-06-05" else july_mosaic
        classes, nodata = centre_counts(mosaic, polygon)
        # Centre-of-pixel counting, each pixel once across the overlapping tiles: exactly shapely's count.
        for i, name in enumerate(NAMES):
            assert row[f"area_m2_{name}"] == pytest.approx(classes[i] * PIXEL**2)
            assert row[f"area_ha_{name}"] == pytest.approx(classes[i] * PIXEL**2 / 10_000)
        assert row["area_nodata_m2"] == pytest.approx(nodata * PIXEL**2)
        assert row["zone_area_m2"] == pytest.approx(polygon.area)
        labelled = classes.sum() * PIXEL**2
        assert row["covered_fraction"] == pytest.approx(labelled / polygon.area)
        if labelled:
            assert sum(row[f"share_{n}"] for n in NAMES) == pytest.approx(1.0)
        else:
            assert row["share_forest"] is None
        # Against the polygon's true area: the counted area differs by less than one pixel per boundary pixel.
        inside_data = polygon.intersection(data_extent)
        tolerance = boundary_pixels(polygon, HEIGHT, OFF_B + WIDTH_B) * PIXEL**2
        assert abs(labelled + nodata * PIXEL**2 - inside_data.area) <= tolerance
    by_zone = {(r["parcel"], r["date"]): r for r in table}
    assert by_zone[("nowhere", "2026-06-05")]["covered_fraction"] == 0.0
    assert 0.2 < by_zone[("outside", "2026-06-05")]["covered_fraction"] < 0.6
    assert by_zone[("across", "2026-06-05")]["area_nodata_m2"] > 0  # the band nodata in both tiles

    # The GeoPackage: the zones' polygons with the same area columns, one feature per zone and date.
    meta, _, geometry, values = pyogrio.raw.read(str(out / "zones.gpkg"), return_fids=True)
    assert "32633" in meta["crs"] and meta["geometry_type"] == "Polygon"
    fields = dict(zip(meta["fields"], values, strict=True))
    assert list(fields["parcel"]) == [r["parcel"] for r in table]
    assert np.allclose(fields["area_m2_water"], [r["area_m2_water"] for r in table])
    assert np.allclose(fields["covered_fraction"], [r["covered_fraction"] for r in table])
    for wkb, row in zip(geometry, table, strict=True):
        assert shapely.from_wkb(wkb).area == pytest.approx(polygons[row["parcel"]].area)


def test_zones_in_another_crs_are_reprojected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pyproj import Transformer

    june, _ = write_tiles(tmp_path / "2026-06-05", seed=0)
    polygon = box(10.3, 3.7, 70.6, 33.2)
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform
    lonlat = shapely.transform(shapely.segmentize(polygon, PIXEL), lambda xy: np.column_stack(to_wgs84(*xy.T)))
    utm = write_zones(tmp_path / "utm.gpkg", ["p"], [polygon])
    wgs84 = write_zones(tmp_path / "wgs84.geojson", ["p"], [lonlat], crs="EPSG:4326")
    rows = []
    for zones in (utm, wgs84):
        out = tmp_path / zones.stem
        code, text = run(
            capsys, "landcover", "zones", "--map", str(june), "--zones", str(zones), "--zone-id", "parcel",
            "--output", str(out),
        )  # fmt: skip
        assert code == 0, text
        rows.append(pq.read_table(out / "zones.parquet").to_pylist()[0])
    # Classes named by id without a label map; the reprojected zone covers the same pixels.
    assert rows[0]["zone_area_m2"] == pytest.approx(polygon.area)
    assert rows[1]["zone_area_m2"] == pytest.approx(polygon.area, rel=1e-4)
    for name in ("0", "1", "2"):
        assert rows[1][f"area_m2_{name}"] == pytest.approx(rows[0][f"area_m2_{name}"])


def test_zones_refuses_a_missing_id_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    june, _ = write_tiles(tmp_path / "2026-06-05", seed=0)
    zones = write_zones(tmp_path / "z.gpkg", ["p"], [box(0, 0, 5, 5)])
    code, text = run(
        capsys, "landcover", "zones", "--map", str(june), "--zones", str(zones), "--zone-id", "field",
        "--output", str(tmp_path / "o"),
    )  # fmt: skip
    assert code != 0 and "no zone id column 'field'" in text and "parcel" in text


# Change: 20 x 30 pixels of 10 m (0.01 ha each). Before: forest | water | urban in bands of 10 columns.
# After: 50 forest pixels became water, 100 urban pixels became forest; the last row has no class after,
# five water pixels none before.
def change_masks() -> tuple[np.ndarray, np.ndarray]:
    before = np.repeat(np.array([0, 1, 2], np.uint8), 10)[None, :].repeat(20, axis=0)
    after = before.copy()
    after[0:5, 0:10] = 1
    after[0:10, 20:30] = 0
    after[19, :] = NODATA
    before[10, 10:15] = NODATA
    return before, after


EXPECTED_HA = np.array([[1.40, 0.50, 0.0], [0.0, 1.85, 0.0], [1.00, 0.0, 0.90]])  # rows: from, columns: to


def test_change_matrix_of_known_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, after = change_masks()
    a = write_mask(tmp_path / "june.tif", before)
    b = write_mask(tmp_path / "july.tif", after)
    labels = tmp_path / "labels.json"
    labels.write_text(LABELS.to_json())
    zones = write_zones(tmp_path / "z.gpkg", ["west"], [box(0, 0, 15, 20)])
    out = tmp_path / "change"
    code, text = run(
        capsys, "landcover", "change", "--from", str(a), "--to", str(b), "--output", str(out),
        "--labels", str(labels), "--zones", str(zones), "--zone-id", "parcel",
    )  # fmt: skip
    assert code == 0, text
    assert "1.50 ha changed class" in text

    matrix = pq.read_table(out / "from_to_ha.parquet").to_pydict()
    assert matrix["from"] == NAMES
    got = np.array([matrix[f"to_{n}_ha"] for n in NAMES]).T
    assert np.allclose(got, EXPECTED_HA, atol=1e-9)
    change = pq.read_table(out / "class_change.parquet").to_pydict()
    assert np.allclose(change["gains_ha"], [1.0, 0.5, 0.0])
    assert np.allclose(change["losses_ha"], [0.5, 0.0, 1.0])
    assert np.allclose(change["net_ha"], [0.5, 0.5, -1.0])

    zone = pq.read_table(out / "zones_from_to_ha.parquet").to_pydict()
    assert zone["parcel"] == ["west"] * 3 and zone["from"] == NAMES
    got = np.array([zone[f"to_{n}_ha"] for n in NAMES]).T
    assert np.allclose(got, [[1.40, 0.50, 0.0], [0.0, 0.90, 0.0], [0.0, 0.0, 0.0]], atol=1e-9)

    info = json.loads((out / "_change.json").read_text())
    legend = {e["code"]: e for e in info["legend"]}
    assert (legend[1]["from"], legend[1]["to"], legend[1]["changed"]) == ("forest", "water", True)
    with rasterio.open(out / "change" / "june.tif") as ds:
        codes = ds.read(1)
        colours = ds.colormap(1)
    assert codes[0, 0] == 0 * 3 + 1 and codes[0, 25] == 2 * 3 + 0 and codes[15, 15] == 1 * 3 + 1
    assert (codes[19] == NODATA).all() and (codes[10, 10:15] == NODATA).all()
    assert colours[1][:3] == tuple(LABELS.classes[1].color) and colours[1][:3] == tuple(legend[1]["color"])
    assert np.bincount(codes[codes != NODATA].ravel(), minlength=9).reshape(3, 3).tolist() == (
        np.rint(EXPECTED_HA * 100).astype(int).tolist()
    )


def test_change_refuses_other_grids_unless_resampled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before, after = change_masks()
    a = write_mask(tmp_path / "june.tif", before)
    fine = write_mask(tmp_path / "july_5m.tif", after.repeat(2, axis=0).repeat(2, axis=1), pixel=5.0)
    code, text = run(
        capsys, "landcover", "change", "--from", str(a), "--to", str(fine), "--output", str(tmp_path / "x")
    )
    assert code != 0 and "different grids" in text and "size 30x20 vs 60x40" in text and "--resample nearest" in text

    out = tmp_path / "resampled"
    code, text = run(
        capsys, "landcover", "change", "--from", str(a), "--to", str(fine), "--output", str(out),
        "--resample", "nearest",
    )  # fmt: skip
    assert code == 0, text
    matrix = pq.read_table(out / "from_to_ha.parquet").to_pydict()
    got = np.array([matrix[f"to_{n}_ha"] for n in ("0", "1", "2")]).T
    assert np.allclose(got, EXPECTED_HA, atol=1e-9)


def test_the_zones_and_change_command_lines() -> None:
    from segray.cli import build_parser

    a = build_parser().parse_args(["landcover", "zones", "--map", "a", "b", "--zones", "z.gpkg", "--zone-id", "id",
                                   "--output", "o"])  # fmt: skip
    assert (a.maps, a.zones, a.zone_id, a.labels, a.func.__name__) == (["a", "b"], "z.gpkg", "id", None, "cmd_zones")
    a = build_parser().parse_args(["landcover", "change", "--from", "a", "--to", "b", "--output", "o"])
    assert (a.before, a.after, a.zones, a.resample, a.func.__name__) == ("a", "b", None, None, "cmd_change")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["landcover", "change", "--from", "a", "--to", "b", "--output", "o",
                                   "--resample", "bilinear"])  # fmt: skip


def test_zones_and_change_on_s3(tmp_path: Path, s3_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from segray import storage

    root, mosaic = write_tiles(tmp_path / "2026-06-05", seed=0)
    for tile in ("tile_a", "tile_b"):
        storage.write_bytes(f"{s3_prefix}/june/masks/{tile}.tif", (root / "masks" / f"{tile}.tif").read_bytes())
    polygon = box(31.3, 2.6, 88.2, 36.4)
    zones = write_zones(tmp_path / "z.geojson", ["p"], [polygon])
    storage.write_bytes(f"{s3_prefix}/zones.geojson", zones.read_bytes())
    code, text = run(
        capsys, "landcover", "zones", "--map", f"{s3_prefix}/june", "--zones", f"{s3_prefix}/zones.geojson",
        "--zone-id", "parcel", "--output", f"{s3_prefix}/out",
    )  # fmt: skip
    assert code == 0, text
    row = pq.read_table(storage.join(s3_prefix, "out/zones.parquet"), filesystem=storage.resolve(s3_prefix)[0])
    local = tmp_path / "zones.gpkg"
    local.write_bytes(storage.read_bytes(f"{s3_prefix}/out/zones.gpkg"))
    assert pyogrio.raw.read(str(local))[0]["fields"].tolist()[:2] == ["parcel", "date"]
    classes, _ = centre_counts(mosaic, polygon)
    assert row.column("area_m2_0").to_pylist() == [pytest.approx(classes[0] * PIXEL**2)]

    code, text = run(
        capsys, "landcover", "change", "--from", f"{s3_prefix}/june", "--to", f"{s3_prefix}/june",
        "--output", f"{s3_prefix}/change",
    )  # fmt: skip
    assert code == 0 and "0.00 ha changed class" in text, text
    assert storage.exists(f"{s3_prefix}/change/change/tile_a.tif")
