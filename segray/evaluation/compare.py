"""Several artifacts on the same split: one Markdown table of mIoU, per-class IoU, size, cost, speed.

GFLOPs are counted by torch's own ``FlopCounterMode`` for one frame at the model's input size
(a multiply-add counts as 2 FLOPs; both passes of a flip-averaged artifact). Frames/s is the model
call alone (normalise, forward, logit resize, argmax) over the evaluated split, with the models
evaluated one after another in one process, so the ratios between rows are fairer than the
absolute figures on a shared machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from segray import storage
from segray.evaluation.evaluate import EvalOptions, EvalResult, evaluate


@dataclass
class ModelCost:
    params: int
    gflops: float


def model_cost(uri: str) -> ModelCost:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segray.models.artifact import ModelArtifact
    from segray.models.preprocessing import forward

    art = ModelArtifact.load(uri)
    params = sum(p.numel() for p in art.model.parameters())
    x = torch.zeros(1, 3, art.preprocessing.height, art.preprocessing.width)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        forward(art.model, x, art.preprocessing.hflip_average)
    return ModelCost(params, counter.get_total_flops() / 1e9)


def compare(models: list[str], opts: EvalOptions) -> tuple[str, list[dict[str, Any]]]:
    """Evaluate each model (outputs under ``<output>/<n>-<name>/``); returns the Markdown and rows."""
    if len(models) < 1:
        raise ValueError("compare: give at least one model")
    results: list[tuple[EvalResult, ModelCost]] = []
    for i, m in enumerate(models):
        sub = storage.join(opts.output, f"{i + 1}-{m.rstrip('/').rsplit('/', 1)[-1]}") if opts.output else None
        r = evaluate(replace(opts, model=m, output=sub))
        results.append((r, model_cost(m)))
    names = list(results[0][0].scores["iou"])
    for r, _ in results[1:]:
        if list(r.scores["iou"]) != names:
            raise ValueError(f"{r.model}: its classes differ from {results[0][0].model}'s; compare like with like")
    rows = [
        {
            "model": r.model,
            "model_id": r.model_id,
            "input": f"{r.info['input_size'][0]}x{r.info['input_size'][1]}",
            "miou": r.scores["miou"],
            "pixel_accuracy": r.scores["pixel_accuracy"],
            "params": c.params,
            "gflops_per_frame": c.gflops,
            "frames_per_s": r.model_frames_per_s,
            "iou": r.scores["iou"],
        }
        for r, c in results
    ]
    md = to_markdown(rows, results[0][0].data, results[0][0].frames, results[0][0].info.get("device", "?"))
    if opts.output:
        storage.write_bytes(storage.join(opts.output, "comparison.md"), md.encode())
        storage.write_bytes(storage.join(opts.output, "comparison.json"), json.dumps(rows, indent=2).encode())
    return md, rows


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.1f}"  # NaN: the class is absent from the split


def to_markdown(rows: list[dict[str, Any]], data: str, frames: int, device: str) -> str:
    lines = [
        f"Evaluated on `{data}` ({frames} frames, {device}). mIoU and IoU in %, one confusion matrix per model.",
        "",
        "| model | input | mIoU | pixel acc. | params (M) | GFLOPs/frame | frames/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model_id']}` | {r['input']} | **{_pct(r['miou'])}** | {_pct(r['pixel_accuracy'])} | "
            f"{r['params'] / 1e6:.2f} | {r['gflops_per_frame']:.2f} | {r['frames_per_s']:.2f} |"
        )
    lines += ["", "Per-class IoU (%):", ""]
    lines.append("| class | " + " | ".join(f"`{r['model_id']}`" for r in rows) + " |")
    lines.append("| --- |" + " ---: |" * len(rows))
    for name in rows[0]["iou"]:
        lines.append(f"| {name} | " + " | ".join(_pct(r["iou"][name]) for r in rows) + " |")
    return "\n".join(lines) + "\n"
