"""Model FLOPs per frame, counted on CPU, and the frames/s a GPU's peak allows at a given utilisation.

Counts the floating-point operations of one forward pass with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions, matrix products, their transposes; a multiply-add counts as 2 FLOPs), for the models
segray labels with, at batch 1, in eval mode. Elementwise work (BatchNorm, ReLU, the bilinear
upsampling) is not counted: it is memory-bound and small next to the convolutions. Nothing runs
on a GPU; the model is built untrained, so nothing is downloaded.

    python bench/model_flops.py                               # the default table
    python bench/model_flops.py --models unet:resnet34:512x1024 --util 0.2 0.4
    python bench/model_flops.py --models segnet:vgg16_bn:192x256:width_multiplier=0.25    # model arguments
    python bench/model_flops.py --models maskrcnn:mobilenet_v3_small_fpn:256x256 --classes 2   # instances

The frames/s columns are an estimate: dense bf16 peak x utilisation / FLOPs per frame, for the
peaks in ``GPUS`` (vendors' datasheets, dense, without sparsity). ``bench/gpu_label.sh`` measures
the real rate on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segray.models import build_model  # noqa: E402

#: Dense bf16 tensor-core peak in TFLOPS (no sparsity), from each vendor's datasheet.
GPUS = {
    # https://www.nvidia.com/en-us/data-center/h100/ : "BFLOAT16 Tensor Core 1,979 teraFLOPS*", *with sparsity
    "H100 SXM": 989.5,
    # https://www.nvidia.com/en-us/data-center/l4/ : "BFLOAT16 Tensor Core 242 teraFLOPS*", *with sparsity
    "L4": 121.0,
    # https://www.nvidia.com/en-us/data-center/products/a10-gpu/ : "BF16 Tensor Core 125 TF | 250 TF*"
    "A10": 125.0,
}

DEFAULT_MODELS = ["unet:resnet34:512x1024", "unet:resnet18:352x480", "pspnet:resnet34:512x1024"]


def gflops_per_frame(
    arch: str, encoder: str, height: int, width: int, classes: int, **kwargs: Any
) -> tuple[float, float]:
    """GFLOPs of one forward pass at batch 1, and the model's parameters in millions. A Mask R-CNN
    (``maskrcnn:<backbone>``) is counted on a random frame: its mask head's share depends on how many
    detections the untrained model makes (at most 100)."""
    if arch == "maskrcnn":
        from segray.models.maskrcnn import build_instance_model

        model = build_instance_model(encoder, classes, min_size=min(height, width), max_size=max(height, width))
        x: Any = [torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))]
    else:
        model = build_model(arch, encoder, classes, **kwargs)
        x = torch.zeros(1, 3, height, width)
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return counter.get_total_flops() / 1e9, params / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=DEFAULT_MODELS, help="arch:encoder:HxW[:key=value]... (registry names)"
    )
    ap.add_argument("--classes", type=int, default=11, help="output classes (CamVid: 11)")
    ap.add_argument("--util", nargs=2, type=float, default=[0.2, 0.4], metavar=("LOW", "HIGH"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    lo, hi = a.util
    print("\n| model | input | parameters | GFLOPs per frame | counted in |")
    print("| --- | --- | ---: | ---: | ---: |")
    rows = []
    for spec in a.models:
        arch, encoder, size, *options = spec.split(":")
        h, w = (int(v) for v in size.split("x"))
        kwargs = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in options)}
        t = time.perf_counter()
        g, params = gflops_per_frame(arch, encoder, h, w, a.classes, **kwargs)
        took = time.perf_counter() - t
        name = " ".join([arch, encoder, *(f"{k}={v}" for k, v in kwargs.items())])
        print(f"| {name} | {h}x{w} | {params:.1f} M | {g:.1f} | {took:.1f} s |")
        rows.append((f"{name} {h}x{w}", g))
    head = " | ".join(f"{name} ({peak:g} TF)" for name, peak in GPUS.items())
    print(f"\nEstimated frames/s per GPU at {lo:.0%}-{hi:.0%} of the dense bf16 peak (FLOPs only):\n")
    print(f"| model | {head} |")
    print("| --- |" + " ---: |" * len(GPUS))
    for name, g in rows:
        cells = " | ".join(
            f"{peak * 1e12 * lo / (g * 1e9):,.0f}-{peak * 1e12 * hi / (g * 1e9):,.0f}" for peak in GPUS.values()
        )
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
