"""A request's body -> one frame ready for the Predictor, exactly as the labelling job's read stage
prepares it (segray.labelling.read), or a :class:`RequestError` with the HTTP status and the reason.

The body is read with a size limit (413 before the rest is read). A ``multipart/form-data`` body
may hold at most ``MAX_FORM_PARTS`` parts: they are counted as the body streams in, so a body of
thousands of tiny parts is refused (413) before it is even complete, and the image part is found
with a few ``bytes.find`` calls, never with a per-line parser. The image header is checked before
any pixel is decoded: a frame declaring more than ``max_pixels`` is refused (413), one that is not
an image, empty or cut short gets 400 with the decoder's reason.
"""

from __future__ import annotations

import binascii
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser

import numpy as np

from segray.frames.decode import FrameError, check_frame, decode_resized, header_size
from segray.tasks.batch import is_large

#: Serving's pixel budget (4096 x 4096): a frame declaring more is refused before it is decoded. A
#: frame at the budget costs about 100 MB while it is labelled and, above the window threshold, one
#: model call per window: seconds to minutes on a CPU. The labelling job's own ceiling
#: (segray.frames.decode.DEFAULT_MAX_PIXELS) is 16 times larger: archives are labelled offline.
SERVE_MAX_PIXELS = 4096 * 4096
#: Parts a form may hold: the image and a few other fields. A browser's or curl's upload has one.
MAX_FORM_PARTS = 16
#: Bytes of one part's header block (Content-Disposition, Content-Type, ...).
MAX_PART_HEADER_BYTES = 16_384


class RequestError(Exception):
    """An answer other than 200: ``status`` and a message that names what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Frame:
    """What the read stage hands the Predictor for one frame: the model-size image, or (above the
    window threshold) the encoded bytes, which the labeller decodes and labels in windows.

    ``cancel`` is set by the request when it gives up (deadline passed, client gone): the labeller
    skips the frame, or stops between two window batches."""

    image: np.ndarray | None
    encoded: bytes
    width: int
    height: int
    cancel: threading.Event = field(default_factory=threading.Event)


def form_boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/...`` Content-Type, None for any other type (the body is the image)."""
    if not content_type.lower().startswith("multipart/"):
        return None
    msg = Message()
    msg["Content-Type"] = content_type
    boundary = msg.get_boundary()
    if not boundary:
        raise RequestError(400, f"multipart Content-Type without a boundary: {content_type[:200]!r}")
    if len(boundary) > 200:
        raise RequestError(400, f"multipart boundary of {len(boundary)} characters; at most 200 are accepted")
    return boundary.encode("latin-1", "replace")


def too_many_parts(limit: int) -> RequestError:
    return RequestError(
        413,
        f"multipart body has more than {limit} parts, this endpoint's limit: send the image as one file "
        "field (curl -F image=@frame.jpg) or as the body itself",
    )


class PartCounter:
    """Counts a multipart body's boundary lines as its chunks arrive; 413 once there are more than
    ``limit`` parts. A line that spans two chunks is counted once."""

    def __init__(self, boundary: bytes, limit: int = MAX_FORM_PARTS) -> None:
        self.delimiter = b"\r\n--" + boundary
        self.limit = limit
        self.seen = 0
        self._tail = b"\r\n"  # the body's start counts as a line start

    def feed(self, chunk: bytes) -> None:
        n = len(self.delimiter)
        self.seen += (self._tail + chunk[: n - 1]).count(self.delimiter) + chunk.count(self.delimiter)
        self._tail = (self._tail + chunk)[-(n - 1) :] if len(chunk) < n - 1 else chunk[-(n - 1) :]
        # n parts have n + 1 boundary lines (the last one closes the body).
        if self.seen > self.limit + 1:
            raise too_many_parts(self.limit)


async def read_body(
    content_length: str | None, chunks: AsyncIterator[bytes], limit: int, parts: PartCounter | None = None
) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes (from the
    Content-Length header when sent, else while streaming), or, with ``parts``, as soon as it holds
    more parts than the form limit."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise RequestError(413, f"body of {int(content_length):,} bytes is above the limit of {limit:,} bytes")
    received: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is above the limit of {limit:,} bytes")
        if parts is not None:
            parts.feed(chunk)
        received.append(chunk)
    return b"".join(received)


def image_bytes(body: bytes, content_type: str, max_parts: int = MAX_FORM_PARTS) -> bytes:
    """The image in a body: the body itself, or the file part of a ``multipart/form-data`` form
    (the first part with a file name, else the first part). At most ``max_parts`` parts (413)."""
    boundary = form_boundary(content_type)
    if boundary is None:
        return body
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\r\n" + delimiter)
        if pos < 0:
            raise RequestError(400, "multipart body could not be parsed (is the boundary in Content-Type right?)")
        pos += 2
    spans: list[tuple[int, int]] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):  # the closing boundary
            break
        line_end = body.find(b"\r\n", pos)
        end = body.find(b"\r\n" + delimiter, pos)
        if line_end < 0 or end < 0:
            raise RequestError(400, "multipart body is cut short: it ends before its closing boundary")
        spans.append((line_end + 2, end))
        if len(spans) > max_parts:
            raise too_many_parts(max_parts)
        pos = end + 2
    if not spans:
        raise RequestError(400, "multipart body holds no parts: send the image as a form field, e.g. -F image=@f.jpg")
    parsed = [_part(body, start, end, i) for i, (start, end) in enumerate(spans, 1)]
    headers, start, end = next((p for p in parsed if p[0].get_filename()), parsed[0])
    payload = body[start:end]
    encoding = (headers.get("Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(payload)
        except binascii.Error as e:
            raise RequestError(400, f"the form's image part is not valid base64 ({e})") from e
    if encoding not in ("binary", "8bit", "7bit"):
        raise RequestError(400, f"the form's image part has Content-Transfer-Encoding {encoding!r}: send it as binary")
    return payload


def _part(body: bytes, start: int, end: int, number: int) -> tuple[Message, int, int]:
    """Part ``number``'s headers and where its content starts and ends."""
    if body.startswith(b"\r\n", start):  # a part without headers
        return Message(), start + 2, end
    blank = body.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER_BYTES))
    if blank < 0:
        raise RequestError(
            400,
            f"multipart part {number} has no blank line within its first {MAX_PART_HEADER_BYTES:,} bytes "
            "(its headers are malformed or too long)",
        )
    return BytesHeaderParser().parsebytes(body[start : blank + 4]), blank + 4, end


def prepare(
    data: bytes,
    height: int,
    width: int,
    max_pixels: int,
    tile_above: float,
    reference: tuple[int, int],
    cancel: threading.Event | None = None,
) -> Frame:
    """Check the header, then decode and resize to the model input (``height`` x ``width``) as the
    read stage does; a frame above ``tile_above`` x ``reference`` stays encoded for windows."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise RequestError(
            413,
            f"image declares {w}x{h} = {w * h:,} pixels, above this endpoint's limit of {max_pixels:,} pixels "
            "(--max-pixels)",
        )
    cancel = cancel or threading.Event()
    try:
        header = check_frame(data, max_pixels)
        w, h = header.width, header.height
        if is_large(w, h, reference, tile_above):
            return Frame(None, data, w, h, cancel)
        rgb, w, h = decode_resized(data, height, width, max_pixels, header)
    except FrameError as e:
        raise RequestError(400, e.reason) from e
    except Exception as e:  # noqa: BLE001 - a decoder bug answers 400 with its message, the replica stays up
        raise RequestError(400, f"could not decode the image ({type(e).__name__}: {e})") from e
    return Frame(rgb, b"", w, h, cancel)
