"""decode_frame on the odd files field archives hold: each either decodes to (H, W, 3) uint8 RGB or
raises FrameError with a reason; decompression bombs are refused from the header alone."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import struct
import sys
import threading
import tracemalloc
import types
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.frames import PNG_SIG, png_chunk, png_declaring
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segray.frames.decode import (
    DEFAULT_MAX_PIXELS,
    FrameError,
    check_frame,
    decode_checked,
    decode_frame,
    decode_resized,
    header_size,
    reduction,
    resize,
)

JPEG_SOI = b"\xff\xd8\xff"


def encode(img: np.ndarray, ext: str, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)


def red_bgr(h: int = 12, w: int = 20) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = 255  # OpenCV is BGR: channel 2 is red
    return img


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 frame size patched to width x height."""
    data = bytearray(encode(noise(16, 16), ".jpg"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def assert_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.shape == (h, w, 3)
    assert arr.dtype == np.uint8


# --- valid images --------------------------------------------------------------------------------


def test_png_is_rgb_and_lossless() -> None:
    img = noise(9, 13)
    out = decode_frame(encode(img, ".png"))
    assert_rgb(out, 9, 13)
    np.testing.assert_array_equal(out, img[..., ::-1])  # BGR written, RGB back


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_pure_red_decodes_as_red(ext: str) -> None:
    out = decode_frame(encode(red_bgr(), ext))
    assert_rgb(out, 12, 20)
    mean = out.reshape(-1, 3).mean(axis=0)
    assert mean[0] > 245 and mean[1] < 10 and mean[2] < 10, mean


def test_jpeg_close_to_source() -> None:
    img = np.full((32, 48, 3), (30, 120, 210), np.uint8)  # BGR
    out = decode_frame(encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert_rgb(out, 32, 48)
    assert np.abs(out.astype(int) - np.array([210, 120, 30])).max() <= 4


def test_grayscale_png_becomes_three_equal_channels() -> None:
    gray = np.arange(6 * 10, dtype=np.uint8).reshape(6, 10) * 4
    out = decode_frame(encode(gray, ".png"))
    assert_rgb(out, 6, 10)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_png_drops_alpha_keeps_colour() -> None:
    bgra = np.zeros((5, 8, 4), np.uint8)
    bgra[..., 0] = 200  # blue
    bgra[..., 1] = 100  # green
    bgra[..., 2] = 50  # red
    bgra[..., 3] = np.arange(8, dtype=np.uint8) * 30  # varying alpha
    data = encode(bgra, ".png")
    assert data[25] == 6  # IHDR colour type 6: really an RGBA PNG
    out = decode_frame(data)
    assert_rgb(out, 5, 8)
    assert (out == np.array([50, 100, 200], np.uint8)).all()


def test_16bit_png_scaled_to_8bit() -> None:
    img = np.zeros((4, 6, 3), np.uint16)
    img[0, 0] = (65535, 65535, 65535)
    img[1, 1] = (0, 0, 65535)  # BGR: red at full scale
    img[2, 2] = (256, 512, 32768)
    data = encode(img, ".png")
    assert data[24] == 16  # IHDR bit depth 16
    out = decode_frame(data)
    assert_rgb(out, 4, 6)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[1, 1]) == (255, 0, 0)
    assert tuple(out[2, 2]) == (128, 2, 1)
    assert tuple(out[3, 3]) == (0, 0, 0)


def test_16bit_grayscale_png() -> None:
    gray = np.full((3, 3), 65535, np.uint16)
    gray[1, 1] = 0
    out = decode_frame(encode(gray, ".png"))
    assert_rgb(out, 3, 3)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_one_by_one(ext: str) -> None:
    img = np.array([[[0, 0, 255]]], np.uint8)
    out = decode_frame(encode(img, ext))
    assert_rgb(out, 1, 1)
    assert out[0, 0, 0] > 240 and out[0, 0, 2] < 15


def test_odd_sizes_keep_height_width_order() -> None:
    out = decode_frame(encode(noise(3, 257), ".png"))
    assert_rgb(out, 3, 257)


# --- broken files ----------------------------------------------------------------------------


def test_zero_bytes() -> None:
    with pytest.raises(FrameError, match="empty file") as ei:
        decode_frame(b"")
    assert ei.value.stage == "decode"
    assert "0 bytes" in ei.value.reason


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.95])
def test_truncated_png(frac: float) -> None:
    data = encode(noise(64, 64), ".png")
    with pytest.raises(FrameError, match="truncated PNG"):
        decode_frame(data[: int(len(data) * frac)])


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.95])
def test_truncated_jpeg(frac: float) -> None:
    data = encode(noise(64, 64), ".jpg")
    with pytest.raises(FrameError, match="truncated JPEG"):
        decode_frame(data[: int(len(data) * frac)])


def test_jpeg_cut_inside_header() -> None:
    data = encode(noise(64, 64), ".jpg")
    with pytest.raises(FrameError, match="not a recognised image"):
        decode_frame(data[:40])


def test_png_corrupt_body_with_intact_end() -> None:
    """IEND present (so not 'truncated') but the image data is garbage: OpenCV's failure becomes a
    FrameError instead of a None slipping through."""
    data = bytearray(encode(noise(32, 32), ".png"))
    idat = data.index(b"IDAT")
    data[idat + 4 : idat + 200] = bytes(196)
    with pytest.raises(FrameError, match="could not be decoded"):
        decode_frame(bytes(data))


def test_random_bytes_named_png() -> None:
    data = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(FrameError, match="not a recognised image") as ei:
        decode_frame(data)
    assert ei.value.stage == "decode"


def test_text_file_renamed() -> None:
    with pytest.raises(FrameError, match="not a recognised image"):
        decode_frame(b"<html><body>404 not found</body></html>\n")


def test_png_signature_only() -> None:
    with pytest.raises(FrameError):
        decode_frame(PNG_SIG)


def test_frame_error_message_has_stage_and_reason() -> None:
    e = FrameError("decode", "some reason")
    assert str(e) == "decode: some reason"
    assert (e.stage, e.reason) == ("decode", "some reason")


# --- decompression bombs and the pixel limit ------------------------------------------------


def test_bomb_png_is_well_formed() -> None:
    """The crafted bomb is a real PNG by its header (so the refusal below is the pixel limit)."""
    from PIL import Image

    data = png_declaring(100_000, 100_000)
    ihdr_crc = zlib.crc32(data[12:29]) & 0xFFFFFFFF
    assert data[29:33] == struct.pack(">I", ihdr_crc)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("PNG", (100_000, 100_000))
    finally:
        Image.MAX_IMAGE_PIXELS = old


@pytest.mark.parametrize(
    "data",
    [png_declaring(100_000, 100_000), png_declaring(2**31 - 1, 2**31 - 1), jpeg_declaring(65_000, 65_000)],
    ids=["png_1e10", "png_max", "jpeg_4e9"],
)
def test_decompression_bomb_refused_from_header(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="above the limit of 268,435,456") as ei:
            decode_frame(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "pixels" in ei.value.reason and "--max-pixels" in ei.value.reason
    assert peak < 16 * 2**20  # nothing near width*height was allocated


def test_bomb_reason_states_declared_size() -> None:
    with pytest.raises(FrameError) as ei:
        decode_frame(png_declaring(100_000, 100_000))
    assert "100000x100000 = 10,000,000,000 pixels" in ei.value.reason


def test_default_limit_is_16k_squared() -> None:
    assert DEFAULT_MAX_PIXELS == 16_384 * 16_384


def test_max_pixels_parameter_respected() -> None:
    data = encode(noise(10, 12), ".png")  # 120 pixels
    assert_rgb(decode_frame(data, max_pixels=120), 10, 12)
    with pytest.raises(FrameError, match="10 = 120 pixels, above the limit of 119"):
        decode_frame(data, max_pixels=119)
    jpg = encode(noise(10, 12), ".jpg")
    with pytest.raises(FrameError, match="above the limit of 100"):
        decode_frame(jpg, max_pixels=100)


def test_max_pixels_is_the_only_size_gate() -> None:
    """The crafted header is refused or let through by max_pixels alone: at 2x2 it passes a limit of
    4 (libpng then decodes the tiny IDAT) and is refused at 3."""
    data = png_declaring(2, 2)
    assert_rgb(decode_frame(data, max_pixels=4), 2, 2)
    with pytest.raises(FrameError, match="2x2 = 4 pixels, above the limit of 3"):
        decode_frame(data, max_pixels=3)
    with pytest.raises(FrameError, match="above the limit"):
        decode_frame(png_declaring(16_384 + 1, 16_384))


# --- property: anything in, only FrameError or a valid array out -----------------------------

SEED_PNG = encode(noise(8, 8), ".png")
SEED_JPEG = encode(noise(8, 8), ".jpg")


def check_decode_contract(data: bytes) -> None:
    try:
        out = decode_frame(data)
    except FrameError as e:
        assert e.stage == "decode" and e.reason
        return
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.shape[0] >= 1 and out.shape[1] >= 1
    assert out.shape[0] * out.shape[1] <= DEFAULT_MAX_PIXELS


PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=2048))
def test_property_random_bytes(data: bytes) -> None:
    check_decode_contract(data)


@PROPERTY
@given(st.sampled_from([PNG_SIG, JPEG_SOI, b"BM", b"GIF89a", b"II*\x00", b"RIFF"]), st.binary(max_size=2048))
def test_property_signature_then_random_bytes(prefix: bytes, rest: bytes) -> None:
    check_decode_contract(prefix + rest)


@PROPERTY
@given(
    st.sampled_from([SEED_PNG, SEED_JPEG]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(1, 10_000),
)
def test_property_mutated_real_images(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(seed)
    for pos, val in flips:
        data[pos % len(data)] = val
    check_decode_contract(bytes(data[: max(1, len(data) - cut % len(data))]))


def _jpeg(h: int, w: int, exif_orientation: int | None = None) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    rgb = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)  # smooth, as photos are
    im = Image.fromarray(rgb)
    buf = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(buf, format="JPEG", quality=90, exif=exif)
    else:
        im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_reduction_keeps_both_sides_at_or_above_the_target() -> None:
    assert reduction(2048, 1024, 1024, 512) == 2
    assert reduction(2048, 1024, 512, 256) == 4
    assert reduction(2048, 1024, 480, 352) == 2  # 1/4 would make the height 256 < 352
    assert reduction(4000, 3000, 480, 352) == 8
    assert reduction(640, 480, 480, 352) == 1


@pytest.mark.parametrize("target", [(512, 1024), (256, 512), (352, 480)])
def test_reduced_jpeg_decode_matches_full_decode_then_resize(target: tuple[int, int]) -> None:
    data = _jpeg(1024, 2048)
    small, w, h = decode_resized(data, *target)
    full = resize(decode_frame(data), *target)
    assert (w, h) == (2048, 1024) and small.shape == (*target, 3) and small.dtype == np.uint8
    diff = np.abs(small.astype(np.int16) - full.astype(np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("scale", [0.25, 0.75], ids=["reduced", "full"])
def test_reduced_and_full_decodes_give_the_frame_as_displayed(orientation: int, scale: float) -> None:
    """Both decode paths (libjpeg's reduced scale for a frame twice the target, else the full decode)
    resize as stored, then turn: the same picture as decoding whole, turning, then resizing."""
    data = _jpeg(256, 512, exif_orientation=orientation)  # stored 512 wide, 256 high
    shown = (256, 512) if orientation < 5 else (512, 256)  # (height, width) as displayed
    target = (int(shown[0] * scale), int(shown[1] * scale))
    full = decode_frame(data)
    assert full.shape == (*shown, 3)
    small, w, h = decode_resized(data, *target)
    assert (h, w) == shown and small.shape == (*target, 3)
    diff = np.abs(small.astype(np.int16) - resize(full, *target).astype(np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8


def test_decode_resized_refuses_what_decode_frame_refuses() -> None:
    data = _jpeg(256, 512)
    with pytest.raises(FrameError, match="truncated JPEG"):
        decode_resized(data[: len(data) // 2], 64, 128)
    with pytest.raises(FrameError, match="above the limit"):
        decode_resized(data, 64, 128, max_pixels=1000)


# --- EXIF orientation: frames are decoded as displayed -------------------------------------------------


def _with_exif(rgb: np.ndarray, fmt: str, orientation: int, **save: object) -> bytes:
    """``rgb`` saved by PIL with an EXIF block holding ``orientation`` (JPEG APP1, PNG eXIf)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, exif=exif, **save)
    return buf.getvalue()


def _as_pil_shows(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_png_exif_orientation_gives_pils_exif_transpose_exactly(orientation: int) -> None:
    data = _with_exif(noise(6, 10, seed=orientation), "PNG", orientation)
    assert b"eXIf" in data  # PIL wrote the orientation where PNG keeps EXIF
    out = decode_frame(data)
    np.testing.assert_array_equal(out, _as_pil_shows(data))
    header = check_frame(data)
    assert header.orientation == orientation
    assert (header.width, header.height) == ((10, 6) if orientation < 5 else (6, 10)) == header_size(data)


@pytest.mark.parametrize("orientation", [3, 6])
def test_jpeg_exif_orientation_decodes_as_displayed(orientation: int) -> None:
    """Stored 480x360; orientation 6 is displayed 360 wide and 480 high (3: upside down, same size)."""
    data = _jpeg(360, 480, exif_orientation=orientation)
    shown = _as_pil_shows(data)
    assert shown.shape == ((360, 480, 3) if orientation == 3 else (480, 360, 3))
    out = decode_frame(data)
    assert out.shape == shown.shape
    assert np.abs(out.astype(np.int16) - shown.astype(np.int16)).mean() < 1.0  # both are libjpeg's decodes
    fmt, w, h = check_frame(data)  # unpacks as (format, displayed width, displayed height)
    assert (fmt, w, h) == ("JPEG", shown.shape[1], shown.shape[0]) == ("JPEG", *header_size(data))
    assert check_frame(data).orientation == orientation


def test_an_invalid_or_absent_orientation_counts_as_stored() -> None:
    assert check_frame(_jpeg(32, 48)).orientation == 1
    for bad in (0, 9, 65535):
        data = _jpeg(32, 48, exif_orientation=bad)
        assert check_frame(data).orientation == 1
        assert decode_frame(data).shape == _as_pil_shows(data).shape == (32, 48, 3)


def test_decoding_with_the_checked_header_matches_decode_frame() -> None:
    data = _jpeg(64, 96, exif_orientation=8)
    header = check_frame(data)
    assert (header.width, header.height, header.stored_size) == (64, 96, (96, 64))
    np.testing.assert_array_equal(decode_checked(data, header), decode_frame(data))


# --- data after the end of the image -----------------------------------------------------------------


def _photo(h: int = 96, w: int = 128, progressive: bool = False) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(11)
    rgb = cv2.resize(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    rgb = cv2.add(rgb, rng.integers(0, 24, rgb.shape, dtype=np.uint8))  # texture: long scans, 0xFF bytes in them
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=92, progressive=progressive)
    return buf.getvalue()


def _fake_mp4(size: int = 65_536) -> bytes:
    """What a motion photo carries after its JPEG: an MP4 (ftyp box, then media bytes)."""
    body = np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes()
    return struct.pack(">I", 24) + b"ftypmp42" + b"\0\0\0\0mp42isom" + body


TRAILERS = {
    "zeros": bytes(4096),
    "mp4": _fake_mp4(),
    "second_jpeg": encode(noise(40, 40, seed=9), ".jpg"),  # a multi-picture file's next image
}


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
@pytest.mark.parametrize("trailer", TRAILERS, ids=list(TRAILERS))
def test_jpeg_with_data_after_its_end_decodes(progressive: bool, trailer: str) -> None:
    plain = _photo(progressive=progressive)
    data = plain + TRAILERS[trailer]
    assert b"\xff\xd9" not in data[-1024:] or trailer == "second_jpeg"  # no end marker near the file's end
    header = check_frame(data)
    assert header.end == len(plain)  # where the image data really ends
    np.testing.assert_array_equal(decode_frame(data), decode_frame(plain))
    # The windowed path decodes with the header the batch carries (no end): the decoder stops at EOI.
    np.testing.assert_array_equal(decode_checked(data, dataclasses.replace(header, end=None)), decode_frame(plain))
    small, w, h = decode_resized(data, 24, 32)
    assert (w, h) == (128, 96)
    np.testing.assert_array_equal(small, decode_resized(plain, 24, 32)[0])


def test_progressive_jpeg_has_several_scans() -> None:
    """The progressive frames above really hold several scans (so the walk crosses from scan to scan)."""
    assert _photo(progressive=True).count(b"\xff\xda") > 2
    assert _photo().count(b"\xff\xda") == 1


def test_png_padded_after_iend_decodes() -> None:
    img = noise(20, 30)
    plain = encode(img, ".png")
    for pad in (bytes(4096), b"\xff" * 3000, _fake_mp4(2048)):
        data = plain + pad
        header = check_frame(data)
        assert header.end == len(plain)
        np.testing.assert_array_equal(decode_frame(data), img[..., ::-1])
        np.testing.assert_array_equal(decode_checked(data, dataclasses.replace(header, end=None)), img[..., ::-1])


CUT_FRACTIONS = [float(f) for f in np.linspace(0.005, 0.999, 61)]


@pytest.mark.parametrize("padded", [False, True], ids=["cut", "cut_then_zeros"])
@pytest.mark.parametrize("kind", ["jpeg", "progressive", "jpeg_exif", "png", "png_many_idat", "png_exif"])
def test_cut_short_anywhere_is_refused(kind: str, padded: bool) -> None:
    """A file cut anywhere before the end of its image data is refused, wherever the cut falls: in the
    header, inside a segment or chunk, inside a scan, between scans, inside the end marker; also when
    zeros fill the rest of its length (a preallocated download that stopped)."""
    img = noise(48, 64, seed=2)
    whole = {
        "jpeg": _photo(),
        "progressive": _photo(progressive=True),
        "jpeg_exif": _with_exif(img, "JPEG", 6, quality=90),
        "png": encode(img, ".png"),
        "png_many_idat": _png_in_chunks(img, 97),
        "png_exif": _with_exif(img, "PNG", 3),
    }[kind]
    assert decode_frame(whole).ndim == 3 and decode_frame(whole + bytes(1000)).ndim == 3
    cuts = sorted({int(len(whole) * f) for f in CUT_FRACTIONS} | {len(whole) - 1, len(whole) - 2, 1, 2, 8, 20})
    if padded and kind.startswith("png"):  # zeros in IEND's checksum alone leave every pixel there: it decodes
        cuts = [c for c in cuts if c < len(whole) - 4]
    for cut in cuts:
        data = whole[:cut] + (bytes(len(whole) - cut) if padded else b"")
        with pytest.raises(FrameError) as ei:
            decode_frame(data)
        assert ei.value.stage == "decode"
        assert "truncated" in ei.value.reason or "not a recognised image" in ei.value.reason, (cut, ei.value.reason)


def _png_in_chunks(img: np.ndarray, size: int) -> bytes:
    """A PNG whose image data is split into IDAT chunks of ``size`` bytes (as large PNGs are)."""
    raw = encode(img, ".png")
    ihdr = raw[8:33]
    idat = b"".join(
        raw[p + 8 : p + 8 + struct.unpack(">I", raw[p : p + 4])[0]]
        for p in _chunk_offsets(raw)
        if raw[p + 4 : p + 8] == b"IDAT"
    )
    chunks = b"".join(png_chunk(b"IDAT", idat[i : i + size]) for i in range(0, len(idat), size))
    return PNG_SIG + ihdr + chunks + png_chunk(b"IEND", b"")


def _chunk_offsets(png: bytes) -> list[int]:
    out, pos = [], 8
    while pos < len(png):
        out.append(pos)
        pos += 12 + struct.unpack(">I", png[pos : pos + 4])[0]
    return out


def test_the_end_check_is_cheap_on_a_large_jpeg() -> None:
    """A 1024x2048 photo's header and end-of-data walk reads its 0xFF bytes through a compiled search,
    not byte by byte in Python: tens of thousands of them, yet a handful of Python steps."""
    from segray.frames import decode

    data = _jpeg(1024, 2048)
    calls = 0
    search = decode._JPEG_MARKER

    class Counting:
        def search(self, buf: bytes, pos: int) -> re.Match[bytes] | None:
            nonlocal calls
            calls += 1
            return search.search(buf, pos)

    decode._JPEG_MARKER = Counting()  # type: ignore[assignment]
    try:
        header = check_frame(data)
    finally:
        decode._JPEG_MARKER = search
    assert header.end == len(data) and data.count(b"\xff") > 1000
    assert calls < 20, calls  # one per marker segment, one per scan


# --- no process-wide state ---------------------------------------------------------------------------


class _Recorder(types.ModuleType):
    """A module class that records every attribute set on the module (``module.X = ...``)."""

    writes: list[str] = []

    def __setattr__(self, name: str, value: object) -> None:
        _Recorder.writes.append(f"{self.__name__}.{name}")
        super().__setattr__(name, value)


def _other_formats() -> dict[str, bytes]:
    """Formats whose header PIL's plugins read: a normal frame each, and a BMP bomb."""
    bmp = bytearray(encode(noise(4, 4), ".bmp"))
    bmp[18:26] = struct.pack("<ii", 100_000, 100_000)  # BITMAPINFOHEADER width, height
    return {"bmp": encode(noise(9, 7), ".bmp"), "tiff": encode(noise(5, 11), ".tiff"), "bmp_bomb": bytes(bmp)}


def test_reading_headers_changes_no_process_wide_setting() -> None:
    """No module-level setting of PIL or of the warnings machinery is written while frames of every
    kind (PNG, JPEG, BMP, TIFF, bombs, broken files) are checked and decoded."""
    import warnings

    from PIL import Image

    frames = [
        encode(noise(8, 8), ".png"),
        _jpeg(32, 48, exif_orientation=6),
        png_declaring(100_000, 100_000),
        jpeg_declaring(65_000, 65_000),
        b"not an image",
        *_other_formats().values(),
    ]
    Image.init()  # PIL's own one-time plugin import, as Image.open does it
    modules = (Image, warnings)
    originals = [m.__class__ for m in modules]
    _Recorder.writes = []
    try:
        for m in modules:
            m.__class__ = _Recorder
        for data in frames:
            with contextlib.suppress(FrameError):
                decode_frame(data)
            header_size(data)
    finally:
        for m, cls in zip(modules, originals, strict=True):
            types.ModuleType.__setattr__(m, "__class__", cls)  # not recorded
    assert _Recorder.writes == []
    # The recorder sees such writes: the check can fail.
    try:
        Image.__class__ = _Recorder
        Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
    finally:
        types.ModuleType.__setattr__(Image, "__class__", types.ModuleType)
    assert _Recorder.writes == ["PIL.Image.MAX_IMAGE_PIXELS"]


def test_concurrent_decodes_beside_pil_users() -> None:
    """8 threads decode bombs and normal frames of every format while other threads open images with
    PIL: each frame gets its own right answer, and PIL's bomb limit is never seen changed."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    Image.init()  # PIL's plugins imported first: PIL's own first-time import is not what this checks
    before = Image.MAX_IMAGE_PIXELS
    others = _other_formats()
    cases: list[tuple[bytes, str]] = [
        (png_declaring(100_000, 100_000), "declares 100000x100000"),
        (jpeg_declaring(65_000, 65_000), "declares 65000x65000"),
        (others["bmp_bomb"], "declares 100000x100000"),
        (encode(noise(8, 8), ".png"), "(8, 8, 3)"),
        (_jpeg(32, 48, exif_orientation=6), "(48, 32, 3)"),
        (others["bmp"], "(9, 7, 3)"),
        (others["tiff"], "(5, 11, 3)"),
        (_photo()[:2000], "truncated JPEG"),
    ]
    seen: set[object] = set()
    done = threading.Event()
    normal = encode(noise(30, 40), ".png")

    def pil_user() -> int:
        opened = 0
        while not done.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)
            with Image.open(io.BytesIO(normal)) as im:  # PIL's own bomb check reads the limit here
                im.load()
                assert im.size == (40, 30)
            opened += 1
        return opened

    def check(i: int) -> bool:
        data, expected = cases[i % len(cases)]
        try:
            got = str(decode_frame(data).shape)
        except FrameError as e:
            got = e.reason
        return expected in got

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often, so an interleaving that can happen does
    try:
        with ThreadPoolExecutor(2) as users:
            opens = [users.submit(pil_user) for _ in range(2)]
            try:
                with ThreadPoolExecutor(8) as pool:
                    right = list(pool.map(check, range(2400)))
            finally:
                done.set()
            assert all(f.result() > 0 for f in opens)
    finally:
        sys.setswitchinterval(switch)
    assert all(right), [cases[i % len(cases)][1] for i, ok in enumerate(right) if not ok][:5]
    assert seen == {before} and before == Image.MAX_IMAGE_PIXELS


# --- one header parse per frame through the pipeline ---------------------------------------------------


def test_each_frame_header_is_read_once_on_its_way_through(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read stage's parse serves the resized path and the windowed path: the predictor decodes a
    large frame with the header the batch carries, and every frame comes out as displayed."""
    from segray.frames import decode
    from segray.labelling.read import read_frames
    from segray.tasks.semantic.predict import Predictor

    frames = {
        "resized.jpg": (_jpeg(96, 128, exif_orientation=6), (128, 96), 6),  # (bytes, displayed (h, w), orientation)
        "windowed.jpg": (_jpeg(256, 384, exif_orientation=8), (384, 256), 8),  # above 2x the 64x64 input
        "resized.png": (_with_exif(noise(30, 40), "PNG", 3), (30, 40), 3),
        "plain.png": (encode(noise(20, 24), ".png"), (20, 24), 1),
    }
    for name, (data, _, _) in frames.items():
        (tmp_path / name).write_bytes(data)
    batch = {
        "uri": np.array([str(tmp_path / n) for n in frames], dtype=object),
        "relative_path": np.array(list(frames), dtype=object),
    }
    predictor = Predictor(tiny_model, torch_threads=1)
    parsed: list[int] = []
    real = decode.read_header

    def counted(data: bytes, to_end: bool = False) -> decode.Header:
        parsed.append(len(data))
        return real(data, to_end)

    monkeypatch.setattr(decode, "read_header", counted)
    out = predictor(read_frames(batch, {"height": 64, "width": 64}, DEFAULT_MAX_PIXELS, world_files=False))
    assert sorted(parsed) == sorted(len(d) for d, _, _ in frames.values())  # one parse each
    assert list(out["error"]) == [""] * 4
    assert out["windowed"].tolist() == [False, True, False, False]
    assert out["exif_orientation"].tolist() == [o for _, _, o in frames.values()]
    for i, (_, shown, _) in enumerate(frames.values()):
        assert out["mask"][i].shape == shown
        assert (int(out["height"][i]), int(out["width"][i])) == shown
