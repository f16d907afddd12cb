"""Which ground area one pixel covers, from (in order) a manifest column, a world file, a job option.

Without any of the three the area is None, and stats rows carry null areas: never a guess.
"""

from __future__ import annotations

import math

from segray.tiles.worldfile import WorldFile, find_world_file, read_world_file

#: Manifest column with the pixel size in metres (square pixels assumed).
MANIFEST_COLUMN = "pixel_size_m"
#: A listed folder's frames table: each frame's world file that the listing holds (null: none).
WORLD_FILE_COLUMN = "_world_file"


def _valid(value: object) -> float | None:
    """A manifest cell: None/NaN mean "not given"; anything else must be a positive number."""
    if value is None:
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise ValueError(f"{MANIFEST_COLUMN} {value!r} is not a number") from e
    if math.isnan(v):
        return None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{MANIFEST_COLUMN} must be a positive number of metres, got {value!r}")
    return v


def pixel_area(
    image_uri: str, manifest_value: object = None, option: float | None = None, world_file: bool | str | None = True
) -> tuple[float | None, str]:
    """(m^2 per pixel or None, where it came from: ``manifest``, ``world_file:<uri>``, ``option`` or "").

    ``world_file``: True looks for one beside the image (a request per candidate name); a URI reads
    that one (a folder listing found it); False or None: the frame has none.
    """
    size = _valid(manifest_value)
    if size is not None:
        return size * size, "manifest"
    if isinstance(world_file, str):
        found: tuple[str, WorldFile] | None = world_file, read_world_file(world_file)
    else:
        found = find_world_file(image_uri) if world_file else None
    if found is not None:
        uri, wf = found
        return wf.pixel_area, f"world_file:{uri}"
    if option is not None:
        return option * option, "option"
    return None, ""
