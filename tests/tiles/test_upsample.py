"""Masks from model-size logits (segray.tiles.upsample) equal the argmax of bilinearly resized
logits, pixel for pixel, with the same class counts, whatever the scale."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.common import TINY_ENCODER

from segray.datasets.synthetic import street_frame
from segray.labels import CAMVID
from segray.models.artifact import init_artifact
from segray.tiles import upsample
from segray.tiles.upsample import mask_from_logits, masks_from_logits

#: (model h, w) -> (frame H, W): integer and non-integer factors, one side only, frames smaller
#: than the model input, 1x1 logits (the dash-camera case, 64x128 -> 1024x2048, is below).
SCALES = [
    ((16, 24), (16, 24)),
    ((16, 24), (64, 96)),
    ((17, 23), (100, 211)),
    ((32, 64), (500, 1001)),
    ((64, 64), (128, 20)),
    ((32, 48), (20, 30)),
    ((1, 1), (5, 7)),
    ((9, 7), (9, 700)),
]


def reference(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    up = F.interpolate(logits[None].contiguous(), size=(height, width), mode="bilinear", align_corners=False)[0]
    mask = up.argmax(dim=0).to(torch.uint8).numpy()
    return mask, np.bincount(mask.ravel(), minlength=logits.shape[0])


def check(logits: torch.Tensor, height: int, width: int, backend: str = "auto") -> None:
    mask, counts = mask_from_logits(logits, height, width, backend)
    ref_mask, ref_counts = reference(logits, height, width)
    assert mask.shape == (height, width) and mask.dtype == torch.uint8
    differ = int((mask.numpy() != ref_mask).sum())
    assert differ == 0, f"{differ} pixels differ from F.interpolate + argmax"
    assert counts.tolist() == ref_counts.tolist()


@pytest.mark.parametrize(("model", "frame"), SCALES)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_random_logits(
    model: tuple[int, int], frame: tuple[int, int], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """White noise: a class boundary in almost every cell, many classes close (the hardest case
    for the boundary method, which it takes here however dense the boundaries)."""
    monkeypatch.setattr(upsample, "DENSE_BOUNDARY", 2.0)
    logits = torch.randn(7, *model, generator=torch.Generator().manual_seed(model[0] * frame[1]))
    check(logits, *frame, backend)


def test_dense_boundaries_take_the_direct_way() -> None:
    logits = torch.randn(7, 17, 23, generator=torch.Generator().manual_seed(5))
    check(logits, 100, 211)


@pytest.mark.parametrize(("model", "frame"), SCALES)
def test_smooth_logits_with_few_boundaries(model: tuple[int, int], frame: tuple[int, int]) -> None:
    """Logits with regions several cells wide, as a trained model's are (the interior shortcut does most)."""
    coarse = torch.randn(
        1, 11, max(1, model[0] // 4), max(1, model[1] // 4), generator=torch.Generator().manual_seed(3)
    )
    logits = 4 * F.interpolate(coarse, size=model, mode="bilinear", align_corners=False)[0]
    check(logits, *frame)


@pytest.fixture(scope="module")
def unet_logits() -> torch.Tensor:
    """A UNet's logits on a street frame at 64x128: large flat areas where its head outputs the
    bias alone (exact ties between classes, which go to the lowest class as with torch.argmax)."""
    torch.manual_seed(0)
    art = init_artifact("unet", TINY_ENCODER, CAMVID, name="t", height=64, width=128)
    rgb, _ = street_frame(np.random.default_rng(0), 240, 320)
    x = torch.from_numpy(cv2.resize(rgb, (128, 64), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)[None] / 255.0
    with torch.inference_mode():
        return art.model.eval()(x.float())[0]


@pytest.mark.parametrize("frame", [(1024, 2048), (719, 1283), (40, 70)])
def test_a_real_models_logits(unet_logits: torch.Tensor, frame: tuple[int, int]) -> None:
    check(unet_logits, *frame)
    check(unet_logits, *frame, backend="torch")


def test_exact_ties_go_to_the_lowest_class() -> None:
    """Integer logits tie often at every scale: the winner is argmax's, the first of equal maxima."""
    logits = torch.randint(0, 3, (5, 12, 16), generator=torch.Generator().manual_seed(1)).float()
    for frame in [(12, 16), (48, 64), (37, 101)]:
        check(logits, *frame)


def test_batch_helper_matches_frame_by_frame() -> None:
    logits = torch.randn(3, 4, 8, 10, generator=torch.Generator().manual_seed(2))
    masks, counts = masks_from_logits(logits.contiguous(memory_format=torch.channels_last), 33, 47)
    assert masks.shape == (3, 33, 47) and counts.shape == (3, 4)
    for i in range(3):
        ref_mask, ref_counts = reference(logits[i], 33, 47)
        assert (masks[i] == ref_mask).all() and counts[i].tolist() == ref_counts.tolist()
