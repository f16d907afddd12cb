"""Semantic segmentation: one class per pixel (UNet, PSPNet, SegNet, FCN, every smp architecture).

Trains on image/mask pairs (:mod:`segray.datasets.pairs`), or on chips of GeoTIFF scenes with label
rasters or vector labels (``data.scenes``, :mod:`segray.tasks.semantic.scenes`), with the recipe's loss terms, scores
validation by mIoU, and exports an artifact whose logits the labelling pipeline turns into masks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from segray import storage
from segray.tasks.base import Task, TaskPlan, TaskWorker
from segray.tasks.scoring import own_result

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import torch
    from torch import nn

    from segray.labels import LabelMap
    from segray.models.artifact import ArtifactInfo, ModelArtifact
    from segray.recipe import TrainConfig
    from segray.tasks.scoring import Comparison, EvalData, EvalOptions, EvalPredictor, EvalReport, EvalScorer, Scored


class SemanticTask(Task):
    name: ClassVar[str] = "semantic"
    score_key: ClassVar[str] = "val_miou"
    score_label: ClassVar[str] = "val mIoU"
    history_keys: ClassVar[tuple[str, ...]] = (
        "epoch", "train_loss", "val_loss", "val_miou", "epoch_seconds", "train_height", "train_width",
    )  # fmt: skip
    eval_files: ClassVar[tuple[str, ...]] = ("metrics.json", "metrics.parquet", "confusion.png", "overlays/")
    eval_overlays: ClassVar[bool] = True

    def plan(self, cfg: TrainConfig, runner: str) -> TaskPlan:
        from segray.datasets.pairs import dataset_label_map, list_pairs, read_pair
        from segray.models.artifact import is_weights_name
        from segray.tasks.semantic.init import describe_init
        from segray.tasks.semantic.weights import frame_size, resolve_auto_weights

        if cfg.data.from_scenes:
            return self._plan_scenes(cfg)
        label_map = dataset_label_map(cfg.data.root)
        cfg.check_data(label_map.num_classes, label_map.name)
        train, val = list_pairs(cfg.data.source("train")), list_pairs(cfg.data.source("val"))
        resolve_auto_weights(cfg, label_map, train)
        # One pair of each split decoded here: a colour mask or a foreign label map fails in seconds.
        read_pair(train[0], label_map)
        read_pair(val[0], label_map)
        if cfg.model.encoder_weights and not is_weights_name(cfg.model.encoder_weights):
            storage.check_readable(cfg.model.encoder_weights)
        size = frame_size(train)
        data = {
            "train_data": cfg.data.source("train").describe(),
            "train_pairs": len(train),
            "val_data": cfg.data.source("val").describe(),
            "val_pairs": len(val),
            # labelling resizes frames up to ``tile_above`` times this size rather than windowing them
            "train_frame_size": list(size) if size else None,
        }
        items = ([(p.image, p.mask) for p in train], [(p.image, p.mask) for p in val])
        return TaskPlan(label_map, *items, describe_init(cfg.model, label_map), data, "pairs")

    def _plan_scenes(self, cfg: TrainConfig) -> TaskPlan:
        """Scene training: the label map from the recipe's classes, the band statistics, the chips."""
        from segray.losses import AUTO
        from segray.tasks.semantic.init import describe_init
        from segray.tasks.semantic.scenes import absolutise, resolve_band_stats, scene_items, scene_label_map

        label_map = scene_label_map(cfg)
        cfg.check_data(label_map.num_classes, label_map.name)
        if any(t.class_weights == AUTO for t in cfg.loss):
            raise ValueError("loss class_weights: auto reads image/mask pairs; with data.scenes give the weights")
        if cfg.export.fit_offsets:
            raise ValueError("export.fit_offsets fits on image/mask pairs; with data.scenes set it to false")
        absolutise(cfg.data)
        train, val, data = scene_items(cfg.data, cfg.model.height, cfg.model.width)
        resolve_band_stats(cfg.data, [t[0] for t in train])
        return TaskPlan(label_map, list(train), list(val), describe_init(cfg.model, label_map), data, "scene items")

    def resolve(self, cfg: TrainConfig) -> None:
        from segray.datasets.pairs import dataset_label_map
        from segray.tasks.semantic.weights import resolve_auto_weights

        if not cfg.data.from_scenes:  # scene runs resolve their band statistics when they start
            resolve_auto_weights(cfg, dataset_label_map(cfg.data.root))

    def start_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        from segray.tasks.semantic.init import initial_model

        bands = cfg.data.bands if cfg.data.from_scenes else None
        return initial_model(cfg.model, label_map, seed=cfg.run.seed, bands=bands)

    def build_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        from segray.models import build_model
        from segray.tasks.semantic.init import model_kwargs

        kwargs = model_kwargs(cfg.model)
        if cfg.data.from_scenes:
            kwargs["in_channels"] = len(cfg.data.bands or [])
        return build_model(cfg.model.arch, cfg.model.encoder, label_map.num_classes, **kwargs)

    def worker(
        self, cfg: TrainConfig, label_map: LabelMap, plan: dict[str, Any], model: nn.Module, rank: int, world: int,
        device: torch.device,
    ) -> TaskWorker:  # fmt: skip
        from segray.tasks.semantic.training import SemanticWorker

        return SemanticWorker(cfg, label_map, plan, model, rank, world, device)

    def describe_val(self, m: dict[str, Any]) -> str:
        return f"val loss {m['val_loss']:.4f}, val mIoU {m['val_miou']:.4f}"

    def export(
        self, model: nn.Module, metrics: dict[str, Any], cfg: TrainConfig, label_map: LabelMap, plan: TaskPlan
    ) -> ModelArtifact:
        from segray.datasets.pairs import Pair
        from segray.tasks.semantic.export import export_model

        pairs = ([], []) if cfg.data.from_scenes else ([Pair(*p) for p in plan.train], [Pair(*p) for p in plan.val])
        return export_model(model, metrics, cfg, label_map, pairs)

    def predictor(self) -> type:
        from segray.tasks.semantic.predict import Predictor

        return Predictor

    def check_label_options(self, model: str, opts: Mapping[str, Any]) -> dict[str, Any]:
        if opts.get("min_score") is not None:
            raise ValueError(f"--min-score applies to instance models; {model} is a {self.name} model")
        return {}

    def predictor_kwargs(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "tile_window": opts["tile_window"],
            "tile_overlap": opts["tile_overlap"],
            "tile_batch_size": opts["batch_size"],
            "max_pixels": opts["max_pixels"],
            "decode": opts["decode"],
            "write_confidence": opts.get("write_confidence", False),
        }

    def encode_mask(self, mask: np.ndarray, label_map: LabelMap) -> bytes:
        from segray.outputs.masks import encode_mask_png

        return encode_mask_png(mask, label_map.palette())

    # -- evaluation -----------------------------------------------------------------------------------------
    def eval_data(self, opts: EvalOptions, label_map: LabelMap) -> EvalData:
        from segray.tasks.semantic.evaluate import eval_data

        return eval_data(opts, label_map)

    def eval_predictor(self, opts: EvalOptions, info: ArtifactInfo) -> EvalPredictor:
        from segray.tasks.semantic.evaluate import SemanticEvalPredictor

        return SemanticEvalPredictor(opts, info)

    def eval_scorer(self, opts: EvalOptions, info: ArtifactInfo, data: EvalData) -> EvalScorer:
        from segray.tasks.semantic.evaluate import SemanticScorer

        return SemanticScorer(opts, info, data)

    def eval_report(self, result: Scored, label_map: LabelMap) -> EvalReport:
        from segray.tasks.semantic.evaluate import SemanticEvalResult, report

        return report(own_result(result, SemanticEvalResult), label_map)

    def eval_summary(self, result: Scored) -> list[str]:
        from segray.tasks.semantic.evaluate import SemanticEvalResult, summary

        return summary(own_result(result, SemanticEvalResult))

    def compare_row(self, result: Scored) -> dict[str, Any]:
        from segray.tasks.semantic.evaluate import SemanticEvalResult, compare_row

        return compare_row(own_result(result, SemanticEvalResult))

    def comparison(self, results: list[Scored], rows: list[dict[str, Any]]) -> Comparison:
        from segray.tasks.semantic.evaluate import SemanticEvalResult, comparison

        return comparison(own_result(results[0], SemanticEvalResult))
