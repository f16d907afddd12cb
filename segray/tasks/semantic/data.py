"""Per-worker loading of (image, mask) pairs.

Why per-worker torch loaders rather than Ray Data streaming (``get_dataset_shard``): segmentation
training sets are small (hundreds to tens of thousands of frames), every epoch needs a fresh
shuffle and fresh joint augmentation, and after the first epoch the decoded frames fit in memory.
Each worker reads only its shard (``DistributedSampler``) with its own S3 credentials, caches
decoded frames resized to the model size, and costs no extra processes (Ray Data's executor and
helper actors would take a share of a small machine's cores).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segray.datasets.pairs import Pair, read_pair
from segray.labels import LabelMap


class PairDataset(Dataset):
    """Items: ``(image uint8 (3, h, w), mask int64 (h, w))``.

    ``train=True``: frame and mask resized to the model input size, then ``transform`` (joint
    augmentation). ``train=False``: the frame resized to the model input size exactly as labelling
    does, the mask kept at its own size so metrics are computed at full resolution.
    """

    def __init__(
        self,
        pairs: list[Pair],
        label_map: LabelMap,
        height: int,
        width: int,
        *,
        train: bool,
        transform: Any = None,
        cache: bool = True,
    ) -> None:
        self.pairs = pairs
        self.label_map = label_map
        self.size = (height, width)
        self.train = train
        self.transform = transform
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        image, mask = read_pair(self.pairs[i], self.label_map)
        h, w = self.size
        if image.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if image.shape[0] > h and image.shape[1] > w else cv2.INTER_LINEAR
            image = cv2.resize(image, (w, h), interpolation=interp)
            if self.train:
                # NEAREST_EXACT samples each output pixel's centre, as INTER_AREA and the bilinear
                # upsampling of the logits do; plain INTER_NEAREST takes floor(i * scale), which
                # shifts the mask up and left of its frame at non-integer scales.
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.cache is not None:
            self.cache[i] = (image, mask)
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image, mask = self._load(i)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor).long()


def collate_val(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Model-size frames stacked; masks kept as a list (frames may differ in size)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
