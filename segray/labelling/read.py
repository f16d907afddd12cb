"""Stage 1 (CPU tasks): fetch each frame's bytes, decode, resize to the model's input size.

A frame that cannot be fetched or decoded stays in the batch with its ``error`` set (and a blank
image), so it flows on to ``errors/`` instead of disappearing. A JPEG at least twice the model
input is decoded at a reduced scale (segray.frames.decode.decode_resized); the mask is still
written at the frame's own size. Frames are labelled as displayed: a frame's EXIF orientation is
applied by every decoder, and its width and height are the displayed ones.

Each frame's header is parsed once, here (segray.frames.decode.check_frame): what later stages
need of it travels in the batch (``width``, ``height``, ``exif_orientation``, ``frame_format``), so
the windowed path decodes a large frame without reading its header again
(segray.tasks.batch.decode_left_encoded), and the GPU decoder can take each frame's orientation from the batch
(segray.frames.device_decode.decode_jpegs).

Resized or windowed: a frame is resized to the model input unless either side is above
``tile_above`` x the matching side of the reference size: the frames the model was trained on
(recorded by ``segray train`` in the artifact), else the model input itself. So a model trained at
512x1024 on 1024x2048 frames labels 1024x2048 frames whole, as it was trained, while a
12,000 x 12,000 orthomosaic is labelled window by window at native resolution. Such large frames
are not decoded here: their encoded bytes travel on (``encoded``) and the inference actor decodes
them (segray.tiles.windows), so they cross the object store as compressed files, decoded once.

Each frame's ground area per pixel (``pixel_area_m2``, NaN when unknown) comes from the manifest's
``pixel_size_m`` column, else a world file beside the image, else the job's ``pixel_size`` option.
A listed folder's frames come with the world file its listing found (``WORLD_FILE_COLUMN``), so
no request is spent looking; a manifest's frames are looked up one by one.

Geodata. A GeoTIFF/COG (``.tif``/``.tiff``) is a scene when the model takes named bands, or when the
file has a CRS: only its header is read here (segray.geo.scene.read_info; GDAL is loaded for such
files only), its bands are checked against the model's, and the inference actor reads its pixels
window by window (segray.tiles.scene), so a scene never crosses the object store. Its row carries
the scene's grid as JSON (``geo_scene``, empty for other frames), and its pixel area comes from the
CRS. A TIFF without a CRS, labelled by an RGB model, is an ordinary frame.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from segray import storage
from segray.frames.decode import FrameError, check_frame, decode_resized
from segray.models.preprocessing import Preprocessing
from segray.outputs.schema import FORMAT_COLUMN, ORIENTATION_COLUMN
from segray.tasks.batch import DEFAULT_TILE_ABOVE, is_large
from segray.tiles.pixel_size import MANIFEST_COLUMN, WORLD_FILE_COLUMN, pixel_area
from segray.tiles.scene import SCENE_COLUMN

if TYPE_CHECKING:  # GDAL is loaded only when a frame is a .tif/.tiff
    from segray.geo.scene import SceneInfo

#: Concurrent fetches per task: object-store reads are latency-bound, decode releases the GIL.
FETCH_THREADS = 8
#: The bands an RGB model reads of a scene.
RGB_BANDS = ("1", "2", "3")
#: Names that may be geodata (segray.geo.scene.GEODATA_SUFFIXES), told apart without loading GDAL.
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class _Loaded:
    image: np.ndarray | None = None
    encoded: bytes = b""
    width: int = 0
    height: int = 0
    stage: str = ""
    error: str = ""
    pixel_area: float = math.nan
    pixel_source: str = ""
    #: The encoded JPEG travels on to be decoded on the actor's GPU (``decode="gpu"``).
    on_device: bool = False
    orientation: int = 1
    format: str = ""
    #: The scene's grid as JSON for a geodata row (its pixels are read by the actor); "" otherwise.
    scene: str = ""


def _load_one(
    uri: str,
    pre: Preprocessing,
    max_pixels: int,
    tile_rule: tuple[float, tuple[int, int]],
    georef: tuple[object, float | None, bool | str | None],
    decode: str = "cpu",
) -> _Loaded:
    if uri.lower().split("?", 1)[0].endswith(_TIFF_SUFFIXES):
        scene = _load_scene(uri, pre, georef)
        if scene is not None:
            return scene
    try:
        data = storage.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 - any read failure is recorded against the frame
        return _Loaded(stage="read", error=str(e))
    manifest_value, option, world_file = georef
    try:
        area, source = pixel_area(uri, manifest_value, option, world_file)
    except Exception as e:  # noqa: BLE001 - a malformed world file or manifest value fails the frame, named
        return _Loaded(stage="read", error=f"pixel size: {e}")
    try:  # the header once: its size picks the path, its checks refuse what no path can label
        header = check_frame(data, max_pixels)
    except FrameError as e:
        return _Loaded(stage=e.stage, error=e.reason)
    if pre.bands:
        return _Loaded(stage="read", error=f"a multi-band model labels GeoTIFF scenes; {uri} is {header.format}")
    w, h = header.width, header.height  # as displayed
    tile_above, reference = tile_rule
    area_m2 = math.nan if area is None else area
    told = header.orientation, header.format  # _Loaded's last two fields
    if is_large(w, h, reference, tile_above):
        # Decoded by the actor, the only place that needs the pixels.
        return _Loaded(None, data, w, h, "", "", area_m2, source, False, *told)
    if decode == "gpu" and header.format == "JPEG":  # decoded on the GPU; other formats are decoded below
        return _Loaded(None, data, w, h, "", "", area_m2, source, True, *told)
    try:
        rgb, w, h = decode_resized(data, pre.height, pre.width, max_pixels, header)
    except FrameError as e:
        return _Loaded(stage=e.stage, error=e.reason)
    except Exception as e:  # noqa: BLE001 - a decoder bug must not take the batch down
        return _Loaded(stage="decode", error=f"{type(e).__name__}: {e}")
    return _Loaded(rgb, b"", w, h, "", "", area_m2, source, False, *told)


def _load_scene(uri: str, pre: Preprocessing, georef: tuple[object, float | None, bool | str | None]) -> _Loaded | None:
    """A geodata row (header only), an error row, or None when the file is an ordinary frame (a TIFF
    without a CRS for an RGB model, as it has always been labelled)."""
    from segray.geo.scene import is_geodata, read_info, select_bands
    from segray.geo.scenejson import scene_to_json

    if not is_geodata(uri):
        return None
    try:
        info = read_info(uri)
    except Exception as e:  # noqa: BLE001 - an unreadable scene is recorded against the frame
        return None if not pre.bands else _Loaded(stage="read", error=str(e))
    if not pre.bands and info.crs is None:
        return None
    try:
        indexes = select_bands(info, pre.bands or RGB_BANDS)
    except ValueError as e:
        return _Loaded(stage="read", error=f"the model's bands: {e}")
    if not pre.bands and {info.dtypes[i - 1] for i in indexes} != {"uint8"}:
        return _Loaded(
            stage="read",
            error=f"an RGB model labels 8-bit scenes; bands 1-3 of {uri} are {info.dtypes[indexes[0] - 1]}: "
            "label it with a model of named bands (segray model init --bands)",
        )
    try:
        area, source = _scene_pixel_area(info, uri, georef)
    except Exception as e:  # noqa: BLE001 - a malformed world file or manifest value fails the frame, named
        return _Loaded(stage="read", error=f"pixel size: {e}")
    return _Loaded(None, b"", info.width, info.height, "", "", area, source, False, 1, "GeoTIFF", scene_to_json(info))


def _scene_pixel_area(
    info: SceneInfo, uri: str, georef: tuple[object, float | None, bool | str | None]
) -> tuple[float, str]:
    """A scene's ground area per pixel and where it came from: the CRS (NaN in a geographic CRS, whose
    areas are measured per row and class by the actor), else today's rules for frames."""
    if info.crs is not None:
        from segray.geo.areas import row_areas_m2

        return (math.nan if info.is_geographic else float(row_areas_m2(info.crs, info.transform, 1)[0])), "crs"
    area, source = pixel_area(uri, *georef)
    return (math.nan if area is None else area), source


def read_frames(
    batch: dict[str, np.ndarray],
    preprocessing: dict[str, Any],
    max_pixels: int,
    tile_above: float = DEFAULT_TILE_ABOVE,
    pixel_size: float | None = None,
    world_files: bool = True,
    tile_reference: tuple[int, int] | None = None,
    decode: str = "cpu",
) -> dict[str, np.ndarray]:
    """``tile_reference``: (height, width) that ``tile_above`` multiplies (default: the model input).
    ``decode="gpu"``: JPEG frames are only fetched and checked here (segray.frames.device_decode)."""
    pre = Preprocessing.from_dict(preprocessing)
    reference = (tile_reference[0], tile_reference[1]) if tile_reference else (pre.height, pre.width)
    rule = (tile_above, reference)
    uris = [str(u) for u in batch["uri"]]
    sizes = list(batch[MANIFEST_COLUMN]) if MANIFEST_COLUMN in batch else [None] * len(uris)
    # What the folder listing found (a URI or None), else look beside each frame.
    listed = WORLD_FILE_COLUMN in batch and world_files
    worlds: list[bool | str | None] | None = (
        [w if isinstance(w, str) and w else None for w in batch[WORLD_FILE_COLUMN]] if listed else None
    )
    with ThreadPoolExecutor(min(FETCH_THREADS, max(1, len(uris)))) as pool:
        results = list(
            pool.map(
                lambda a: _load_one(a[0], pre, max_pixels, rule, (a[1], pixel_size, a[2]), decode),
                zip(uris, sizes, worlds or [world_files] * len(uris), strict=True),
            )
        )
    images = np.zeros((len(uris), pre.height, pre.width, 3), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.image is not None:
            images[i] = r.image
    out = dict(batch)
    out["image"] = images
    out["encoded"] = np.array([r.encoded for r in results], dtype=object)
    out["width"] = np.array([r.width for r in results], dtype=np.int32)
    out["height"] = np.array([r.height for r in results], dtype=np.int32)
    out["error_stage"] = np.array([r.stage for r in results], dtype=object)
    out["error"] = np.array([r.error for r in results], dtype=object)
    out["pixel_area_m2"] = np.array([r.pixel_area for r in results], dtype=np.float64)
    out["pixel_size_source"] = np.array([r.pixel_source for r in results], dtype=object)
    out["on_device"] = np.array([r.on_device for r in results], dtype=bool)
    out[ORIENTATION_COLUMN] = np.array([r.orientation for r in results], dtype=np.int32)
    out[FORMAT_COLUMN] = np.array([r.format for r in results], dtype=object)
    out[SCENE_COLUMN] = np.array([r.scene for r in results], dtype=object)
    return out
