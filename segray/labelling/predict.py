"""Stage 2 (actor pool): the model, loaded once per actor, labels one batch per call.

GPU when torch sees one (bf16/fp16 autocast, channels-last), CPU otherwise; the device is chosen
from what torch sees, not from what Ray granted, so a fake-GPU or driverless node still works.
Logits are resized back to each frame's own size in horizontal stripes, so a frame's extra memory
is bounded by ``STRIPE_BYTES`` plus its uint8 mask, whatever its size.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segray.models.artifact import ModelArtifact

log = logging.getLogger(__name__)

#: Upper bound on the float32 logits held at full resolution while resizing one frame.
STRIPE_BYTES = 64 * 2**20


def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _argmax_confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, h, w) -> class index and max softmax probability (1 / sum(exp(l - max)))."""
    top, idx = logits.max(dim=0)
    return idx, (logits - top).exp_().sum(dim=0).reciprocal_()


def upsample_argmax(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, float]:
    """(C, h, w) logits -> (height, width) uint8 class mask and mean max-softmax confidence.

    Bilinear resampling (``align_corners=False``). A frame whose full-size logits fit in
    ``STRIPE_BYTES`` is resized in one call; a larger one goes through ``grid_sample`` one stripe
    of rows at a time (the same sampling), so its extra memory stays bounded.
    """
    c = logits.shape[0]
    src = logits.unsqueeze(0).float()
    if c * height * width * 4 <= STRIPE_BYTES:
        full = F.interpolate(src, size=(height, width), mode="bilinear", align_corners=False)[0]
        idx, conf = _argmax_confidence(full)
        return idx.to(torch.uint8).cpu().numpy(), float(conf.mean(dtype=torch.float64))
    dev = logits.device
    mask = torch.empty((height, width), dtype=torch.uint8, device=dev)
    conf_sum = torch.zeros((), dtype=torch.float64, device=dev)
    rows = max(1, STRIPE_BYTES // max(1, c * width * 4))
    xs = (torch.arange(width, device=dev, dtype=torch.float32) * 2 + 1) / width - 1
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        ys = (torch.arange(y0, y1, device=dev, dtype=torch.float32) * 2 + 1) / height - 1
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).unsqueeze(0)
        part = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        idx, conf = _argmax_confidence(part)
        mask[y0:y1] = idx.to(torch.uint8)
        conf_sum += conf.sum(dtype=torch.float64)
    return mask.cpu().numpy(), float(conf_sum) / (height * width)


class Predictor:
    """Ray Data callable class: ``__init__`` loads the artifact once, ``__call__`` labels a batch."""

    def __init__(self, model_uri: str, torch_threads: int = 0, device: str = "auto", amp: bool = True) -> None:
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = pick_device(device)
        art = ModelArtifact.load(model_uri, map_location=self.device)
        self.model = art.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.num_classes = art.label_map.num_classes
        pre = art.preprocessing
        self.mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1) * 255
        cuda = self.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and amp else None
        log.info(
            "predictor pid=%s model=%s device=%s threads=%s amp=%s",
            os.getpid(),
            art.model_id,
            self.device,
            torch.get_num_threads(),
            self.amp_dtype,
        )

    @torch.inference_mode()
    def predict_logits(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 at the model's input size -> (N, C, H, W) float32 logits."""
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().sub_(self.mean).div_(self.std)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                return self.model(x).float()
        return self.model(x)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["uri"])
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        masks = np.empty(n, dtype=object)
        counts = np.zeros((n, self.num_classes), dtype=np.int64)
        confidence = np.full(n, np.nan, dtype=np.float64)
        idx = np.flatnonzero(ok)
        if len(idx):
            logits = self.predict_logits(np.ascontiguousarray(batch["image"][idx]))
            for j, i in enumerate(idx):
                m, c = upsample_argmax(logits[j], int(batch["height"][i]), int(batch["width"][i]))
                masks[i] = m
                counts[i] = np.bincount(m.ravel(), minlength=self.num_classes)[: self.num_classes]
                confidence[i] = c
        for i in np.flatnonzero(~ok):
            masks[i] = np.zeros((1, 1), dtype=np.uint8)
        out = {k: v for k, v in batch.items() if k != "image"}
        out["mask"] = masks
        out["class_pixels"] = counts
        out["mean_confidence"] = confidence
        return out
