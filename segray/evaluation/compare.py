"""Several artifacts on the same split: one Markdown table of mIoU, per-class IoU, size, cost, speed.

GFLOPs are counted by torch's own ``FlopCounterMode`` for one frame at the model's input size
(a multiply-add counts as 2 FLOPs; both passes of a flip-averaged artifact). Frames/s is the model
call alone (normalise, forward, logit resize, argmax) over the evaluated split, with the models
evaluated one after another in one process, so the ratios between rows are fairer than the
absolute figures on a shared machine.

Instance models (Mask R-CNN) are compared in their own table: mask AP, AP50 and AP75 (COCO
protocol), counting error, parameters and frames/s, then AP per class
(:mod:`segray.evaluation.instances`). A list mixing semantic and instance models is refused: their
scores measure different things.
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


def model_task(models: list[str]) -> str:
    """The task all ``models`` share; refuses a list that mixes semantic and instance models."""
    from segray.models.artifact import read_info

    tasks = {m: read_info(m).task for m in models}
    if len(set(tasks.values())) > 1:
        listed = ", ".join(f"{m} ({t})" for m, t in tasks.items())
        raise ValueError(
            f"compare: {listed}: semantic and instance models are scored differently (mIoU vs mask AP); "
            "compare each kind on its own"
        )
    return next(iter(tasks.values()))


def _sub(opts: EvalOptions, i: int, m: str) -> str | None:
    return storage.join(opts.output, f"{i + 1}-{m.rstrip('/').rsplit('/', 1)[-1]}") if opts.output else None


def compare(models: list[str], opts: EvalOptions) -> tuple[str, list[dict[str, Any]]]:
    """Evaluate each model (outputs under ``<output>/<n>-<name>/``); returns the Markdown and rows."""
    if len(models) < 1:
        raise ValueError("compare: give at least one model")
    md, rows = COMPARE[model_task(models)](models, opts)
    if opts.output:
        storage.write_bytes(storage.join(opts.output, "comparison.md"), md.encode())
        storage.write_bytes(storage.join(opts.output, "comparison.json"), json.dumps(rows, indent=2).encode())
    return md, rows


def compare_semantic(models: list[str], opts: EvalOptions) -> tuple[str, list[dict[str, Any]]]:
    results: list[tuple[EvalResult, ModelCost]] = []
    for i, m in enumerate(models):
        r = evaluate(replace(opts, model=m, output=_sub(opts, i, m)))
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
    return md, rows


def compare_instances(models: list[str], opts: EvalOptions) -> tuple[str, list[dict[str, Any]]]:
    """Each instance model scored by :func:`segray.evaluation.instances.evaluate_instances`."""
    from segray.evaluation.instances import evaluate_instances, from_eval_options
    from segray.models.artifact import ModelArtifact

    rows = []
    for i, m in enumerate(models):
        r = evaluate_instances(from_eval_options(replace(opts, model=m, output=_sub(opts, i, m))))
        art = ModelArtifact.load(m)
        sc = r.scores
        rows.append(
            {
                "model": r.model,
                "model_id": r.model_id,
                "input": f"{art.preprocessing.height}x{art.preprocessing.width}",
                "backbone": art.model.config["encoder_name"],  # type: ignore[index]
                "ap": sc["ap"],
                "ap50": sc["ap50"],
                "ap75": sc["ap75"],
                "count_mae": sc["count_mae"],
                "exact_count_fraction": sc["exact_count_fraction"],
                "count_score": sc.get("count_score"),
                "params": sum(p.numel() for p in art.model.parameters()),
                "frames_per_s": r.model_frames_per_s,
                "ap_per_class": {name: v["ap"] for name, v in sc["per_class"].items()},
                "frames": sc.get("frames", len(r.frames)),
            }
        )
        del art
    names = list(rows[0]["ap_per_class"])
    for row in rows[1:]:
        if list(row["ap_per_class"]) != names:
            raise ValueError(f"{row['model']}: its classes differ from {rows[0]['model']}'s; compare like with like")
    return instance_markdown(rows, r.data), rows


#: Task name -> how models of that task are compared (:mod:`segray.tasks`).
COMPARE = {"semantic": compare_semantic, "instance": compare_instances}


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


def instance_markdown(rows: list[dict[str, Any]], data: str) -> str:
    lines = [
        f"Evaluated on `{data}` ({rows[0]['frames']} frames). Mask AP in % (COCO protocol: AP over IoU 0.50-0.95, "
        "AP50, AP75); count error: mean absolute difference between true and predicted instances per frame, "
        f"predictions scoring at least {rows[0]['count_score']}.",
        "",
        "| model | backbone | input | mask AP | AP50 | AP75 | count MAE | exact counts | params (M) | frames/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['model_id']}` | {r['backbone']} | {r['input']} | **{_pct(r['ap'])}** | {_pct(r['ap50'])} | "
            f"{_pct(r['ap75'])} | {r['count_mae']:.2f} | {_pct(r['exact_count_fraction'])} | "
            f"{r['params'] / 1e6:.2f} | {r['frames_per_s']:.2f} |"
        )
    lines += ["", "Mask AP per class (%):", ""]
    lines.append("| class | " + " | ".join(f"`{r['model_id']}`" for r in rows) + " |")
    lines.append("| --- |" + " ---: |" * len(rows))
    for name in rows[0]["ap_per_class"]:
        lines.append(f"| {name} | " + " | ".join(_pct(r["ap_per_class"][name]) for r in rows) + " |")
    return "\n".join(lines) + "\n"
