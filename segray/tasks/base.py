"""What differs between segmentation tasks, as one interface the shared machinery asks.

The training driver and epoch loop (:mod:`segray.training`), the labelling pipeline and its writer
(:mod:`segray.labelling`), ``evaluate``, ``compare`` and ``model info`` exist once. Each asks the
model's task (:func:`segray.tasks.task_named`) for what a task decides: which data a run reads
and how it is checked, the model and its start, one training step's loss, the validation score
and its metrics, the exported artifact, the predictor that labels frames and the options it
takes. A new task is a new module here that implements :class:`Task`, plus its tests
(docs/architecture.md lists the places it touches).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    import numpy as np
    import pyarrow as pa
    import torch
    from torch import nn

    from segray.labels import LabelMap
    from segray.models.artifact import ArtifactInfo, ModelArtifact
    from segray.recipe import TrainConfig
    from segray.tasks.scoring import (
        Comparison,
        EvalData,
        EvalOptions,
        EvalPredictor,
        EvalReport,
        EvalScorer,
        Scored,
    )


@dataclass
class TaskPlan:
    """What a task's checks resolved on the driver, before any worker starts."""

    label_map: LabelMap
    #: The training and validation items as plain tuples: they travel to Ray workers as they are.
    train: list[tuple[Any, ...]]
    val: list[tuple[Any, ...]]
    #: How the weights start (one line for the log and the artifact).
    init: str
    #: What the artifact records about the data (sources, counts, the frames' typical size).
    data: dict[str, Any] = field(default_factory=dict)
    #: What one item is called in messages: ``pairs`` (image and mask) or ``frames``.
    noun: str = "pairs"


class TaskWorker(ABC):
    """A training worker's task-specific part: its loaders, the loss of a batch, validation."""

    @abstractmethod
    def loader_for(self, epoch: int) -> Any:
        """The training loader of ``epoch`` (0-based), its sampler set to that epoch."""

    @abstractmethod
    def step(self, model: nn.Module, batch: Any, amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, int, str]:
        """(loss, frames in the batch, a detail for the step's log line) of one training batch."""

    @abstractmethod
    def validate(self, model: nn.Module, amp_dtype: torch.dtype | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(val metrics, extras for the checkpoint's state) over the whole val split, summed over workers."""

    @abstractmethod
    def not_validated(self) -> dict[str, Any]:
        """The val metrics of an epoch without validation: NaN, so that it is never kept as the best."""

    def train_metrics(self) -> dict[str, Any]:
        """Extra figures of the last training epoch (e.g. the crops' size)."""
        return {}


class Task(ABC):
    """One segmentation task: semantic (a class per pixel) or instance (objects with masks)."""

    #: The name artifacts record as ``task`` (``segray.json``).
    name: ClassVar[str]
    #: The val metric that ranks checkpoints and picks the exported one (higher is better).
    score_key: ClassVar[str]
    #: The score as messages and the curves' axis name it.
    score_label: ClassVar[str]
    #: What each epoch leaves in the checkpoint's history (curves, summaries, a resumed run's record).
    history_keys: ClassVar[tuple[str, ...]]
    #: Whether ``segray train --no-ray`` (one worker in this process) can run it.
    trains_without_ray: ClassVar[bool] = True

    # -- training -------------------------------------------------------------------------------------------
    @abstractmethod
    def plan(self, cfg: TrainConfig, runner: str) -> TaskPlan:
        """Every check of the recipe and data that can fail, before a worker starts."""

    def resolve(self, cfg: TrainConfig) -> None:  # noqa: B027 - an optional hook: most tasks need nothing
        """Fill in what the recipe leaves to the data (e.g. ``class_weights: auto``), for ``--print-config``."""

    @abstractmethod
    def start_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        """The model a new run starts from (pretrained encoder, or an artifact to fine-tune)."""

    @abstractmethod
    def build_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        """The recipe's architecture with untrained weights, to load a checkpoint into."""

    @abstractmethod
    def worker(
        self, cfg: TrainConfig, label_map: LabelMap, plan: dict[str, Any], model: nn.Module, rank: int, world: int,
        device: torch.device,
    ) -> TaskWorker:  # fmt: skip
        """A worker's loaders, loss and validation; may freeze or re-layout ``model`` in place."""

    @abstractmethod
    def describe_val(self, metrics: dict[str, Any]) -> str:
        """The val part of an epoch's log line."""

    @abstractmethod
    def export(
        self, model: nn.Module, metrics: dict[str, Any], cfg: TrainConfig, label_map: LabelMap, plan: TaskPlan
    ) -> ModelArtifact:
        """The artifact of the best checkpoint (``model`` holds its weights; ``metrics`` its epoch's report)."""

    def score(self, metrics: dict[str, Any]) -> float:
        """The checkpoint's score, or -inf for an epoch without validation (NaN, or None once Ray's record held it)."""
        v = metrics.get(self.score_key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

    # -- labelling ------------------------------------------------------------------------------------------
    @abstractmethod
    def predictor(self) -> type:
        """The Ray Data callable class that labels a batch of frames (``__init__`` loads the artifact once)."""

    @abstractmethod
    def check_label_options(self, model: str, opts: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse labelling options (``LabelOptions`` fields) that do not apply to this task, naming their
        flags; returns the fields this task fills in when they are left unset (recorded as used)."""

    @abstractmethod
    def predictor_kwargs(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        """The predictor's constructor arguments that come from the labelling options."""

    def labelled_by(self, model_id: str, opts: Mapping[str, Any]) -> str:
        """The model id a run's rows carry: the artifact's, unless an option changes what it predicts."""
        return model_id

    # -- outputs --------------------------------------------------------------------------------------------
    #: Whether stats rows carry ``count_<class>`` columns (objects per class).
    counts: ClassVar[bool] = False

    @abstractmethod
    def encode_mask(self, mask: np.ndarray, label_map: LabelMap) -> bytes:
        """A frame's mask file (``masks/<path>.png``)."""

    def frame_columns(self, batch: Mapping[str, Any], ok: list[int], label_map: LabelMap) -> dict[str, Any]:
        """Stats columns of this task beyond the shared ones, for the batch's labelled frames ``ok``."""
        return {}

    def extra_tables(
        self, batch: Mapping[str, Any], ok: list[int], label_map: LabelMap, model_id: str, run_id: str, now: datetime
    ) -> dict[str, pa.Table]:
        """Output tables beside ``stats/`` (folder -> the batch's part), written before its stats part."""
        return {}

    # -- evaluation (segray evaluate, segray compare) -------------------------------------------------------
    #: The files ``segray evaluate`` says it wrote (``overlays/``: a folder of pictures).
    eval_files: ClassVar[tuple[str, ...]]
    #: Whether frame | truth | prediction pictures (``--overlays``) can be drawn: truth and prediction
    #: are class masks.
    eval_overlays: ClassVar[bool] = False

    @abstractmethod
    def eval_data(self, opts: EvalOptions, label_map: LabelMap) -> EvalData:
        """The labelled items of ``opts.data`` to score (image/mask pairs, instance frames), refused when
        their labels are not the model's ``label_map``."""

    @abstractmethod
    def eval_predictor(self, opts: EvalOptions, info: ArtifactInfo) -> EvalPredictor:
        """The artifact loaded to predict a batch of frames for scoring, as labelling predicts them."""

    @abstractmethod
    def eval_scorer(self, opts: EvalOptions, info: ArtifactInfo, data: EvalData) -> EvalScorer:
        """What accumulates the task's figures over ``data`` (a confusion matrix; COCO mask AP and counts)."""

    @abstractmethod
    def eval_report(self, result: Scored, label_map: LabelMap) -> EvalReport:
        """The report files of a result: ``metrics.json``'s content, the Parquet tables and their columns,
        the pictures."""

    @abstractmethod
    def eval_summary(self, result: Scored) -> list[str]:
        """What ``segray evaluate`` prints: a JSON line of the headline figures, then a line per class."""

    @abstractmethod
    def compare_row(self, result: Scored) -> dict[str, Any]:
        """A model's row of ``segray compare`` (``comparison.json``); ``model`` and ``model_id`` included."""

    @abstractmethod
    def comparison(self, results: list[Scored], rows: list[dict[str, Any]]) -> Comparison:
        """The Markdown table's first line and columns for these models' rows."""
