"""Which ground area one pixel covers, from (in order) a manifest column, a world file, a job option.

Without any of the three the area is None, and stats rows carry null areas: never a guess.
"""

from __future__ import annotations

import math

from segray.tiles.worldfile import find_world_file

#: Manifest column with the pixel size in metres (square pixels assumed).
MANIFEST_COLUMN = "pixel_size_m"


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
    image_uri: str, manifest_value: object = None, option: float | None = None, world_files: bool = True
) -> tuple[float | None, str]:
    """(m^2 per pixel or None, where it came from: ``manifest``, ``world_file:<uri>``, ``option`` or "")."""
    size = _valid(manifest_value)
    if size is not None:
        return size * size, "manifest"
    if world_files:
        found = find_world_file(image_uri)
        if found is not None:
            uri, wf = found
            return wf.pixel_area, f"world_file:{uri}"
    if option is not None:
        return option * option, "option"
    return None, ""
