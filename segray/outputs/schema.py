"""The schemas of ``stats/`` and ``errors/`` rows.

``stats/`` (one row per labelled frame) is wide on purpose: one ``px_<class>`` (int64 pixel count)
and one ``frac_<class>`` (float64 share of the frame) column per class, so DuckDB and pandas query
it with no extra code (``SELECT sum(px_road) FROM 'out/stats/*.parquet'``).

| column | type | meaning |
| --- | --- | --- |
| source_uri | string | where the frame was read |
| relative_path | string | the frame's path under the input root (the row's key) |
| mask_path | string | the mask's path relative to the output root (``masks/<relative_path>.png``) |
| width, height | int32 | the frame's size as displayed, its EXIF orientation applied (the mask's size) |
| exif_orientation | int32 | the frame's EXIF orientation (1-8), applied before labelling; 1 when it has none |
| model_id | string | ``<name>@<weights sha256[:12]>`` |
| px_<class> | int64 | pixels predicted as the class; they sum to width*height (a scene: its valid pixels) |
| frac_<class> | float64, null | px_<class> / (width*height), a scene: over its valid pixels; they sum to 1 |
| pixel_area_m2 | float64, null | ground area of one pixel (manifest ``pixel_size_m``, world file, option, or CRS) |
| area_m2_<class> | float64, null | px_<class> * pixel_area_m2 (a scene with a CRS: from its CRS, by row); else null |
| pixel_size_source | string, null | ``manifest``, ``world_file:<uri>``, ``option`` or ``crs`` |
| mean_confidence | float64 | mean over pixels of the winning class's softmax probability |
| run_id | string | the run that labelled the frame |
| processed_at | timestamp[us, UTC] | when the row was written |
| crs | string, null | a scene's CRS (``EPSG:<code>`` or WKT); null for other frames and scenes without one |
| bounds_left/bottom/right/top | float64, null | a scene's bounds in its CRS |
| lon_min/lat_min/lon_max/lat_max | float64, null | the same box in WGS84 degrees |
| nodata_pixels | int64, null | a scene's pixels without valid data (255 in its mask); null for other frames |
| area_nodata_m2 | float64, null | nodata_pixels * pixel_area_m2 in a projected CRS; null otherwise |
| confidence_path | string, null | ``confidence/<relative_path>.tif``: a scene's confidence map; else null |
| (manifest columns) | as given | extra manifest columns (e.g. region, date) carried through |

A GeoTIFF scene's mask is a Cloud-Optimized GeoTIFF (``masks/<relative_path>.tif``) on its grid; with
``--write-confidence`` its confidence map (whole percent) is one too, at ``confidence/<relative_path>.tif``.

Instance models (``task: instance``) write the same row with, beside ``px_<class>``, one
``count_<class>`` (int64: the frame's instances of the class); their ``px_<class>`` counts the pixels
the class's instances cover (a pixel no instance covers counts for no class, so the ``px_`` columns
sum to at most width*height and the ``frac_`` columns to at most 1), and ``mean_confidence`` is the
mean score of the frame's instances (NaN when it has none). Their objects go to ``instances/``, one
row per instance (``INSTANCES_SCHEMA``):

| column | type | meaning |
| --- | --- | --- |
| relative_path | string | the frame (the stats row's key) |
| instance_id | int32 | its id in the frame's mask (1..N, 1 = highest score) |
| class_id, class | int32, string | the label map's class index and name |
| score | float64 | the detection's score (>= the run's ``--min-score``) |
| x0, y0, x1, y1 | float64 | the detector's box, in the frame's pixels |
| area_px | int64 | pixels of this id in the frame's mask |
| area_m2 | float64, null | area_px * pixel_area_m2; null when no pixel size is known |
| model_id, run_id | string | as in the stats row (the frame's row names the run whose instances count) |
| processed_at | timestamp[us, UTC] | when the row was written |

``errors/``: source_uri, relative_path, stage (read/decode/key/write), error, run_id, processed_at,
then the manifest columns (e.g. region, date), so failed frames can be counted per region and date.
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segray.labels import LabelMap
from segray.tiles.pixel_size import WORLD_FILE_COLUMN

#: The frame's EXIF orientation (1-8; 1 = as stored, also when the frame has none): a stats column.
ORIENTATION_COLUMN = "exif_orientation"
#: The frame's format as its header names it ("JPEG", "PNG", ...), passed from the read stage to the
#: decoders of later stages; not written.
FORMAT_COLUMN = "frame_format"

#: Per frame, a GeoTIFF scene's georeferencing as JSON (:mod:`segray.geo.scenejson`), "" for other frames.
GEO_SCENE_COLUMN = "geo_scene"
#: Per frame, m^2 per class from the scene's CRS, shape (frames, classes); NaN rows where unknown.
CLASS_AREA_COLUMN = "class_area_m2"
#: Per frame, a scene's pixels without valid data (255 in its mask); 0 for other frames.
NODATA_PIXELS_COLUMN = "nodata_pixels"
#: Per frame, a scene's confidence map: (h, w) uint8 whole percent, 255 = nodata; an empty array for
#: other rows. In a batch only when the run writes confidence maps.
CONFIDENCE_MAP_COLUMN = "confidence_map"
#: Stats columns of GeoTIFF scenes (their place on the ground, their confidence map); null for frames
#: that are not scenes.
GEO_STATS_FIELDS: list[tuple[str, pa.DataType]] = [
    ("crs", pa.string()),
    ("bounds_left", pa.float64()),
    ("bounds_bottom", pa.float64()),
    ("bounds_right", pa.float64()),
    ("bounds_top", pa.float64()),
    ("lon_min", pa.float64()),
    ("lat_min", pa.float64()),
    ("lon_max", pa.float64()),
    ("lat_max", pa.float64()),
    ("nodata_pixels", pa.int64()),
    ("area_nodata_m2", pa.float64()),
    ("confidence_path", pa.string()),
]

#: Columns the pipeline itself creates; anything else in a batch came from the manifest.
PIPELINE_COLUMNS = {
    "uri",
    "relative_path",
    "image",
    "width",
    "height",
    "error",
    "error_stage",
    "mask",
    "class_pixels",
    "mean_confidence",
    "encoded",
    "pixel_area_m2",
    "pixel_size_source",
    "windowed",
    "on_device",
    "instances",
    "instance_counts",
    ORIENTATION_COLUMN,
    FORMAT_COLUMN,
    WORLD_FILE_COLUMN,
    GEO_SCENE_COLUMN,
    CLASS_AREA_COLUMN,
    NODATA_PIXELS_COLUMN,
    CONFIDENCE_MAP_COLUMN,
}

ERRORS_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("relative_path", pa.string()),
        ("stage", pa.string()),
        ("error", pa.string()),
        ("run_id", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)


INSTANCES_SCHEMA = pa.schema(
    [
        ("relative_path", pa.string()),
        ("instance_id", pa.int32()),
        ("class_id", pa.int32()),
        ("class", pa.string()),
        ("score", pa.float64()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("area_px", pa.int64()),
        ("area_m2", pa.float64()),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def stats_schema(label_map: LabelMap, counts: bool = False) -> pa.Schema:
    """``counts``: the instance models' ``count_<class>`` columns, after the ``px_`` ones. The scene
    columns (:data:`GEO_STATS_FIELDS`) come last, so parts written before them read beside new ones."""
    fields: list[tuple[str, pa.DataType]] = [
        ("source_uri", pa.string()),
        ("relative_path", pa.string()),
        ("mask_path", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        (ORIENTATION_COLUMN, pa.int32()),
        ("model_id", pa.string()),
    ]
    fields += [(f"px_{n}", pa.int64()) for n in label_map.names]
    if counts:
        fields += [(f"count_{n}", pa.int64()) for n in label_map.names]
    fields += [(f"frac_{n}", pa.float64()) for n in label_map.names]
    fields += [("pixel_area_m2", pa.float64())]
    fields += [(f"area_m2_{n}", pa.float64()) for n in label_map.names]
    fields += [
        ("pixel_size_source", pa.string()),
        ("mean_confidence", pa.float64()),
        ("run_id", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
    fields += GEO_STATS_FIELDS
    return pa.schema(fields, metadata={b"segray.label_map": label_map.to_json().encode()})


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def passthrough_columns(batch: dict[str, Any]) -> list[str]:
    return [k for k in batch if k not in PIPELINE_COLUMNS]
