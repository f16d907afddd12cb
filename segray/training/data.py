"""Per-worker loading of (image, mask) pairs.

Why per-worker torch loaders rather than Ray Data streaming (``get_dataset_shard``): segmentation
training sets are small (hundreds to tens of thousands of frames), every epoch needs a fresh
shuffle and fresh joint augmentation, and after the first epoch the decoded frames fit in memory.
Each worker reads only its shard (``DistributedSampler``) with its own S3 credentials, caches
decoded frames resized to the model size, and costs no extra processes: on a 2-core machine Ray
Data's executor and helper actors took about 12% of the cores in the labelling job.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segray import storage
from segray.datasets.pairs import Pair
from segray.frames.decode import FrameError, decode_frame
from segray.labels import LabelMap


def read_mask(uri: str, label_map: LabelMap) -> np.ndarray:
    """A class-index PNG -> (H, W) uint8; refuses colour masks and ids the label map does not know."""
    data = storage.read_bytes(uri)
    mask = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"{uri}: mask could not be decoded")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(
            f"{uri}: mask must be single-channel uint8 class indices, got shape {mask.shape} {mask.dtype} "
            "(a colour-coded mask needs converting first)"
        )
    top = int(mask.max())
    if top >= label_map.num_classes and top != label_map.ignore_id:
        bad = sorted({int(v) for v in np.unique(mask)} - set(range(label_map.num_classes)) - {label_map.ignore_id})
        raise ValueError(
            f"{uri}: mask holds class ids {bad} that label map {label_map.name!r} does not have "
            f"(classes 0..{label_map.num_classes - 1}, ignore {label_map.ignore_id})"
        )
    return mask


def read_pair(pair: Pair, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    try:
        image = decode_frame(storage.read_bytes(pair.image))
    except FrameError as e:
        raise ValueError(f"{pair.image}: {e}") from e
    mask = read_mask(pair.mask, label_map)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{pair.mask}: mask is {mask.shape[::-1]} but its frame {pair.image} is {image.shape[1::-1]}")
    return image, mask


def class_fractions(mask: np.ndarray, num_classes: int, height: int, width: int) -> np.ndarray:
    """Each (height, width) pixel's share of every class in its footprint of ``mask``, as uint8
    (255 = all of it), shape (height, width, num_classes). Void and other ignored ids count for no
    class, so a pixel's shares sum to less than 255 where its footprint holds void.

    OpenCV's ``INTER_AREA`` weighs the footprint by area (exactly, also at CamVid's 1.875), one
    class per channel; it takes at most 4 channels per call.
    """
    onehot = (mask[..., None] == np.arange(num_classes, dtype=mask.dtype)).astype(np.uint8) * 255
    if mask.shape == (height, width):
        return onehot
    interp = cv2.INTER_AREA if mask.shape[0] > height and mask.shape[1] > width else cv2.INTER_LINEAR
    parts = [
        cv2.resize(onehot[..., c : c + 4], (width, height), interpolation=interp).reshape(height, width, -1)
        for c in range(0, num_classes, 4)
    ]
    return np.concatenate(parts, axis=2)


class PairDataset(Dataset):
    """Items: ``(image uint8 (3, h, w), mask int64 (h, w))``.

    ``train=True``: frame and mask resized to the model input size, then ``transform`` (joint
    augmentation). ``train=False``: the frame resized to the model input size exactly as labelling
    does, the mask kept at its own size so metrics are computed at full resolution.
    ``soft_targets`` (training only): the mask item is a ``SoftMask``, uint8 (classes, h, w) class
    fractions (:func:`class_fractions`) that the augmentation resizes bilinearly.
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
        soft_targets: bool = False,
    ) -> None:
        if soft_targets and not train:
            raise ValueError("soft_targets is for training: validation scores the full-size masks")
        self.soft_targets = soft_targets
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
            if self.train and not self.soft_targets:
                # NEAREST_EXACT samples each output pixel's centre, as INTER_AREA and the bilinear
                # upsampling of the logits do. Plain INTER_NEAREST takes floor(i * scale): at CamVid's
                # 1.875 the mask sat ~0.44 source pixels up-left of its frame (a perfect model of such
                # masks scores 89.7 val mIoU, pole 58; centred 94.1, pole 75; README "CamVid results").
                mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        if self.soft_targets:  # at any size: already at the model size, the shares are one-hot
            mask = class_fractions(mask, self.label_map.num_classes, h, w)
        if self.cache is not None:
            self.cache[i] = (image, mask)
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image, mask = self._load(i)
        img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        if self.soft_targets:
            from segray.training.augment import SoftMask

            msk: tv_tensors.Mask = SoftMask(torch.from_numpy(mask).permute(2, 0, 1))
        else:
            msk = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        target = msk.as_subclass(torch.Tensor)
        return img.as_subclass(torch.Tensor).contiguous(), target.contiguous() if self.soft_targets else target.long()


def collate_val(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Model-size frames stacked; masks kept as a list (frames may differ in size)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]
