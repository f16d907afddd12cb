"""decode_frame on the odd files field archives hold: each either decodes to (H, W, 3) uint8 RGB or
raises FrameError with a reason; decompression bombs are refused from the header alone."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segray.frames.decode import DEFAULT_MAX_PIXELS, FrameError, decode_frame, decode_resized, reduction, resize

PNG_SIG = b"\x89PNG\r\n\x1a\n"
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


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG (correct CRCs) whose IHDR declares width x height RGB pixels and whose IDAT
    holds only a few compressed bytes: decoding it would allocate width*height*3 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIG + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


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


def test_reduced_decode_ignores_exif_orientation_as_the_full_decode_does() -> None:
    data = _jpeg(256, 512, exif_orientation=6)  # "rotate 90": the header's size stays 512x256
    small, w, h = decode_resized(data, 64, 128)
    assert (w, h) == (512, 256) and small.shape == (64, 128, 3)
    assert decode_frame(data).shape == (256, 512, 3)


def test_decode_resized_refuses_what_decode_frame_refuses() -> None:
    data = _jpeg(256, 512)
    with pytest.raises(FrameError, match="truncated JPEG"):
        decode_resized(data[: len(data) // 2], 64, 128)
    with pytest.raises(FrameError, match="above the limit"):
        decode_resized(data, 64, 128, max_pixels=1000)


def test_header_checks_are_thread_safe() -> None:
    """The read stage checks frames from several threads at once: each bomb is refused by its declared
    size, never by PIL's own bomb guard, and PIL's process-wide limit is left as it was."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    bomb, small = png_declaring(100_000, 100_000), encode(noise(8, 8), ".png")

    def check(i: int) -> str:
        if i % 2:
            return str(decode_frame(small).shape)
        try:
            decode_frame(bomb)
        except FrameError as e:
            return e.reason
        return "decoded"

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(check, range(4000)))
    assert before == Image.MAX_IMAGE_PIXELS
    assert set(reasons[1::2]) == {"(8, 8, 3)"}
    odd = {r for r in reasons[::2] if "declares 100000x100000" not in r}
    assert not odd, f"bombs refused for another reason: {sorted(odd)[:3]}"
