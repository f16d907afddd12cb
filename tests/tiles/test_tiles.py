"""Sliding-window labelling of large frames: the window grid, the blend, seams, area accuracy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segray.labels import CAMVID
from segray.tasks.semantic.predict import Predictor
from segray.tiles.windows import TileSpec, blend_windows, label_tile, ramp, window_starts


def as_predict(module: nn.Module):  # noqa: ANN201 - the PredictFn a Predictor would pass
    @torch.inference_mode()
    def predict(windows: np.ndarray) -> torch.Tensor:
        return module(torch.from_numpy(windows).permute(0, 3, 1, 2).float() / 255)

    return predict


def small_receptive_field_model(classes: int = 5) -> nn.Module:
    """Two 3x3 convolutions: each output pixel sees 2 pixels around it, nothing further."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, classes, 3, padding=1)).eval()


@pytest.mark.parametrize(("length", "window", "overlap"), [(1000, 64, 16), (64, 64, 16), (30, 64, 16), (97, 64, 0)])
def test_windows_cover_the_frame_and_end_on_its_edge(length: int, window: int, overlap: int) -> None:
    starts = window_starts(length, window, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + window >= length and (length <= window or starts[-1] + window == length)
    for a, b in zip(starts, starts[1:], strict=False):
        assert b - a <= window - overlap  # consecutive windows overlap by at least `overlap`


def test_ramp_ignores_inside_edges_and_keeps_frame_borders() -> None:
    w = ramp(64, low_inside=True, high_inside=False, overlap=16, margin=3)
    assert (w[:3] == 0).all() and w[3] > 0 and w[-1] == 1 and (np.diff(w) >= 0).all()
    both = ramp(64, True, True, 16, 3)
    assert (both[:3] == 0).all() and (both[-3:] == 0).all() and both[32] == 1
    assert (ramp(64, False, False, 16, 3) == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 100, "width": 64, "overlap": 16, "margin": 2}, "multiples of 32"),
        ({"height": 64, "width": 64, "overlap": 64, "margin": 2}, "smaller than the window"),
        ({"height": 64, "width": 64, "overlap": 16, "margin": 8}, "less than half the overlap"),
    ],
)
def test_bad_tile_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TileSpec(**kwargs)


def test_blended_windows_equal_one_pass_over_the_whole_frame() -> None:
    """Margin 3 > the model's reach of 2 pixels: border pixels are taken from windows that saw their
    neighbours, so the blend reproduces a single pass over the whole frame."""
    model = small_receptive_field_model()
    rgb = np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    spec = TileSpec(64, 64, overlap=16, margin=3)
    rows: dict[int, torch.Tensor] = {}
    n = blend_windows(rgb, as_predict(model), spec, batch_size=3, sink=lambda y0, r: rows.__setitem__(y0, r.clone()))
    assert n == len(window_starts(200, 64, 16)) * len(window_starts(260, 64, 16))
    blended = torch.cat([rows[k] for k in sorted(rows)], dim=1)
    whole = as_predict(model)(rgb[None])[0]
    assert blended.shape == whole.shape
    assert torch.allclose(blended, whole, atol=1e-5), (blended - whole).abs().max()
    mask = label_tile(rgb, as_predict(model), spec, batch_size=3).mask
    assert (mask == whole.argmax(0).numpy()).all()

    # Without the margin the window borders leak in: the test above is not vacuous.
    leaky: dict[int, torch.Tensor] = {}
    blend_windows(rgb, as_predict(model), TileSpec(64, 64, 16, 0), 3, lambda y0, r: leaky.__setitem__(y0, r.clone()))
    assert not torch.allclose(torch.cat([leaky[k] for k in sorted(leaky)], dim=1), whole, atol=1e-5)


def test_model_calls_never_exceed_the_batch_and_band_is_window_high() -> None:
    seen: list[int] = []
    model = small_receptive_field_model(3)

    def predict(windows: np.ndarray) -> torch.Tensor:
        seen.append(len(windows))
        return as_predict(model)(windows)

    chunks: list[tuple[int, int]] = []
    blend_windows(
        np.zeros((300, 500, 3), np.uint8),
        predict,
        TileSpec(64, 96, 16, 2),
        4,
        lambda y0, r: chunks.append((y0, r.shape[1])),
    )
    assert max(seen) <= 4 and sum(seen) == len(window_starts(300, 64, 16)) * len(window_starts(500, 96, 16))
    assert all(n <= 64 for _, n in chunks)  # rows are finalised per band, never the whole frame at once
    assert [y for y, _ in chunks] == sorted(y for y, _ in chunks) and sum(n for _, n in chunks) == 300


def test_constant_model_gives_a_mask_without_seams() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 6, *x.shape[2:])
            logits[:, 4] = 3.0
            return logits + 0.01 * x.mean(1, keepdim=True)  # depends on the input, class 4 always wins

    rgb = np.random.default_rng(1).integers(0, 256, (1000, 1300, 3), dtype=np.uint8)
    out = label_tile(rgb, as_predict(Constant()), TileSpec(128, 128, 32, 4), batch_size=8)
    assert out.mask.shape == (1000, 1300) and (out.mask == 4).all()


def test_frames_thinner_than_a_window_are_padded() -> None:
    model = small_receptive_field_model(4)
    rgb = np.random.default_rng(2).integers(0, 256, (40, 500, 3), dtype=np.uint8)
    out = label_tile(rgb, as_predict(model), TileSpec(64, 64, 16, 3), batch_size=4)
    assert out.mask.shape == (40, 500) and out.mask.max() < 4 and 0 < out.mean_confidence <= 1


def nearest_colour_model(colours: np.ndarray, mean: np.ndarray, std: np.ndarray) -> nn.Module:
    """A fixed-weight 1x1 convolution: logit_k = 2 p_k.x - |p_k|^2 on normalised pixels, i.e. the class
    of the nearest palette colour. Its output is a known function of the input."""
    protos = torch.tensor((colours - mean * 255) / (std * 255), dtype=torch.float32)
    conv = nn.Conv2d(3, len(colours), 1)
    with torch.no_grad():
        conv.weight.copy_(2 * protos[:, :, None, None])
        conv.bias.copy_(-(protos**2).sum(1))
    return conv.eval()


def synthetic_tile(height: int, width: int, classes: int, seed: int = 0) -> np.ndarray:
    """A class mask of known geometric regions: background, rectangles, discs, triangles."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((height, width), np.uint8)
    for k in range(1, classes):
        shape = k % 3
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(height // 12, height // 4))
        if shape == 0:
            cv2.rectangle(truth, (cx - size, cy - size // 2), (cx + size, cy + size // 2), k, thickness=-1)
        elif shape == 1:
            cv2.circle(truth, (cx, cy), size, k, thickness=-1)
        else:
            pts = np.array([[cx, cy - size], [cx - size, cy + size], [cx + size, cy + size]], np.int32)
            cv2.fillPoly(truth, [pts], k)
    return truth


def test_large_tile_areas_match_the_truth(tiny_model: str) -> None:
    """3,000 x 4,000 tile through the actor's code path (encoded PNG in, full-size mask out)."""
    p = Predictor(tiny_model, torch_threads=1, tile_window=(512, 512), tile_overlap=128, tile_batch_size=4)
    colours = np.array([c.color for c in CAMVID.classes], np.float64)
    p.model = nearest_colour_model(colours, p.mean.view(3).numpy() / 255, p.std.view(3).numpy() / 255)
    truth = synthetic_tile(3000, 4000, CAMVID.num_classes)
    noise = np.random.default_rng(3).normal(0, 8, (3000, 4000, 3))
    rgb = np.clip(colours[truth] + noise, 0, 255).astype(np.uint8)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    batch = {
        "uri": np.array(["tile.png", "bad.png"], dtype=object),
        "relative_path": np.array(["tile.png", "bad.png"], dtype=object),
        "image": np.zeros((2, 64, 64, 3), np.uint8),
        "encoded": np.array([png, b"\x89PNG\r\n\x1a\n garbage"], dtype=object),
        "width": np.array([4000, 4000], np.int32),
        "height": np.array([3000, 3000], np.int32),
        "error": np.array(["", ""], dtype=object),
        "error_stage": np.array(["", ""], dtype=object),
    }
    out = p(batch)
    mask = out["mask"][0]
    assert mask.shape == (3000, 4000) and "encoded" not in out
    true_px = np.bincount(truth.ravel(), minlength=CAMVID.num_classes)
    got_px = out["class_pixels"][0]
    assert got_px.sum() == 3000 * 4000
    assert (true_px > 0).sum() >= 6  # several classes really present
    err = np.abs(got_px - true_px) / np.maximum(true_px, 1)
    assert (err[true_px > 0] < 0.005).all(), dict(zip(CAMVID.names, err.round(5), strict=True))
    assert 0 < out["mean_confidence"][0] <= 1
    assert out["error_stage"][1] == "decode" and out["error"][1]  # a bad large frame is recorded, not raised


def test_label_cli_tile_options() -> None:
    from segray.cli import build_parser, label_options

    base = ["label", "--model", "m", "--input", "i", "--output", "o"]
    opts = label_options(
        build_parser().parse_args(
            [*base, "--window", "512x256", "--overlap", "64", "--tile-above", "3", "--pixel-size", "0.3"]
        )
    )
    assert (opts.tile_window, opts.tile_overlap, opts.tile_above, opts.pixel_size) == ((512, 256), 64, 3.0, 0.3)
    assert opts.world_files and not label_options(build_parser().parse_args([*base, "--no-world-files"])).world_files
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--window", "big"])
