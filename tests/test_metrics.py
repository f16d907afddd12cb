"""Confusion-matrix metrics against figures computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segray.metrics import confusion_matrix, scores

IGNORE = 255
# 3 classes; 2x6 pixels; the two 255s must not count anywhere.
GT = np.array([[0, 0, 1, 1, 2, 255], [0, 1, 1, 2, 2, 255]], dtype=np.uint8)
PR = np.array([[0, 1, 1, 1, 2, 0], [0, 1, 0, 2, 1, 2]], dtype=np.uint8)


def test_hand_computed_example() -> None:
    cm = confusion_matrix(PR, GT, 3)
    # rows = ground truth, columns = prediction; 10 non-ignored pixels.
    assert cm.tolist() == [[2, 1, 0], [1, 3, 0], [0, 1, 2]]
    s = scores(cm, ["a", "b", "c"])
    # IoU = TP / (GT + PR - TP): a 2/(3+3-2), b 3/(4+5-3), c 2/(3+2-2)
    assert s["iou"] == pytest.approx({"a": 2 / 4, "b": 3 / 6, "c": 2 / 3})
    assert s["miou"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert s["pixel_accuracy"] == pytest.approx(7 / 10)
    assert s["pixels"] == 10
    # Dice = 2 TP / (GT + PR)
    assert s["dice"] == pytest.approx({"a": 4 / 6, "b": 6 / 9, "c": 4 / 5})
    assert s["gt_pixels"] == {"a": 3, "b": 4, "c": 3}


def test_torch_and_numpy_agree_and_sum_over_frames() -> None:
    cm_np = confusion_matrix(PR, GT, 3)
    cm_t = confusion_matrix(torch.from_numpy(PR), torch.from_numpy(GT).long(), 3)
    assert cm_t.tolist() == cm_np.tolist()
    # Two frames: one matrix over the split is the sum of the per-frame matrices.
    both = confusion_matrix(np.stack([PR, PR]), np.stack([GT, GT]), 3)
    assert (both == 2 * cm_np).all()


def test_absent_class_is_left_out_of_the_mean() -> None:
    gt = np.array([0, 0, 1, IGNORE])
    pr = np.array([0, 0, 1, 2])  # class 2 predicted only on an ignored pixel: it never counts
    s = scores(confusion_matrix(pr, gt, 3), ["a", "b", "c"])
    assert math.isnan(s["iou"]["c"])
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_all_ignored_gives_nan_not_an_error() -> None:
    s = scores(confusion_matrix(np.zeros(4), np.full(4, IGNORE), 2))
    assert s["pixels"] == 0 and math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_matrix_counts_every_labelled_pixel_once(c: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, c + 1, n)
    gt[gt == c] = IGNORE
    pred = rng.integers(0, c, n)
    cm = confusion_matrix(pred, gt, c)
    assert cm.sum() == (gt != IGNORE).sum()
    assert cm.sum(axis=1).tolist() == [(gt == k).sum() for k in range(c)]
    perfect = scores(confusion_matrix(np.where(gt == IGNORE, 0, gt), gt, c))
    if (gt != IGNORE).any():
        assert perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
