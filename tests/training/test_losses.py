"""What every loss term in ``LOSSES`` promises, checked on each one: it builds from a default recipe
term and a label map, gives a finite scalar with a gradient, ignores the ignore index, scores a good
prediction below a wrong one, and scales with its weight inside ``SegLoss``.

The parameters come from ``LOSSES`` itself, so a new term type is under these checks the moment it
is registered."""

from __future__ import annotations

import pytest
import torch
from helpers.train_data import SHAPES

from segray.labels import CAMVID, LabelMap
from segray.losses import LOSSES, LossTerm, SegLoss

TYPES = sorted(LOSSES)
#: a 3-class map ignoring 255, and CamVid, whose ignore id (11) sits right after its classes
LABEL_MAPS = [SHAPES, CAMVID]


def batch(lm: LabelMap, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, a random target, and where the target is the ignore index."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, lm.num_classes, 8, 8, generator=g)
    target = torch.randint(0, lm.num_classes, (2, 8, 8), generator=g)
    target[:, 4:6, 2:7] = lm.ignore_index
    return logits, target, target == lm.ignore_index


def build(name: str, lm: LabelMap) -> torch.nn.Module:
    return LOSSES[name](LossTerm(type=name), lm)


def test_every_registered_type_is_a_valid_recipe_term() -> None:
    assert TYPES, "LOSSES is empty"
    for name in TYPES:
        LossTerm(type=name).check("loss[0]")  # the recipe accepts what the registry holds
        assert isinstance(build(name, SHAPES), torch.nn.Module)
    with pytest.raises(ValueError, match=r"choose from \["):
        LossTerm(type="no-such-loss").check("loss[0]")


@pytest.mark.parametrize("lm", LABEL_MAPS, ids=lambda lm: lm.name)
@pytest.mark.parametrize("name", TYPES)
def test_finite_scalar_with_a_gradient_that_skips_ignored_pixels(name: str, lm: LabelMap) -> None:
    logits, target, ignored = batch(lm)
    logits.requires_grad_(True)
    loss = build(name, lm)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.permute(0, 2, 3, 1)[~ignored].abs().sum() > 0
    assert (grad.permute(0, 2, 3, 1)[ignored] == 0).all()


@pytest.mark.parametrize("lm", LABEL_MAPS, ids=lambda lm: lm.name)
@pytest.mark.parametrize("name", TYPES)
def test_logits_at_ignored_pixels_do_not_change_the_loss(name: str, lm: LabelMap) -> None:
    logits, target, ignored = batch(lm)
    other = logits.clone()
    other.permute(0, 2, 3, 1)[ignored] = 50 * torch.randn(int(ignored.sum()), lm.num_classes)
    assert not torch.equal(other, logits)
    term = build(name, lm)
    assert torch.allclose(term(other, target), term(logits, target), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", TYPES)
def test_a_near_perfect_prediction_scores_below_a_wrong_one(name: str) -> None:
    _, target, ignored = batch(SHAPES)
    known = target.clone()
    known[ignored] = 0
    onehot = torch.nn.functional.one_hot(known, SHAPES.num_classes).permute(0, 3, 1, 2).float()
    wrong = torch.nn.functional.one_hot((known + 1) % SHAPES.num_classes, SHAPES.num_classes).permute(0, 3, 1, 2)
    term = build(name, SHAPES)
    good, bad = term(10 * onehot, target), term(10 * wrong.float(), target)
    assert good < bad
    assert good < 0.05 < bad


@pytest.mark.parametrize("name", TYPES)
def test_seg_loss_scales_the_term_by_its_weight(name: str) -> None:
    logits, target, _ = batch(SHAPES, seed=1)
    alone = build(name, SHAPES)(logits, target)
    once = SegLoss([LossTerm(type=name)], SHAPES)(logits, target)
    twice = SegLoss([LossTerm(type=name, weight=2.0)], SHAPES)(logits, target)
    assert torch.allclose(once, alone) and torch.allclose(twice, 2 * alone)
    summed = SegLoss([LossTerm(type=name), LossTerm(type=name, weight=0.5)], SHAPES)(logits, target)
    assert torch.allclose(summed, 1.5 * alone)
