"""Instance frames for Mask R-CNN training: each frame resized to the model size, its instances
turned into torchvision's targets (boxes, labels, masks).

Frames are resized to ``model.height x model.width`` exactly as labelling resizes them (so the
model's own transform, built with that size, leaves them as they are), and instance masks with
nearest neighbour; an instance that the resize wipes out (a few pixels wide) is left out. Training
augmentation is a horizontal flip and brightness/contrast jitter (the instances' geometry stays
exact; boxes are recomputed from the flipped masks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segray.datasets.instances import InstanceFrame, Instances, read_frame
from segray.recipe import AugmentConfig


def resize_frame(rgb: np.ndarray, inst: Instances, size: tuple[int, int]) -> tuple[np.ndarray, Instances]:
    """Frame and instance masks at ``size`` (height, width); instances left with no pixel dropped."""
    import cv2

    h, w = size
    if rgb.shape[:2] == (h, w):
        return rgb, inst
    img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    masks = np.stack([cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for m in inst.masks])
    masks = masks.astype(bool) if len(inst.masks) else np.zeros((0, h, w), bool)
    keep = masks.reshape(len(masks), -1).any(axis=1)
    return img, Instances(masks[keep], inst.classes[keep], inst.crowd[keep])


def to_target(inst: Instances) -> dict[str, torch.Tensor]:
    """torchvision's training target; crowd regions are left out (Mask R-CNN has no ignore)."""
    from segray.models.maskrcnn import to_model_labels

    keep = ~inst.crowd
    kept = Instances(inst.masks[keep], inst.classes[keep], inst.crowd[keep])
    return {
        "boxes": torch.from_numpy(kept.boxes()).reshape(-1, 4),
        "labels": to_model_labels(torch.from_numpy(kept.classes.astype(np.int64))),
        "masks": torch.from_numpy(kept.masks.astype(np.uint8)),
    }


class InstanceDataset(Dataset):
    """``(image (3, H, W) float 0-1, Instances)`` per frame at the model size; decoded frames kept
    in memory after the first epoch when ``cache``."""

    def __init__(
        self,
        frames: list[InstanceFrame],
        num_classes: int,
        size: tuple[int, int],
        augment: AugmentConfig | None = None,
        cache: bool = True,
    ) -> None:
        self.frames, self.num_classes, self.size, self.augment = frames, num_classes, size, augment
        self.cache: dict[int, tuple[np.ndarray, Instances]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.frames)

    def load(self, i: int) -> tuple[np.ndarray, Instances]:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        item = resize_frame(*read_frame(self.frames[i], self.num_classes), self.size)
        if self.cache is not None:
            self.cache[i] = item
        return item

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Instances]:
        rgb, inst = self.load(i)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255
        a = self.augment
        if a is not None:
            if torch.rand(()) < a.hflip:
                image = image.flip(-1)
                inst = Instances(np.ascontiguousarray(inst.masks[:, :, ::-1]), inst.classes, inst.crowd)
            if a.brightness or a.contrast:
                b = 1 + (2 * torch.rand(()) - 1) * a.brightness
                c = 1 + (2 * torch.rand(()) - 1) * a.contrast
                mean = image.mean()
                image = ((image - mean) * c + mean * b).clamp(0, 1)
        return image, inst


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[Instances]]:
    return [b[0] for b in batch], [b[1] for b in batch]
