"""The segmentation tasks, by name: what the shared training, labelling and evaluation code asks.

A plain dict, as the model registry is. An artifact records its task (``segray.json``); a recipe's
task follows from ``model.arch`` (:data:`segray.models.ARCHITECTURE_TASKS`).
"""

from __future__ import annotations

from segray.tasks.base import Task, TaskPlan, TaskWorker
from segray.tasks.instance import InstanceTask
from segray.tasks.semantic import SemanticTask

TASKS: dict[str, Task] = {t.name: t for t in (SemanticTask(), InstanceTask())}


def task_named(name: str) -> Task:
    """The task an artifact records (``semantic`` or ``instance``)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


def task_of_arch(arch: str) -> Task:
    """The task a recipe's ``model.arch`` trains."""
    from segray.models import task_of

    return task_named(task_of(arch))


__all__ = ["TASKS", "Task", "TaskPlan", "TaskWorker", "task_named", "task_of_arch"]
