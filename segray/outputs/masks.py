"""How a mask file is named and encoded: palette PNGs of class ids, 16-bit PNGs of instance ids, and
Cloud-Optimized GeoTIFFs of class ids for GeoTIFF scenes.

Mask keys come from the frame's relative path (``masks/<path>.png``, ``masks/<path>.tif`` for a
scene), so a rerun overwrites a mask instead of adding a second one; readers (the demo, landcover,
users) find a frame's mask the same way. A scene labelled with ``--write-confidence`` also gets its
confidence map, a COG of whole percents, at ``confidence/<path>.tif``.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

from segray.frames.listing import safe_relative_path
from segray.labels import LabelMap

#: Mask file endings: a palette (or 16-bit) PNG, or a Cloud-Optimized GeoTIFF on a scene's grid.
PNG, COG = ".png", ".tif"
#: Rows of a scene's mask handed to the COG writer at a time: one row of its 512-pixel tiles, so GDAL
#: finishes each tile row before the next begins and the writer holds a strip, not a second mask.
COG_STRIP_ROWS = 512


def encode_mask_png(mask: np.ndarray, palette: list[int]) -> bytes:
    """A palette PNG; zlib's run-length strategy suits masks' long runs of one class: about half
    the size of the default strategy at the same speed (docs/benchmarks.md, PNG encoding)."""
    im = Image.fromarray(mask, mode="P")
    im.putpalette(palette)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def encode_ids_png(ids: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG of instance ids (always 16 bits, whatever the frame's count, so every
    mask of an output reads the same way)."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(ids, dtype=np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("could not encode the instance ids as PNG")
    return buf.tobytes()


def mask_key(relative_path: str, suffix: str = PNG) -> str:
    """``masks/<relative path><suffix>``: ``suffix`` is :data:`PNG` or :data:`COG`."""
    if suffix not in (PNG, COG):
        raise ValueError(f"a mask ends in {PNG} or {COG}, not {suffix!r}")
    return f"masks/{safe_relative_path(relative_path)}{suffix}"


def confidence_key(relative_path: str) -> str:
    """``confidence/<relative path>.tif``: where a scene's confidence map goes."""
    return f"confidence/{safe_relative_path(relative_path)}{COG}"


def write_cog_mask(uri: str, scene_json: str, mask: np.ndarray, label_map: LabelMap | None) -> None:
    """Write a scene's class mask (h, w) of class ids, 255 = nodata, as a COG on the scene's grid
    (``scene_json``: :func:`segray.geo.scenejson.scene_to_json`), in strips of
    :data:`COG_STRIP_ROWS` rows. ``label_map`` None: ``mask`` is a confidence map in whole percent
    (0..100, 255 = nodata), written without colours. GDAL is loaded here, only when a batch holds a scene."""
    from rasterio.windows import Window

    from segray.geo.cog import CogMaskWriter
    from segray.geo.scenejson import scene_from_json

    info = scene_from_json(scene_json, uri)
    if mask.shape != (info.height, info.width):
        what = "a mask" if label_map is not None else "a confidence map"
        raise ValueError(f"{what} of shape {mask.shape} does not fit the {info.width}x{info.height} scene")
    with CogMaskWriter(uri, info, label_map) as writer:
        for top in range(0, info.height, COG_STRIP_ROWS):
            strip = mask[top : top + COG_STRIP_ROWS]
            writer.write(Window(0, top, info.width, strip.shape[0]), strip)
