"""ESRI world files (``.pgw``, ``.jgw``, ``.tfw``, ...): the pixel size of a georeferenced image.

A world file is six numbers, one per line: A (pixel width in map units), D and B (rotation terms),
E (pixel height, negative for north-up images), C and F (map coordinates of the upper-left pixel's
centre). One pixel covers the parallelogram spanned by (A, D) and (B, E), so its ground area is
``|A*E - D*B|`` square map units. segray reads those units as metres: the image's CRS must be
metric (UTM or another projected CRS); a world file in degrees (EPSG:4326) gives nonsense areas,
and is refused when its pixel size is below ``MIN_METRIC_PIXEL`` (a sign of degrees).
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass

from segray import storage

#: A pixel smaller than this (1 mm) in a world file almost surely means degrees, not metres.
MIN_METRIC_PIXEL = 1e-3


class WorldFileError(ValueError):
    """A world file exists but cannot be used; the message names the file."""


@dataclass(frozen=True)
class WorldFile:
    a: float  # pixel size in x (map units per pixel)
    d: float  # rotation term
    b: float  # rotation term
    e: float  # pixel size in y (negative for north-up)
    c: float  # x of the upper-left pixel's centre
    f: float  # y of the upper-left pixel's centre

    @property
    def pixel_area(self) -> float:
        """Ground area of one pixel in square map units (m^2 for a metric CRS)."""
        return abs(self.a * self.e - self.d * self.b)


def parse_world_file(text: str, source: str = "world file") -> WorldFile:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 6:
        raise WorldFileError(f"{source}: a world file has 6 numbers, one per line; found {len(lines)} lines")
    try:
        values = [float(v) for v in lines]
    except ValueError as e:
        raise WorldFileError(f"{source}: not a number ({e})") from e
    if not all(math.isfinite(v) for v in values):
        raise WorldFileError(f"{source}: values must be finite, got {lines}")
    wf = WorldFile(*values)
    if wf.pixel_area <= 0:
        raise WorldFileError(f"{source}: pixel area |A*E - D*B| is 0 (A={wf.a}, D={wf.d}, B={wf.b}, E={wf.e})")
    if math.sqrt(wf.pixel_area) < MIN_METRIC_PIXEL:
        raise WorldFileError(
            f"{source}: pixel size {math.sqrt(wf.pixel_area):.3g} map units looks like degrees; segray needs a "
            "metric CRS (metres) to compute areas"
        )
    return wf


def world_file_candidates(image_uri: str) -> list[str]:
    """Where a world file for ``image_uri`` may be, in ESRI's order of preference:
    ``a.png`` -> ``a.pgw`` (first and last letters of the extension + w), ``a.pngw``, ``a.wld``."""
    stem, ext = posixpath.splitext(image_uri)
    ext = ext.lstrip(".")
    if not ext:
        return [f"{image_uri}.wld"]
    return [f"{stem}.{ext[0]}{ext[-1]}w", f"{image_uri}w", f"{stem}.wld"]


def find_world_file(image_uri: str) -> tuple[str, WorldFile] | None:
    """The first world file beside the image, parsed; None when there is none.

    A world file that exists but is malformed raises :class:`WorldFileError`: ignoring it would
    silently give wrong (or no) areas.
    """
    for uri in world_file_candidates(image_uri):
        if storage.exists(uri):
            return uri, read_world_file(uri)
    return None


def read_world_file(uri: str) -> WorldFile:
    """The world file at ``uri``, parsed; a malformed one raises :class:`WorldFileError` naming it."""
    data = storage.read_bytes(uri)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise WorldFileError(f"{uri}: not a text file ({e})") from e
    return parse_world_file(text, uri)
