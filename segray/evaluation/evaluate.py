"""Score one artifact on a labelled split the way its task is scored, as the labelling job would predict.

One loop for every task (:mod:`segray.tasks`): the model's task lists and reads the labelled items,
predicts a batch of frames as labelling does, accumulates its figures (a confusion matrix for
semantic models, COCO mask AP and counts for instance models) and says what its report holds; the
report files and pictures are written here. Runs in one process: a split is hundreds of frames,
and reading overlaps inference through a small thread pool.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from segray import storage
from segray.tasks import Task, task_named
from segray.tasks.scoring import EvalOptions, EvalReport

__all__ = ["EvalOptions", "evaluate", "write_report"]

log = logging.getLogger("segray.evaluate")


def evaluate(opts: EvalOptions) -> Any:  # noqa: ANN401 - the task's own result (a Scored)
    """Predict every item of ``opts.data``, score it with the model's task, write the report if ``opts.output``."""
    from segray.models.artifact import read_info

    info = read_info(opts.model)
    task = task_named(info.task)
    data = task.eval_data(opts, info.label_map)
    if opts.output:
        storage.check_writable(opts.output)
    predictor = task.eval_predictor(opts, info)
    scorer = task.eval_scorer(opts, info, data)
    n = len(data.items)
    show = _overlay_indices(task, n, opts.overlays)
    overlays: list[tuple[str, bytes]] = []
    t0 = time.monotonic()
    model_s = 0.0
    with ThreadPoolExecutor(max_workers=2) as pool:
        batch: list[tuple[int, np.ndarray, Any]] = []
        for i, (frame, truth) in enumerate(pool.map(data.read, data.items)):
            batch.append((i, frame, truth))
            if len(batch) == opts.batch_size or i == n - 1:
                t = time.monotonic()
                preds = predictor.predict([f for _, f, _ in batch], [m for _, _, m in batch])
                model_s += time.monotonic() - t
                for (j, f, m), p in zip(batch, preds, strict=True):
                    scorer.add(j, f, m, p)
                    if j in show:
                        from segray.evaluation.figures import overlay_png

                        overlays.append((data.names[j], overlay_png(f, m, p, info.label_map)))
                batch = []
    result = scorer.result(time.monotonic() - t0, model_s, predictor.details())
    log.info("%s", result.describe())
    if opts.output:
        write_report(opts.output, task.eval_report(result, info.label_map), overlays)
    return result


def _overlay_indices(task: Task, n: int, overlays: int) -> set[int]:
    """Up to ``overlays`` items spread evenly over the split, for tasks that draw frame | truth | prediction."""
    if not task.eval_overlays or n == 0:
        return set()
    return set(np.linspace(0, n - 1, min(overlays, n)).round().astype(int).tolist())


def write_report(output: str, report: EvalReport, overlays: list[tuple[str, bytes]]) -> None:
    """``metrics.json``, the task's Parquet tables, ``confusion.png`` if it has one, ``overlays/<stem>.png``."""
    import io
    import json

    import pyarrow.parquet as pq

    from segray.evaluation.figures import confusion_png

    storage.write_bytes(storage.join(output, "metrics.json"), json.dumps(report.metrics, indent=2).encode())
    for name, table in report.tables.items():
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(storage.join(output, name), buf.getvalue())
    if report.confusion is not None:
        cm, names, title = report.confusion
        storage.write_bytes(storage.join(output, "confusion.png"), confusion_png(cm, names, title))
    for item, png in overlays:
        stem = item.rsplit(".", 1)[0]
        storage.write_bytes(storage.join(output, "overlays", f"{stem}.png"), png)
