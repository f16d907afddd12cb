"""What ``segray evaluate`` and ``compare`` exchange with a task, whichever the task.

The one evaluation loop (:func:`segray.evaluation.evaluate.evaluate`) asks the model's task for the
labelled items (:class:`EvalData`), a predictor of a batch (:class:`EvalPredictor`), the scorer that
accumulates the figures (:class:`EvalScorer`) and the report it writes (:class:`EvalReport`);
``compare`` asks it for a row per model and the table's columns (:class:`Comparison`). The types
live here, below both the tasks and :mod:`segray.evaluation`, so that each side can name them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from segray.datasets.pairs import PairSource


@dataclass
class EvalOptions:
    """One artifact on one labelled split, as ``segray evaluate`` takes it."""

    model: str
    data: PairSource
    output: str | None = None
    labels: str | None = None
    batch_size: int = 8
    overlays: int = 6
    device: str = "auto"
    torch_threads: int = 0


@dataclass
class EvalData:
    """The labelled items a task scores, in order, and how one is read into (frame, truth)."""

    items: Sequence[Any]
    read: Callable[[Any], tuple[np.ndarray, Any]]
    #: Each item's file name (overlay pictures, per-frame rows).
    names: list[str]
    #: The data in words, for reports and messages.
    describe: str


class EvalPredictor(ABC):
    """The artifact loaded to predict frames as scoring needs it: at the size of each frame's truth."""

    @abstractmethod
    def predict(self, frames: list[np.ndarray], truths: list[Any]) -> list[Any]:
        """One prediction per frame of the batch, comparable with its truth."""

    def details(self) -> dict[str, Any]:
        """What the result records of how it predicted (input size, device)."""
        return {}


class Scored(Protocol):
    """What the shared code reads of any task's evaluation result."""

    model: str
    model_id: str
    data: str
    scores: dict[str, Any]

    def to_dict(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


R = TypeVar("R")


def own_result(result: Scored, kind: type[R]) -> R:
    """``result`` as a task's own result type: the shared code hands a task back what its scorer made."""
    if not isinstance(result, kind):
        raise TypeError(f"a {type(result).__name__} is not a {kind.__name__}")
    return result


class EvalScorer(ABC):
    """Accumulates a task's figures over the split, one scored frame at a time."""

    @abstractmethod
    def add(self, index: int, frame: np.ndarray, truth: Any, prediction: Any) -> None:
        """Count one frame (``index`` in :attr:`EvalData.items`)."""

    @abstractmethod
    def result(self, seconds: float, model_seconds: float, details: dict[str, Any]) -> Scored:
        """The figures of the whole split; ``model_seconds`` is the time spent in the predictor, ``details``
        its :meth:`EvalPredictor.details`."""


@dataclass
class EvalReport:
    """The report of one evaluation: ``metrics.json``, Parquet tables by file name, and pictures."""

    metrics: dict[str, Any]
    tables: dict[str, pa.Table] = field(default_factory=dict)
    #: (matrix, class names, title) of a confusion picture (``confusion.png``), if the task has one.
    confusion: tuple[np.ndarray, list[str], str] | None = None


@dataclass
class Column:
    """One column of a comparison's Markdown table."""

    header: str
    #: ``---`` (text) or ``---:`` (figures, right-aligned).
    align: str
    cell: Callable[[dict[str, Any]], str]


@dataclass
class Comparison:
    """A task's comparison table: a first line, a row per model, then a table of a per-class figure."""

    intro: str
    columns: list[Column]
    #: The row key of the per-class figure (a dict class -> value) and the heading of its table.
    per_class: str
    per_class_title: str


def pct(v: float) -> str:
    """A share as a percentage with one decimal; ``n/a`` for NaN (a class absent from the split)."""
    return "n/a" if v != v else f"{100 * v:.1f}"


@dataclass
class ModelCost:
    params: int
    gflops: float


def model_cost(uri: str) -> ModelCost:
    """Parameters, and GFLOPs of one frame at the model's input size (torch's ``FlopCounterMode``: a
    multiply-add counts as 2 FLOPs; both passes of a flip-averaged artifact)."""
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
