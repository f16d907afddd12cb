"""Masks at a frame's size from model-size logits: segray's exact boundary method against
``F.interpolate`` + ``argmax``, side by side in one run, on the CPU or a GPU.

For each case (model-size logits -> frame size) the two are timed alternately, and their masks
and class counts compared pixel for pixel. Two kinds of logits: smooth ones (regions several
model pixels wide, as a trained model's) and white noise (every cell a boundary: the worst case).
Needs only torch and numpy (no Ray, no segmentation-models-pytorch), so it runs on a bare GPU box:

    python bench/mask_resize.py                    # CPU, one thread
    python bench/mask_resize.py --device cuda      # a GPU
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segray.tiles.upsample import mask_from_logits  # noqa: E402

CASES = [((64, 128), (1024, 2048)), ((128, 256), (1024, 2048)), ((256, 512), (1080, 1920)), ((45, 60), (360, 480))]


def reference(logits: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    up = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    mask = up.argmax(dim=0).to(torch.uint8)
    return mask, torch.bincount(mask.flatten(), minlength=logits.shape[0])


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> tuple[float, Any]:
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync()
    return (time.perf_counter() - t) / repeat * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--classes", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.set_num_threads(1)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "one thread"
    print(f"device {dev} ({name}), {a.classes} classes")
    print("| logits | model -> frame | F.interpolate + argmax, ms | exact boundary, ms | speed-up | pixels differing |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (h, w), (fh, fw) in CASES:
        coarse = torch.randn(1, a.classes, max(1, h // 8), max(1, w // 8), generator=g)
        kinds = {
            "smooth": 4 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0],
            "noise": torch.randn(a.classes, h, w, generator=g),
        }
        for kind, logits in kinds.items():
            x = logits.to(dev)
            ref_ms, (ref_mask, ref_counts) = timed(lambda x=x, fh=fh, fw=fw: reference(x, fh, fw), sync, a.repeat)
            new_ms, (mask, counts) = timed(lambda x=x, fh=fh, fw=fw: mask_from_logits(x, fh, fw), sync, a.repeat)
            differ = int((mask != ref_mask).sum())
            assert counts.tolist() == torch.bincount(mask.flatten(), minlength=a.classes).tolist()
            print(
                f"| {kind} | {h}x{w} -> {fh}x{fw} | {ref_ms:.1f} | {new_ms:.1f} | {ref_ms / new_ms:.1f}x | {differ} |",
                flush=True,
            )
            if differ or counts.tolist() != ref_counts.tolist():
                print(f"  counts differ: {counts.tolist()} vs {ref_counts.tolist()}")


if __name__ == "__main__":
    main()
