"""Colour-coded masks -> class indices: each pixel to the nearest palette colour, within a tolerance.

Lossless colour masks (PNG) match exactly (tolerance 0). JPEG blurs colours, most of all at class
borders (and chroma is stored at half resolution), so a pixel there may be far from every palette
colour: it becomes ``ignore`` and is counted as ambiguous rather than guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Palette:
    """Colours and the class id each stands for (several colours may share an id)."""

    colours: np.ndarray  # (K, 3) uint8 RGB
    ids: np.ndarray  # (K,) uint8

    @classmethod
    def of(cls, pairs: list[tuple[tuple[int, int, int], int]]) -> Palette:
        seen: dict[tuple[int, int, int], int] = {}
        for colour, cid in pairs:
            if seen.get(colour, cid) != cid:
                raise ValueError(f"colour {colour} stands for two classes ({seen[colour]} and {cid})")
            seen[colour] = cid
        return cls(np.array(list(seen), dtype=np.uint8).reshape(-1, 3), np.array(list(seen.values()), dtype=np.uint8))


def map_colours(rgb: np.ndarray, palette: Palette, tolerance: float, ignore_id: int) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 RGB -> ((H, W) uint8 class ids, number of pixels set to ``ignore_id``).

    A pixel takes the id of its nearest palette colour (Euclidean RGB distance) if that distance is
    at most ``tolerance``; otherwise it is ambiguous and becomes ``ignore_id``.
    """
    flat = rgb.reshape(-1, 3)
    codes = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
    uniq, inverse = np.unique(codes, return_inverse=True)
    # Work on distinct colours only: a mask has far fewer colours than pixels.
    ucol = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1)
    d2 = ((ucol[:, None, :] - palette.colours[None, :, :].astype(np.int32)) ** 2).sum(axis=2)
    nearest = d2.argmin(axis=1)
    ok = d2[np.arange(len(uniq)), nearest] <= tolerance * tolerance
    ids = np.where(ok, palette.ids[nearest], ignore_id).astype(np.uint8)
    mask = ids[inverse].reshape(rgb.shape[:2])
    counts = np.bincount(inverse, minlength=len(uniq))
    return mask, int(counts[~ok].sum())


def unknown_colours(rgb: np.ndarray, palette: Palette, limit: int = 5) -> list[tuple[int, int, int]]:
    """Colours present in ``rgb`` that the palette lacks (for an error message)."""
    present = np.unique(rgb.reshape(-1, 3), axis=0)
    known = {(int(r), int(g), int(b)) for r, g, b in palette.colours}
    return [t for t in ((int(r), int(g), int(b)) for r, g, b in present) if t not in known][:limit]
