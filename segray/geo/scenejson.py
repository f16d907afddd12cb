"""A scene's georeferencing as one JSON string, the form it takes in a labelling batch.

A Ray Data batch column holds plain values; the ``geo_scene`` column carries, per GeoTIFF frame,
what the writer needs to put the frame's mask back on the scene's grid and to describe the scene in
its stats row: ``crs`` (``EPSG:<code>``, WKT, or null), ``transform`` (the six affine numbers
``a, b, c, d, e, f``), ``width``, ``height``, ``bounds`` (left, bottom, right, top in the CRS),
``bounds_wgs84`` (or null) and ``nodata``. Frames that are not scenes carry ``""``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pyproj import CRS

from segray.geo.scene import SceneInfo

#: What a mask-only description assumes of the bands and blocks it does not describe.
_DEFAULT_BLOCK = (512, 512)


def scene_to_json(info: SceneInfo) -> str:
    """The georeferencing of ``info`` (not its bands or blocks) as compact JSON."""
    return json.dumps(
        {
            "crs": info.crs,
            "transform": list(info.transform),
            "width": info.width,
            "height": info.height,
            "bounds": list(info.bounds),
            "bounds_wgs84": None if info.bounds_wgs84 is None else list(info.bounds_wgs84),
            # NaN is not JSON: a NaN nodata travels as the string "NaN" (float() reads it back).
            "nodata": "NaN" if info.nodata is not None and math.isnan(info.nodata) else info.nodata,
        },
        separators=(",", ":"),
    )


def scene_from_json(text: str, uri: str = "") -> SceneInfo:
    """A :class:`SceneInfo` of one band from :func:`scene_to_json`'s text: enough to write a mask on
    the scene's grid. Keys it does not know are ignored; a missing or malformed key is an error that
    names it."""
    try:
        doc: dict[str, Any] = json.loads(text)
        crs = doc.get("crs") or None
        a, b, c, d, e, f = (float(v) for v in doc["transform"])
        left, bottom, right, top = (float(v) for v in doc["bounds"])
        wgs84 = None if doc.get("bounds_wgs84") is None else tuple(float(v) for v in doc["bounds_wgs84"])
        width, height = int(doc["width"]), int(doc["height"])
        nodata = None if doc.get("nodata") is None else float(doc["nodata"])
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{uri or 'scene'}: not a scene description ({type(err).__name__}: {err})") from err
    if width < 1 or height < 1 or (wgs84 is not None and len(wgs84) != 4):
        raise ValueError(f"{uri or 'scene'}: not a scene description (size {width}x{height}, WGS84 box {wgs84})")
    return SceneInfo(
        uri=uri,
        width=width,
        height=height,
        count=1,
        dtypes=("uint8",),
        descriptions=(None,),
        crs=crs,
        transform=(a, b, c, d, e, f),
        bounds=(left, bottom, right, top),
        bounds_wgs84=wgs84,  # type: ignore[arg-type]  # four numbers, checked above
        nodata=nodata,
        block_shape=_DEFAULT_BLOCK,
        is_geographic=crs is not None and bool(CRS.from_user_input(crs).is_geographic),
    )
