"""Frames to label: synthetic street frames on disk, and PNGs whose header declares more pixels than
they hold (decompression bombs)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def write_frames(folder: Path, sizes: list[tuple[int, int]], seed: int = 0, ext: str = ".png") -> list[Path]:
    """Synthetic street frames of the given (height, width) sizes, in two sub-folders."""
    import cv2

    from segray.datasets.synthetic import street_frame

    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        img, _ = street_frame(rng)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        p = folder / f"seq{i % 2}" / f"f{i:04d}{ext}"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out.append(p)
    return out


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG (correct CRCs) whose IHDR declares width x height RGB pixels and whose IDAT
    holds only a few compressed bytes: decoding it would allocate width*height*3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIG + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")
