"""Several artifacts on the same split: one Markdown table of their scores, size, cost and speed.

Each model is evaluated (:func:`segray.evaluation.evaluate.evaluate`, outputs under
``<output>/<n>-<name>/``) one after another in one process, so the ratios between rows are fairer
than the absolute figures on a shared machine. The models' task says what a row holds and which
columns the table has: semantic models get mIoU, pixel accuracy, parameters, GFLOPs per frame
(torch's ``FlopCounterMode`` at the input size) and frames/s of the model call, then IoU per class;
instance models mask AP, AP50 and AP75 (COCO protocol), counting error, parameters and frames/s,
then AP per class. A list mixing tasks is refused: their scores measure different things.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from segray import storage
from segray.evaluation.evaluate import EvalOptions, evaluate
from segray.tasks import task_named
from segray.tasks.scoring import Comparison, ModelCost, model_cost

__all__ = ["ModelCost", "compare", "markdown", "model_cost", "model_task"]


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
    task = task_named(model_task(models))
    results, rows = [], []
    for i, m in enumerate(models):
        r = evaluate(replace(opts, model=m, output=_sub(opts, i, m)))
        results.append(r)
        rows.append(task.compare_row(r))
    table = task.comparison(results, rows)
    names = list(rows[0][table.per_class])
    for row in rows[1:]:
        if list(row[table.per_class]) != names:
            raise ValueError(f"{row['model']}: its classes differ from {rows[0]['model']}'s; compare like with like")
    md = markdown(table, rows)
    if opts.output:
        storage.write_bytes(storage.join(opts.output, "comparison.md"), md.encode())
        storage.write_bytes(storage.join(opts.output, "comparison.json"), json.dumps(rows, indent=2).encode())
    return md, rows


def markdown(table: Comparison, rows: list[dict[str, Any]]) -> str:
    """The first line, a row per model, then the per-class figure as a class x model table (in %)."""
    from segray.tasks.scoring import pct

    lines = [
        table.intro,
        "",
        "| " + " | ".join(c.header for c in table.columns) + " |",
        "| " + " | ".join(c.align for c in table.columns) + " |",
    ]
    lines += ["| " + " | ".join(c.cell(r) for c in table.columns) + " |" for r in rows]
    lines += ["", table.per_class_title, ""]
    lines.append("| class | " + " | ".join(f"`{r['model_id']}`" for r in rows) + " |")
    lines.append("| --- |" + " ---: |" * len(rows))
    for name in rows[0][table.per_class]:
        lines.append(f"| {name} | " + " | ".join(pct(r[table.per_class][name]) for r in rows) + " |")
    return "\n".join(lines) + "\n"
