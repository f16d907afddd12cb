"""A request's body -> one frame ready for the Predictor, exactly as the labelling job's read stage
prepares it (segray.labelling.read), or a :class:`RequestError` with the HTTP status and the reason.

The body is read with a size limit (413 before the rest is read); the image header is checked
before any pixel is decoded: a frame declaring more than ``max_pixels`` is refused (413), one that
is not an image, empty or cut short gets 400 with the decoder's reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np

from segray.frames.decode import FrameError, check_frame, decode_resized, header_size
from segray.labelling.read import is_large


class RequestError(Exception):
    """An answer other than 200: ``status`` and a message that names what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Frame:
    """What the read stage hands the Predictor for one frame: the model-size image, or (above the
    window threshold) the encoded bytes, which the Predictor decodes and labels in windows."""

    image: np.ndarray | None
    encoded: bytes
    width: int
    height: int


async def read_body(content_length: str | None, chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes (from the
    Content-Length header when sent, else while streaming)."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise RequestError(413, f"body of {int(content_length):,} bytes is above the limit of {limit:,} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is above the limit of {limit:,} bytes")
        parts.append(chunk)
    return b"".join(parts)


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image in a body: the body itself, or the file part of a ``multipart/form-data`` form
    (the first part with a file name, else the first part)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body)
    if not msg.is_multipart():
        raise RequestError(400, "multipart body could not be parsed (is the boundary in Content-Type right?)")
    parts = list(msg.iter_parts())
    if not parts:
        raise RequestError(400, "multipart body holds no parts: send the image as a form field, e.g. -F image=@f.jpg")
    part = next((p for p in parts if p.get_filename()), parts[0])
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def prepare(
    data: bytes,
    height: int,
    width: int,
    max_pixels: int,
    tile_above: float,
    reference: tuple[int, int],
) -> Frame:
    """Check the header, then decode and resize to the model input (``height`` x ``width``) as the
    read stage does; a frame above ``tile_above`` x ``reference`` stays encoded for windows."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        w, h = size
        raise RequestError(
            413, f"image declares {w}x{h} = {w * h:,} pixels, above this endpoint's limit of {max_pixels:,}"
        )
    try:
        _, w, h = check_frame(data, max_pixels)
        if is_large(w, h, reference, tile_above):
            return Frame(None, data, w, h)
        rgb, w, h = decode_resized(data, height, width, max_pixels)
    except FrameError as e:
        raise RequestError(400, e.reason) from e
    except Exception as e:  # noqa: BLE001 - a decoder bug answers 400 with its message, the replica stays up
        raise RequestError(400, f"could not decode the image ({type(e).__name__}: {e})") from e
    return Frame(rgb, b"", w, h)
