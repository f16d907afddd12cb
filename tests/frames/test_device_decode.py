"""``--decode gpu``: JPEGs decoded in the inference actor, the CPU fallback frame by frame, and a
clean refusal where there is no GPU. The decoder runs here on the CPU device: the same calls
torchvision makes with ``device="cuda"`` on a GPU node."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run
from PIL import Image

from segray.frames.decode import decode_resized
from segray.frames.device_decode import decode_jpegs
from segray.frames.device_decode import orient as device_orient
from segray.labelling.read import read_frames
from segray.tasks.semantic.predict import Predictor

H, W = 64, 128  # the model input of the tests' frames


def jpeg(seed: int, mode: str = "RGB", size: tuple[int, int] = (256, 512)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed))).save(buf, format="PNG")
    return buf.getvalue()


def test_jpegs_decode_and_resize_like_the_cpu_path_and_odd_ones_fall_back() -> None:
    good, cmyk, gray = jpeg(0), jpeg(1, "CMYK"), jpeg(2, "L")
    broken = bytearray(jpeg(3))
    broken[len(broken) // 3 : len(broken) // 3 + 2000] = b"\x00" * 2000  # a body the decoders choke on
    not_jpeg = png(4)  # the read stage sends only JPEGs, but any frame must come out right
    images, errors = decode_jpegs([good, cmyk, gray, bytes(broken), not_jpeg], torch.device("cpu"), H, W)
    assert images.shape == (5, 3, H, W) and images.dtype == torch.uint8
    for i, data in enumerate((good, cmyk, gray, not_jpeg)):
        row = i if i < 3 else 4
        assert errors[row] is None
        cpu, _, _ = decode_resized(data, H, W)
        diff = np.abs(images[row].permute(1, 2, 0).numpy().astype(np.int16) - cpu.astype(np.int16))
        assert diff.mean() < 3, (i, diff.mean())
    assert errors[3] is None or errors[3][0] == "decode"  # decoded (as libjpeg does) or an error row, never lost


def test_the_predictor_labels_device_decoded_rows_as_it_labels_cpu_decoded_ones(
    tiny_model: str, tmp_path: Path
) -> None:
    frames = [jpeg(i) for i in range(3)] + [b"\xff\xd8 not really a jpeg \xff\xd9"]
    for i, data in enumerate(frames):
        (tmp_path / f"f{i}.jpg").write_bytes(data)
    batch = {
        "uri": np.array([str(tmp_path / f"f{i}.jpg") for i in range(4)], dtype=object),
        "relative_path": np.array([f"f{i}.jpg" for i in range(4)], dtype=object),
    }
    p = Predictor(tiny_model, torch_threads=1)
    pre = {"height": 64, "width": 64}
    resize = {"tile_above": 100.0, "world_files": False}  # these frames are resized, not windowed
    on_cpu = p(read_frames(dict(batch), pre, 2**31, **resize))
    on_device = read_frames(dict(batch), pre, 2**31, **resize, decode="gpu")
    assert on_device["on_device"].tolist() == [True, True, True, False]  # the fake fails its checks here
    assert on_device["error_stage"].tolist()[3] == "decode"
    out = p(on_device)
    assert list(out["error"])[:3] == ["", "", ""] and out["error"][3] == on_cpu["error"][3] != ""
    for i in range(3):
        assert out["mask"][i].shape == (256, 512)
        assert (out["mask"][i] == on_cpu["mask"][i]).mean() > 0.98


def test_gpu_decoding_is_refused_cleanly_without_a_gpu(tiny_model: str) -> None:
    with pytest.raises(ValueError, match="--decode gpu needs a GPU in the inference actor, and this one runs on cpu"):
        Predictor(tiny_model, torch_threads=1, decode="gpu")


@pytest.mark.usefixtures("ray_session")
def test_the_job_refuses_gpu_decoding_on_a_cluster_without_gpus(
    tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(jpeg(0))
    code, text = run(
        capsys, "label", "--model", tiny_model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
        "--decode", "gpu",
    )  # fmt: skip
    assert code == 2 and "--decode gpu: the inference actors get no GPU" in text, text
    assert not (tmp_path / "out" / "stats").exists()


def jpeg_turned(orientation: int, size: tuple[int, int] = (96, 160)) -> bytes:
    """A JPEG stored ``size`` (height, width) whose EXIF says how to turn it for display."""
    rng = np.random.default_rng(orientation)
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_device_decoded_frames_are_turned_as_the_cpu_path_turns_them(orientation: int) -> None:
    """nvJPEG (and torchvision's decoder on any device) ignores EXIF: the frame is turned as its header
    says, from the read stage's orientation or from its own header segments, as the CPU decoder does."""
    from segray.frames.decode import check_frame, orient

    data = jpeg_turned(orientation)
    assert check_frame(data).orientation == orientation
    cpu, w, h = decode_resized(data, H, W)
    assert (w, h) == ((160, 96) if orientation < 5 else (96, 160))
    found, errors = decode_jpegs([data], torch.device("cpu"), H, W)
    told, _ = decode_jpegs([data], torch.device("cpu"), H, W, orientations=[orientation])
    assert errors == [None]
    assert torch.equal(found, told)
    diff = np.abs(found[0].permute(1, 2, 0).numpy().astype(np.int16) - cpu.astype(np.int16))
    assert diff.mean() < 3, diff.mean()
    # The same rotation, array for array: the tensor turn is the array turn.
    stored = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    turned = device_orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(turned, orient(stored, orientation))
