"""JPEG frames decoded and resized on the inference actor's GPU (``segray label --decode gpu``).

On a GPU node the CPU side of a frame is mostly its JPEG decode; nvJPEG (through
``torchvision.io.decode_jpeg(..., device="cuda")``) decodes a batch on the GPU, where the frame is
then turned as its EXIF orientation says (nvJPEG ignores EXIF, and torchvision applies it on the CPU only)
and resized to the model input (area averaging when shrinking, as the CPU path does). A frame the GPU decoder
refuses (CMYK, arithmetic coding, a corrupt body) is decoded by the CPU decoder instead, frame by
frame, and one that neither can decode becomes an error row, as with CPU decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segray.frames.decode import DEFAULT_MAX_PIXELS, FrameError, decode_resized, read_header


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """A (..., H, W) image as stored -> as displayed under EXIF ``orientation`` (1-8), as
    segray.frames.decode.orient turns an (H, W, 3) array (views: no copy)."""
    if orientation >= 5:  # 5 transposes; 6 (clockwise), 7 (transverse) and 8 (anticlockwise) are flips of it
        img = img.transpose(-1, -2)
    flips = {2: (-1,), 3: (-2, -1), 4: (-2,), 6: (-1,), 7: (-2, -1), 8: (-2,)}.get(orientation)
    return img.flip(flips) if flips else img


def _orientation(data: bytes) -> int:
    try:
        return read_header(data).orientation
    except FrameError:
        return 1  # the decoders say what is wrong with it


def decode_jpegs(
    datas: list[bytes],
    device: torch.device,
    height: int,
    width: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    orientations: Sequence[int] | None = None,
) -> tuple[torch.Tensor, list[tuple[str, str] | None]]:
    """Encoded JPEGs -> ((N, 3, height, width) uint8 on ``device`` as displayed, per frame None or
    (stage, reason)). ``orientations``: each frame's EXIF orientation as the read stage found it
    (segray.frames.decode.Header); else read from each frame's header segments (not its image data)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    n = len(datas)
    turns = list(orientations) if orientations is not None else [_orientation(d) for d in datas]
    out = torch.zeros((n, 3, height, width), dtype=torch.uint8, device=device)
    errors: list[tuple[str, str] | None] = [None] * n
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    decoded: list[torch.Tensor | None]
    try:
        decoded = list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad frame fails the batch call: decode one by one
        decoded = []
        for t in tensors:
            try:
                decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
    for i, img in enumerate(decoded):
        if img is None or img.ndim != 3 or img.shape[0] != 3:
            try:
                rgb, _, _ = decode_resized(datas[i], height, width, max_pixels)
            except FrameError as e:
                errors[i] = (e.stage, e.reason)
                continue
            out[i] = torch.from_numpy(rgb).permute(2, 0, 1).to(device)
            continue
        img = orient(img, int(turns[i]))
        if tuple(img.shape[1:]) == (height, width):
            out[i] = img
            continue
        x = img[None].float()
        if img.shape[1] > height and img.shape[2] > width:  # area averaging, as the CPU path's INTER_AREA
            y = F.interpolate(x, size=(height, width), mode="area")
        else:
            y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        out[i] = y[0].round_().clamp_(0, 255).to(torch.uint8)
    return out, errors
