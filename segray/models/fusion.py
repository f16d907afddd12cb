"""Inference-only model rewrite: fold each BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm is a per-channel scale and shift, which the preceding convolution's
weights and bias absorb exactly. Folding removes one full read and write of every activation map
per layer: on CPU that is about 15% of a UNet-ResNet34's time at 352x480 (docs/labelling.md, docs/benchmarks.md).

Which BatchNorm follows which convolution is observed, not assumed: one forward pass of a probe
input records every BatchNorm whose input is, untouched, the output of a Conv2d (torch.fx cannot
trace every smp decoder, e.g. PSPNet's pyramid). The folding itself is torch's
``fuse_conv_bn_eval``, and the folded copy is kept only if it labels the probe as the original
does, so a conv output that also feeds something else simply means no folding.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

#: Largest accepted |folded - original| relative to the original logits' range (float32 rounding).
TOLERANCE = 1e-3


def conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, batchnorm name) for every BatchNorm2d fed directly by a Conv2d during ``probe``."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: dict[int, int] = {}
    produced: dict[int, tuple[nn.Module, torch.Tensor, int]] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def count(m: nn.Module) -> None:
        calls[id(m)] = calls.get(id(m), 0) + 1

    def after_conv(m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        count(m)
        produced[id(out)] = (m, out, out._version)  # the tensor is kept alive, so its id stays unique

    def before_bn(m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        count(m)
        src = produced.get(id(inp[0]))
        if src is not None and src[1] is inp[0] and src[2] == inp[0]._version:  # not changed in place
            pairs.append((src[0], m))

    hooks = []
    for m in model.modules():
        if type(m) is nn.Conv2d:
            hooks.append(m.register_forward_hook(after_conv))
        elif type(m) is nn.BatchNorm2d:
            hooks.append(m.register_forward_pre_hook(before_bn))
    try:
        with torch.no_grad():  # not inference_mode: version counters must count in-place changes
            model(probe)
    finally:
        for h in hooks:
            h.remove()
    # A module called more than once (shared weights) cannot be folded for one of its uses only.
    return [(names[id(c)], names[id(b)]) for c, b in pairs if calls[id(c)] == 1 and calls[id(b)] == 1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module, probe: torch.Tensor) -> nn.Module:
    """An eval-mode copy of ``model`` with Conv+BatchNorm folded, or ``model`` itself when that fails.

    ``probe`` is an input of the shape the model will see, on its device: it finds the pairs, and
    the folded copy is kept only if both models label it alike within :data:`TOLERANCE`.
    """
    model.eval()
    try:
        folded = copy.deepcopy(model)
        pairs = conv_bn_pairs(folded, probe)
        for conv, bn in pairs:
            conv_m, bn_m = folded.get_submodule(conv), folded.get_submodule(bn)
            assert isinstance(conv_m, nn.Conv2d) and isinstance(bn_m, nn.BatchNorm2d)  # what conv_bn_pairs pairs
            _set(folded, conv, fuse_conv_bn_eval(conv_m, bn_m))
            _set(folded, bn, nn.Identity())
        with torch.inference_mode():
            ref, out = model(probe), folded(probe)
    except Exception as e:  # noqa: BLE001 - any failure here just means no folding
        log.info("batchnorm folding skipped for %s: %s: %s", type(model).__name__, type(e).__name__, e)
        return model
    if not pairs:
        return model
    scale = float(ref.abs().max()) + 1.0
    err = float((out - ref).abs().max())
    if out.shape != ref.shape or not err <= TOLERANCE * scale:
        log.warning("batchnorm folding skipped: folded model differs by %.3g (tolerance %.3g)", err, TOLERANCE * scale)
        return model
    log.info("folded %d BatchNorm layers into their convolutions", len(pairs))
    return folded
