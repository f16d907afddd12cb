"""Training-step speed of one model on this machine, for sizing the CPU recipes.

One process, random tensors (no data loading), the recipe's loss: forward, backward and an AdamW
step. Variants run side by side in one invocation, interleaved round by round, so the figures are
ratios on the same noisy machine rather than absolute numbers from different hours:

    python bench/train_step.py --arch unet --encoder resnet18 --height 192 --width 256 --batch 4 \
        --threads 1 --decoder-channels 128 64 32 16 16 --variants channels_last contiguous

A variant is ``channels_last`` (channels-last model, AdamW's default per-parameter loop),
``contiguous`` (NCHW), ``compile`` (``torch.compile`` of the channels-last model; its compile time
is reported apart), or ``foreach`` / ``fused`` (channels-last with AdamW's multi-tensor or fused
step; the trainer keeps the default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from segray.models import build_model


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y, ignore_index=11)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--decoder-channels", type=int, nargs="*", default=None)
    p.add_argument("--width-multiplier", type=float, default=None, help="segnet's channel scale")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["channels_last", "contiguous"])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kwargs: dict[str, object] = {"decoder_channels": a.decoder_channels} if a.decoder_channels else {}
    if a.width_multiplier is not None:
        kwargs["width_multiplier"] = a.width_multiplier
    x0 = torch.randn(a.batch, 3, a.height, a.width)
    y = torch.randint(0, a.classes, (a.batch, a.height, a.width))
    runs = {}
    for v in a.variants:
        model = build_model(a.arch, a.encoder, a.classes, **kwargs).train()
        x = x0
        if v in ("channels_last", "compile", "foreach", "fused"):
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            x = x0.contiguous(memory_format=torch.channels_last)
        step_impl = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(v, {"foreach": False})
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **step_impl)
        t0 = time.perf_counter()
        if v == "compile":
            model = torch.compile(model)  # type: ignore[assignment]
        for _ in range(2):  # warm-up (and compilation)
            _step(model, opt, x, y)
        print(f"{v}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
        runs[v] = (model, opt, x, [])
    for r in range(a.rounds):
        for v, (model, opt, x, rates) in runs.items():
            t0 = time.perf_counter()
            for _ in range(a.steps):
                _step(model, opt, x, y)
            rates.append(a.steps * a.batch / (time.perf_counter() - t0))
            print(f"round {r + 1} {v}: {rates[-1]:.2f} frames/s", flush=True)
    base = statistics.median(next(iter(runs.values()))[3])
    print(f"\n{a.arch}-{a.encoder} {a.height}x{a.width} batch {a.batch}, {a.threads} thread(s):")
    for v, (_, _, _, rates) in runs.items():
        m = statistics.median(rates)
        print(f"  {v:14s} {m:6.2f} frames/s (median of {len(rates)})  ratio {m / base:.3f}")


if __name__ == "__main__":
    main()
