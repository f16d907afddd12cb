"""Bytes -> RGB uint8 array of the frame as displayed, or a :class:`FrameError` that says why not.

Field archives hold every kind of odd file: zero-byte uploads, truncated PNG/JPEG, renamed
non-images, grayscale, RGBA, 16-bit, 1x1 thumbnails, headers that declare billions of pixels,
phone photos stored sideways with an EXIF orientation, and valid files with more data after their
end (a motion photo's video, vendor trailers, padding).

Each frame's header is parsed once, by :func:`check_frame`, into a :class:`Header` that the decoders
accept (:func:`decode_checked`, :func:`decode_resized`), so no later step needs to parse it again:

- PNG and JPEG headers are read here: PNG chunk by chunk to its IEND chunk, JPEG marker segment by
  marker segment from SOI, through each scan's entropy-coded data, to the end-of-image marker after
  its last scan. That walk finds the frame's size, its EXIF orientation (JPEG APP1 ``Exif``, PNG
  ``eXIf`` before the image data) and where its image data ends: data after that end is ignored,
  and a file cut short anywhere is refused (OpenCV would fill a cut JPEG with grey without a word).
- Other formats (BMP, TIFF, WebP, ...) are identified by PIL's format plugins, called directly and
  lazily (no pixel is read), and are taken as stored (orientation 1).

Nothing process-wide is changed to read a header (PIL's ``MAX_IMAGE_PIXELS``, the warning filters),
so threads that decode frames never disturb each other or other PIL users in the process. The bomb
guard is ``max_pixels``: a frame declaring more pixels is refused from its header, before any pixel
is decoded. Decoding itself is OpenCV's (fast, and it keeps 16-bit and alpha), told to ignore EXIF,
after which every path (:func:`decode_checked`, :func:`decode_resized`, the GPU decoder in
segray.frames.device_decode) applies the header's orientation: masks and sizes are of the frame
as an image viewer shows it.
"""

from __future__ import annotations

import io
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: Default ceiling on declared pixels (width * height): 16k x 16k. Larger needs --max-pixels.
DEFAULT_MAX_PIXELS = 16_384 * 16_384


class FrameError(Exception):
    """A frame that cannot be labelled; ``reason`` goes into ``errors/``."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """What a frame's header says, parsed once and handed to the decoders.

    ``width`` x ``height`` is the frame as displayed, its EXIF ``orientation`` (1-8; 1 = as stored,
    also when absent or invalid) applied. ``end`` is where the image data ends (after a JPEG's
    end-of-image marker, a PNG's IEND chunk; the file's length for other formats), or None when only
    the header was read. Unpacks as ``(format, width, height)``.
    """

    format: str
    width: int
    height: int
    orientation: int = 1
    end: int | None = None

    @property
    def transposed(self) -> bool:
        """Orientations 5-8 swap width and height: the stored image is ``height`` wide."""
        return self.orientation >= 5

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the image as stored, before its orientation is applied."""
        return (self.height, self.width) if self.transposed else (self.width, self.height)

    def __iter__(self) -> Iterator[str | int]:
        return iter((self.format, self.width, self.height))


def _unrecognised(why: str) -> FrameError:
    return FrameError("decode", f"not a recognised image ({why})")


class _CutShort(FrameError):
    """A PNG or JPEG whose header was read but whose image data does not reach its end."""

    def __init__(self, header: Header, reason: str) -> None:
        super().__init__("decode", reason)
        self.header = header


def _oriented(stored_format: str, stored_w: int, stored_h: int, orientation: int, end: int | None) -> Header:
    w, h = (stored_h, stored_w) if orientation >= 5 else (stored_w, stored_h)
    return Header(stored_format, w, h, orientation, end)


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block's first IFD (a TIFF structure), 1 when it has none
    or it is malformed: a broken EXIF block is no reason to refuse the pixels."""
    if tiff[:6] == b"Exif\0\0":  # PNG eXIf written with JPEG's APP1 prefix
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    magic, ifd = struct.unpack_from(order + "HI", tiff, 2)
    if magic != 42 or ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for k in range(min(count, (len(tiff) - ifd - 2) // 12)):
        tag, kind = struct.unpack_from(order + "HH", tiff, ifd + 2 + 12 * k)
        if tag != 0x0112:
            continue
        if kind == 3:  # SHORT, as the standard says
            (value,) = struct.unpack_from(order + "H", tiff, ifd + 10 + 12 * k)
        elif kind == 4:  # LONG, written by a few tools
            (value,) = struct.unpack_from(order + "I", tiff, ifd + 10 + 12 * k)
        else:
            return 1
        return value if 1 <= value <= 8 else 1
    return 1


#: The next JPEG marker: 0xFF then a byte that is not a stuffed zero (0x00, entropy-coded data), a
#: restart marker (0xD0-0xD7, inside a scan) or another 0xFF (fill bytes before a marker).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
#: Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded).
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_SOS, _JPEG_EOI, _JPEG_APP1 = 0xDA, 0xD9, 0xE1


def _jpeg(data: bytes, to_end: bool) -> Header:
    """Walk a JPEG's marker segments from SOI; with ``to_end``, on through every scan to the
    end-of-image marker after the last one, else stop at the first scan."""
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    orientation = 1
    exif_seen = False
    scans = 0
    while True:
        # Between segments the next marker is found past fill bytes (and, as libjpeg does, past stray
        # bytes); after a scan's header the same search skips its entropy-coded data.
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            break
        marker, pos = data[m.end() - 1], m.end()
        if marker == _JPEG_EOI:
            if size is None:
                raise _unrecognised("a JPEG that ends before its frame header")
            if scans == 0:
                raise FrameError("decode", "JPEG holds no image data (its end-of-image marker comes before any scan)")
            return _oriented("JPEG", *size, orientation, pos)
        if marker in (0x01, 0xD8):  # TEM and a repeated SOI stand alone, with no length
            continue
        if pos + 2 > n:
            break
        end = pos + ((data[pos] << 8) | data[pos + 1])
        if end > n:
            break
        if end < pos + 2:
            if size is None:
                raise _unrecognised(f"a JPEG segment at byte {pos - 2} declares a length below 2")
            raise FrameError(
                "decode", f"corrupt JPEG (the 0xFF{marker:02X} segment at byte {pos - 2} declares a length below 2)"
            )
        if marker in _JPEG_SOF and size is None:
            if end - pos < 7:
                raise _unrecognised(f"a JPEG frame header of {end - pos} bytes")
            height, width = struct.unpack_from(">HH", data, pos + 3)
            size = (width, height)
        elif marker == _JPEG_APP1 and not exif_seen and scans == 0 and data[pos + 2 : pos + 8] == b"Exif\0\0":
            exif_seen = True
            orientation = _tiff_orientation(data[pos + 8 : end])
        elif marker == _JPEG_SOS:
            if size is None:
                raise _unrecognised("a JPEG scan before any frame header")
            scans += 1
            if not to_end:
                return _oriented("JPEG", *size, orientation, None)
        pos = end
    # The data ran out before the end-of-image marker.
    if size is None:
        raise _unrecognised(f"a JPEG cut short in its header, at byte {n}")
    header = _oriented("JPEG", *size, orientation, None)
    if scans == 0:
        raise _CutShort(header, f"truncated JPEG (cut short in its header, at byte {n}, before any image data)")
    raise _CutShort(header, f"truncated JPEG (no end-of-image marker after its image data; {n} bytes)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(data: bytes, to_end: bool) -> Header:
    """Walk a PNG's chunks by their length fields; with ``to_end``, to its IEND chunk, else to its
    first IDAT chunk (an ``eXIf`` chunk counts only before the image data, as the format says)."""
    n = len(data)
    if n < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\0\0\0\x0d":
        raise _unrecognised("a PNG signature without a complete IHDR header")
    width, height = struct.unpack_from(">II", data, 16)
    orientation = 1
    exif_seen = idat = False
    pos = 33
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if not kind.isalpha():
            raise _CutShort(
                _oriented("PNG", width, height, orientation, None),
                f"truncated or corrupt PNG (no chunk at byte {pos}, where the chunk before it ends)",
            )
        end = pos + 12 + length
        if end > n:
            raise _CutShort(
                _oriented("PNG", width, height, orientation, None),
                f"truncated PNG (cut inside its {kind.decode()} chunk at byte {n})",
            )
        if kind == b"IEND":
            return _oriented("PNG", width, height, orientation, end)
        if kind == b"IDAT":
            if not to_end:
                return _oriented("PNG", width, height, orientation, None)
            idat = True
        elif kind == b"eXIf" and not exif_seen and not idat:
            exif_seen = True
            orientation = _tiff_orientation(data[pos + 8 : end - 4])
        pos = end
    raise _CutShort(_oriented("PNG", width, height, orientation, None), f"truncated PNG (no IEND chunk; {n} bytes)")


_PIL_INIT_LOCK = threading.Lock()
_pil_ready = False
#: What PIL's plugins raise for a file that is not theirs (as ``Image.open`` treats them).
_NOT_THIS_FORMAT = (SyntaxError, IndexError, TypeError, struct.error)


def _pil(data: bytes) -> Header:
    """Other formats: PIL's format plugins called in turn, as ``Image.open`` does, but without its
    process-wide bomb check (``max_pixels`` is the check here)."""
    global _pil_ready
    if not _pil_ready:
        with _PIL_INIT_LOCK:
            Image.init()  # imports every format plugin once
            _pil_ready = True
    prefix = data[:16]
    for fmt in list(Image.ID):
        factory, accept = Image.OPEN[fmt]
        try:
            claim = accept(prefix) if accept is not None else True
            if not claim or isinstance(claim, str):  # a string is PIL's "possibly this format" warning
                continue
            with factory(io.BytesIO(data), "") as im:
                return Header(str(im.format or fmt), int(im.width), int(im.height), 1, len(data))
        except _NOT_THIS_FORMAT:
            continue
        except Image.DecompressionBombError as e:
            raise FrameError("decode", f"{fmt} header refused by PIL's own size limit for the format ({e})") from e
        except Exception as e:  # noqa: BLE001 - a plugin that claims the file and fails says why
            raise _unrecognised(f"{fmt}: {type(e).__name__}: {e}") from e
    raise _unrecognised("no known image format's header")


def read_header(data: bytes, to_end: bool = False) -> Header:
    """The header alone: format, displayed size, orientation. ``to_end``: also find where the image
    data ends (``Header.end``), refusing a PNG or JPEG cut short. Checks nothing else."""
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg(data, to_end)
    if data[:8] == _PNG_SIGNATURE:
        return _png(data, to_end)
    return _pil(data)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as displayed, from the header alone, or None when the header is unreadable."""
    try:
        h = read_header(data)
    except FrameError:
        return None
    return h.width, h.height


def check_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """The frame's :class:`Header`, or a :class:`FrameError`: empty, unreadable, declaring more than
    ``max_pixels``, or cut short (a PNG or JPEG whose image data does not reach its end marker)."""
    if len(data) == 0:
        raise FrameError("decode", "empty file (0 bytes)")
    try:
        header = read_header(data, to_end=True)
    except _CutShort as e:  # a cut-short file that declares too many pixels is refused for its size
        if e.header.width * e.header.height > max_pixels:
            _check_size(e.header, max_pixels)
        raise
    _check_size(header, max_pixels)
    return header


def _check_size(header: Header, max_pixels: int) -> None:
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise FrameError("decode", f"declares an empty size {w}x{h}")
    if w * h > max_pixels:
        raise FrameError(
            "decode",
            f"declares {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} (raise --max-pixels "
            "if the frame is genuine)",
        )


def decode_frame(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image into an (H, W, 3) uint8 RGB array of the frame as displayed."""
    return decode_checked(data, check_frame(data, max_pixels))


def decode_checked(data: bytes, header: Header) -> np.ndarray:
    """``data`` whose ``header`` :func:`check_frame` gave -> (height, width, 3) uint8 RGB as displayed,
    without parsing the header again."""
    return orient(_decode_stored(data, header), header.orientation)


def _imdecode(data: bytes, header: Header, flags: int) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8, count=len(data) if header.end is None else header.end)
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise FrameError("decode", f"{header.format} data could not be decoded ({e.err})") from e
    if img is None or img.size == 0:
        raise FrameError("decode", f"{header.format} data could not be decoded (corrupt or unsupported variant)")
    return img


def _decode_stored(data: bytes, header: Header) -> np.ndarray:
    """RGB uint8 as stored, at the header's stored size (else a FrameError: the decoder and the header
    disagree, and the stats and mask would too)."""
    rgb = to_rgb8(_imdecode(data, header, cv2.IMREAD_UNCHANGED))  # IMREAD_UNCHANGED ignores EXIF orientation
    w, h = header.stored_size
    if rgb.shape[:2] != (h, w):
        raise FrameError(
            "decode",
            f"{header.format} decodes to {rgb.shape[1]}x{rgb.shape[0]} but its header declares {w}x{h}",
        )
    return rgb


#: JPEG decoding at 1/2, 1/4 or 1/8 of the size (libjpeg's DCT scaling: the cheap part of a decode
#: that would be thrown away by the resize anyway); OpenCV's own EXIF handling is off, as for the
#: full decode, because the header's orientation is applied after the resize.
_REDUCED = {
    8: cv2.IMREAD_REDUCED_COLOR_8 | cv2.IMREAD_IGNORE_ORIENTATION,
    4: cv2.IMREAD_REDUCED_COLOR_4 | cv2.IMREAD_IGNORE_ORIENTATION,
    2: cv2.IMREAD_REDUCED_COLOR_2 | cv2.IMREAD_IGNORE_ORIENTATION,
}


def reduction(width: int, height: int, to_width: int, to_height: int) -> int:
    """The largest JPEG scale-down (8, 4, 2, else 1) that keeps both sides at or above the target."""
    return next((f for f in _REDUCED if width // f >= to_width and height // f >= to_height), 1)


def decode_resized(
    data: bytes,
    height: int,
    width: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    header: Header | None = None,
) -> tuple[np.ndarray, int, int]:
    """An encoded frame -> (RGB uint8 at ``height`` x ``width`` as displayed, the frame's displayed
    width, its displayed height).

    A JPEG at least twice the target on both sides is decoded at a reduced scale first; every
    frame is resized as stored (to the target's sides swapped when its orientation turns it) with
    area averaging when shrinking, then oriented, and colour-converted after the resize, so no
    full-size copy is made beyond the decoder's own. The same checks as :func:`decode_frame`,
    unless ``header`` is :func:`check_frame`'s result for ``data`` already.
    """
    header = header or check_frame(data, max_pixels)
    sw, sh = header.stored_size
    th, tw = (width, height) if header.transposed else (height, width)
    factor = reduction(sw, sh, tw, th) if header.format == "JPEG" else 1
    if factor == 1:
        small = resize(_decode_stored(data, header), th, tw)
    else:
        small = cv2.cvtColor(resize(_imdecode(data, header, _REDUCED[factor]), th, tw), cv2.COLOR_BGR2RGB)
    return orient(small, header.orientation), header.width, header.height


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """An (H, W, ...) image as stored -> as displayed under EXIF ``orientation`` (1-8): 2 mirrors,
    3 turns half a turn, 4 flips, 5 transposes, 6 turns clockwise, 7 transverses, 8 turns anticlockwise.
    The result is contiguous; orientation 1 returns ``img`` itself."""
    if orientation == 2:
        return cv2.flip(img, 1)
    if orientation == 3:
        return cv2.rotate(img, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(img, 0)
    if orientation == 5:
        return cv2.transpose(img)
    if orientation == 6:
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.flip(cv2.transpose(img), -1)
    if orientation == 8:
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3): area averaging when shrinking both sides, else bilinear."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    interp = cv2.INTER_AREA if h > height and w > width else cv2.INTER_LINEAR
    return cv2.resize(img, (width, height), interpolation=interp)


def to_rgb8(img: np.ndarray) -> np.ndarray:
    """OpenCV's decode (gray, BGR, BGRA; 8/16-bit or float) -> RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = float(np.nanmin(f)), float(np.nanmax(f))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = np.nan_to_num((f - lo) * scale).clip(0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise FrameError("decode", f"unsupported channel count {channels}")
