"""The loss as a list of weighted terms, each type a class in the ``LOSSES`` registry.

A recipe's ``loss:`` names the terms, MMSegmentation-style::

    loss:
      - {type: ce, class_weights: [0.51, 0.43, ...]}   # cross-entropy, optionally class-weighted
      - {type: dice, weight: 0.5}                      # smp's multiclass Dice

Every term ignores the label map's ignore index (its ignore id, else 255, what augmentation pads
with). Adding a type is one class here and one registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segray.labels import LabelMap

#: ``loss[i].class_weights: auto``: computed from the training masks (``resolve_auto_weights``).
AUTO = "auto"


@dataclass
class LossTerm:
    """One weighted term of the loss (``LOSSES`` names the types)."""

    type: str = "ce"
    weight: float = 1.0
    #: ``ce`` only: one weight per class (the label map's order); ``auto``: SegNet's median-frequency
    #: weights computed from the training masks when the run starts (and saved in recipe.yaml); or null.
    class_weights: list[float] | str | None = None

    def check(self, key: str) -> None:
        if self.type not in LOSSES:
            raise ValueError(f"{key}.type {self.type!r}: choose from {sorted(LOSSES)}")
        if not self.weight > 0:
            raise ValueError(f"{key}.weight must be > 0, got {self.weight}")
        if self.class_weights is not None:
            if self.type != "ce":
                raise ValueError(f"{key}.class_weights: only a ce term takes class weights")
            if isinstance(self.class_weights, str):
                if self.class_weights != AUTO:
                    raise ValueError(
                        f"{key}.class_weights {self.class_weights!r}: give a list (one weight per class), auto, or null"
                    )
                return
            if (
                not isinstance(self.class_weights, list)
                or not self.class_weights
                or any(isinstance(w, bool) or not w > 0 for w in self.class_weights)
            ):
                raise ValueError(f"{key}.class_weights: give one positive weight per class, or null")


class CrossEntropy(nn.Module):
    weight: torch.Tensor | None  # a buffer: follows the module to its device

    def __init__(self, term: LossTerm, label_map: LabelMap) -> None:
        super().__init__()
        self.ignore = label_map.ignore_index
        w = term.class_weights
        self.register_buffer("weight", torch.tensor(w, dtype=torch.float32) if w else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, ignore_index=self.ignore)


class Dice(nn.Module):
    def __init__(self, term: LossTerm, label_map: LabelMap) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss("multiclass", ignore_index=label_map.ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target)


#: Loss term type (``loss[i].type``) -> its module, built from the term and the label map.
LOSSES: dict[str, type[nn.Module]] = {"ce": CrossEntropy, "dice": Dice}


class SegLoss(nn.Module):
    """The weighted sum of the recipe's terms, computed on float32 logits (once, under AMP too)."""

    def __init__(self, terms: list[LossTerm], label_map: LabelMap) -> None:
        super().__init__()
        self.terms = nn.ModuleList([LOSSES[t.type](t, label_map) for t in terms])
        self.weights = [float(t.weight) for t in terms]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        total = self.weights[0] * self.terms[0](logits, target)
        for w, term in zip(self.weights[1:], self.terms[1:], strict=True):
            total = total + w * term(logits, target)
        return total
