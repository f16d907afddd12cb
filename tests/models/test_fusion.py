"""BatchNorm folding for inference: same logits as the original for every architecture, fewer
BatchNorm layers where torch.fx can trace the model, and the original back when it cannot."""

from __future__ import annotations

import pytest
import torch
from helpers.common import TINY_ENCODER
from torch import nn

from segray.models import ARCHITECTURE_TASKS, build_model
from segray.models.fusion import conv_bn_pairs, fold_batchnorm

INPUT = {"pan": 256}
#: segray's own architectures take their own encoders (SegNet narrowed, to stay small).
OWN_ENCODERS: dict[str, tuple[str, dict]] = {
    "fcn": ("resnet50", {}),
    "segnet": ("vgg16_bn", {"width_multiplier": 0.25}),
}


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine terms, as after training (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model.eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


#: BatchNorm folding serves the semantic predictor (the instance predictor runs Mask R-CNN as torchvision builds it).
SEMANTIC = sorted(arch for arch, task in ARCHITECTURE_TASKS.items() if task == "semantic")


@pytest.mark.parametrize("arch", SEMANTIC)
def test_folded_model_gives_the_same_logits(arch: str) -> None:
    encoder, kwargs = OWN_ENCODERS.get(arch, (TINY_ENCODER, {}))
    model = _trained_like(build_model(arch, encoder, 3, **kwargs), 0)
    size = INPUT.get(arch, 64)
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    folded = fold_batchnorm(model, probe)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref, out = model(x), folded(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    if folded is not model:
        assert _batchnorms(folded) < _batchnorms(model)


@pytest.mark.parametrize("arch", ["unet", "pspnet"])
def test_the_two_recipes_architectures_are_folded(arch: str) -> None:
    model = _trained_like(build_model(arch, "resnet18", 11), 3)
    folded = fold_batchnorm(model, torch.randn(1, 3, 64, 96))
    assert folded is not model and _batchnorms(model) > _batchnorms(folded)
    ran: list[nn.Module] = []  # PSPNet keeps encoder stages it never runs (depth 3): those stay as they are
    for m in folded.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_pre_hook(lambda mod, _: ran.append(mod))
    with torch.inference_mode():
        folded(torch.randn(1, 3, 64, 96))
    assert ran == []


class _SkipFromConv(nn.Module):
    """The conv's output feeds the BatchNorm and a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _InPlaceBetween(nn.Module):
    """conv -> in-place ReLU -> BatchNorm: the BatchNorm's input is no longer the conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu_(self.conv(x)))


def test_conv_output_used_twice_is_not_folded(caplog: pytest.LogCaptureFixture) -> None:
    model = _trained_like(_SkipFromConv(), 4)
    with caplog.at_level("INFO", logger="segray.models.fusion"):
        assert fold_batchnorm(model, torch.randn(1, 3, 8, 8)) is model
    assert "folded model differs" in caplog.text


def test_in_place_change_between_conv_and_batchnorm_is_not_a_pair() -> None:
    model = _trained_like(_InPlaceBetween(), 5)
    assert conv_bn_pairs(model, torch.randn(1, 3, 8, 8)) == []
    assert fold_batchnorm(model, torch.randn(1, 3, 8, 8)) is model


def test_probe_failure_keeps_the_original(caplog: pytest.LogCaptureFixture) -> None:
    model = _trained_like(build_model("unet", TINY_ENCODER, 3), 5)
    # A probe the model cannot take (4 channels for an RGB model): folding is skipped, not forced.
    with caplog.at_level("INFO", logger="segray.models.fusion"):
        assert fold_batchnorm(model, torch.randn(1, 4, 64, 64)) is model
    assert "batchnorm folding skipped for Unet: RuntimeError" in caplog.text
