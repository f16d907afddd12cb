"""Deep supervision: training-only 1x1 heads on the UNet decoder's intermediate stages.

From scratch on a CPU budget the UNet ends short of training (README: its train mIoU is barely
above val). A loss on the intermediate decoder stages gives them a direct gradient instead of one
that passes through every later stage first (Lee et al. 2015, "Deeply-supervised nets"). The heads
live beside the model, never in it: the checkpoint keeps them in their own file, the export never
sees them, so the artifact and the labelling cost are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: The checkpoint file that holds the heads (beside ``model.safetensors``).
AUX_FILE = "aux_heads.safetensors"


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder stages in forward order (smp's UNet: ``decoder.blocks``), or a ValueError."""
    blocks = getattr(getattr(model, "decoder", None), "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
        raise ValueError(
            f"loss.deep_supervision needs a UNet decoder (decoder.blocks); {type(model).__name__} has none"
        )
    return list(blocks)


class DeepSupervision(nn.Module):
    """Wraps ``model``: ``forward(x)`` returns the model's logits and one logit map per supervised stage.

    ``weights[i]`` belongs to the i-th stage counted back from the output (0: the stage before the
    last), so a short list supervises the stages nearest to the output.
    """

    def __init__(self, model: nn.Module, num_classes: int, weights: list[float], probe_hw: tuple[int, int]) -> None:
        super().__init__()
        blocks = decoder_blocks(model)
        if not 0 < len(weights) < len(blocks):
            raise ValueError(
                f"loss.deep_supervision has {len(weights)} weights; this decoder has {len(blocks) - 1} "
                "stages before its output"
            )
        self.model = model
        # Forward order, deepest first; a plain list, so the blocks are not registered twice.
        self._blocks = blocks[len(blocks) - 1 - len(weights) : len(blocks) - 1]
        self.weights = list(reversed(weights))
        probe = torch.zeros(1, 3, *probe_hw, device=next(model.parameters()).device)
        channels = [int(f.shape[1]) for f in self._features(probe, probe=True)]
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, kernel_size=1) for c in channels)

    def _features(self, x: torch.Tensor, probe: bool = False) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        hooks = [b.register_forward_hook(lambda _m, _i, out: feats.append(out)) for b in self._blocks]
        try:
            if probe:
                was = self.model.training
                self.model.eval()
                with torch.no_grad():
                    self.model(x)
                self.model.train(was)
            else:
                feats.append(self.model(x))
        finally:
            for h in hooks:
                h.remove()
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        *feats, logits = self._features(x)
        return logits, [head(f) for head, f in zip(self.heads, feats, strict=True)]

    def loss(
        self,
        aux: list[torch.Tensor],
        target: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The weighted sum of ``loss_fn`` over the stages' logits, each against the mask shrunk to
        its size (nearest, as nnU-Net does): upsampling the logits instead would cost a full-size loss
        per stage, 10% of a CPU training step with three stages (``bench/train_step.py``)."""
        total = target.new_zeros((), dtype=torch.float32)
        for w, logits in zip(self.weights, aux, strict=True):
            small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest")[:, 0].long()
            total = total + w * loss_fn(logits.float(), small)
        return total
