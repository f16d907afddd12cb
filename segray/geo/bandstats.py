"""Per-band mean and standard deviation over a set of GeoTIFF scenes: the normalisation a multi-band
model needs (``segray model init --band-stats``), in the scenes' raw units.

Scenes are read window by window along their own blocks (:func:`segray.geo.scene.block_windows`), so
a scene of any size costs one window of memory. Only valid pixels count: a pixel that is nodata in any
selected band, or that the file's mask marks, is left out (:func:`segray.geo.scene.read_window`), as
labelling leaves it out. Each window's count, mean and sum of squared deviations are computed in
float64 and merged with Chan's parallel formula, so the result does not lose precision to a large
raw sum of squares, however many pixels are pooled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from segray import storage
from segray.geo.scene import GEODATA_SUFFIXES, block_windows, is_geodata, open_scene, read_info, read_window
from segray.geo.scene import select_bands as scene_bands

#: Pixels per window edge: one window of four uint16 bands is a few MiB, and float64 copies of it more.
WINDOW_SIZE = 1024


@dataclass(frozen=True)
class BandStats:
    """Each band's mean and (population) standard deviation over the valid pixels of ``scenes``.

    ``bands`` are spelled as asked (a name such as ``B04``, or a 1-based index as text), so a model
    made from them resolves them in its scenes the same way. ``pixels`` is each band's count of valid
    pixels; a pixel is valid in all selected bands or in none, so the counts are equal.
    """

    bands: list[str]
    mean: list[float]
    std: list[float]
    pixels: list[int]
    scenes: list[str]

    def to_json(self) -> dict[str, object]:
        return {"bands": self.bands, "mean": self.mean, "std": self.std, "pixels": self.pixels, "scenes": self.scenes}

    @classmethod
    def from_json(cls, obj: object, source: str = "band statistics") -> BandStats:
        """Read what :meth:`to_json` wrote; a file that lacks a key or whose lists differ in length is
        an error naming ``source``."""
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: expected a JSON object with bands, mean and std")
        missing = [k for k in ("bands", "mean", "std") if not isinstance(obj.get(k), list)]
        if missing:
            raise ValueError(f"{source}: no {', '.join(missing)} list")
        bands, mean, std = obj["bands"], obj["mean"], obj["std"]
        pixels, scenes = obj.get("pixels") or [0] * len(bands), obj.get("scenes") or []
        if not (len(bands) == len(mean) == len(std) == len(pixels)) or not bands:
            raise ValueError(f"{source}: bands, mean, std and pixels must be non-empty lists of one length")
        try:
            return cls(
                [str(b) for b in bands],
                [float(m) for m in mean],
                [float(s) for s in std],
                [int(p) for p in pixels],
                [str(s) for s in scenes],
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: mean, std and pixels must be numbers ({e})") from None

    def pick(self, bands: Sequence[str] | None) -> BandStats:
        """The statistics of ``bands`` (matched case-insensitively), in that order; None keeps all. A
        band the statistics lack is an error listing the bands they have."""
        if bands is None:
            return self
        where = {b.lower(): i for i, b in enumerate(self.bands)}
        missing = [b for b in bands if b.lower() not in where]
        if missing:
            raise ValueError(f"no statistics for band {', '.join(missing)} (they cover {', '.join(self.bands)})")
        idx = [where[b.lower()] for b in bands]
        return BandStats(
            [self.bands[i] for i in idx],
            [self.mean[i] for i in idx],
            [self.std[i] for i in idx],
            [self.pixels[i] for i in idx],
            self.scenes,
        )


def read_band_stats(uri: str) -> BandStats:
    """The statistics JSON that ``segray data band-stats --output`` wrote (local path or ``s3://``)."""
    try:
        obj = json.loads(storage.read_bytes(uri))
    except json.JSONDecodeError as e:
        raise ValueError(f"{uri}: not JSON ({e})") from None
    return BandStats.from_json(obj, uri)


def write_band_stats(stats: BandStats, uri: str) -> None:
    storage.write_bytes(uri, (json.dumps(stats.to_json(), indent=2) + "\n").encode())


def scene_uris(inputs: Sequence[str]) -> list[str]:
    """Scenes named by ``inputs``: a ``.tif``/``.tiff`` file as it is, a folder or ``s3://`` prefix as
    the GeoTIFFs under it (recursively, sorted). A folder without any is an error naming it."""
    uris: list[str] = []
    for uri in inputs:
        if is_geodata(uri):
            uris.append(uri)
            continue
        found = storage.list_files(uri, GEODATA_SUFFIXES)
        if not found:
            raise ValueError(f"{uri}: no .tif/.tiff scenes there")
        uris.extend(f"s3://{p}" if storage.is_s3(uri) else p for p in found)
    return uris


class _Moments:
    """Running count, mean and sum of squared deviations per band (Chan et al.'s pairwise merge)."""

    def __init__(self, bands: int) -> None:
        self.n = 0
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)

    def add(self, values: np.ndarray) -> None:
        """Merge a (bands, n) block of valid pixel values."""
        n_b = values.shape[1]
        if n_b == 0:
            return
        x = values.astype(np.float64)
        mean_b = x.mean(axis=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(axis=1)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n


def band_stats(
    inputs: Sequence[str],
    bands: Sequence[str] | None = None,
    window_size: int = WINDOW_SIZE,
    say: Callable[[str], None] | None = None,
) -> BandStats:
    """Mean and std of ``bands`` (names or 1-based indexes as text; None: every band of the first
    scene, by name) over the valid pixels of the scenes ``inputs`` names (:func:`scene_uris`), pooled.

    Every scene must have every band: one that lacks a band fails before any pixel is read, naming the
    scene and the band. ``say`` hears one line per scene.
    """
    uris = scene_uris(inputs)
    if not uris:
        raise ValueError("no scenes given")
    infos = [read_info(uri) for uri in uris]
    wanted = list(bands) if bands is not None else infos[0].band_names
    if not wanted:
        raise ValueError("no bands given")
    indexes = [scene_bands(info, wanted) for info in infos]  # every scene checked before reading
    moments = _Moments(len(wanted))
    for uri, info, idx in zip(uris, infos, indexes, strict=True):
        before = moments.n
        with open_scene(uri) as ds:
            for window in block_windows(info, window_size):
                data, valid = read_window(ds, window, idx)
                moments.add(data[:, valid])
        if say is not None:
            say(f"{uri}: {moments.n - before:,} valid pixels of {info.width * info.height:,}")
    if moments.n == 0:
        raise ValueError(f"no valid pixels in {len(uris)} scene(s): every pixel is nodata or masked")
    std = np.sqrt(moments.m2 / moments.n)
    return BandStats(
        [str(b) for b in wanted],
        [float(m) for m in moments.mean],
        [float(s) for s in std],
        [moments.n] * len(wanted),
        uris,
    )
