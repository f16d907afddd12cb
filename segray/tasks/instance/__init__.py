"""Instance segmentation: objects with a class, a score and a mask each (Mask R-CNN, ``model.arch: maskrcnn``).

Trains on the canonical instance layout (``segray data convert --format via-instances|coco``,
``data.train``/``data.val`` as ``{split: NAME}``) with Mask R-CNN's own losses, scores validation
by COCO mask AP50, and exports an artifact recorded as ``task: instance``. Trains on Ray only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from segray import storage
from segray.tasks.base import Task, TaskPlan, TaskWorker
from segray.tasks.scoring import own_result

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
    from segray.tasks.scoring import Comparison, EvalData, EvalOptions, EvalPredictor, EvalReport, EvalScorer, Scored


def _split(cfg: TrainConfig, which: str) -> str:
    d = getattr(cfg.data, which)
    if set(d) - {"split", "root"} or "split" not in d:
        raise ValueError(f"data.{which}: instance training reads a split of data.root ({{split: NAME}}), got {d}")
    return str(d["split"])


class InstanceTask(Task):
    name: ClassVar[str] = "instance"
    score_key: ClassVar[str] = "val_mask_ap50"
    score_label: ClassVar[str] = "val mask AP50"
    history_keys: ClassVar[tuple[str, ...]] = (
        "epoch", "train_loss", "val_loss", "val_mask_ap", "val_mask_ap50", "val_exact_count_fraction", "epoch_seconds",
    )  # fmt: skip
    eval_files: ClassVar[tuple[str, ...]] = ("metrics.json", "metrics.parquet", "counts.parquet")
    trains_without_ray: ClassVar[bool] = False
    counts: ClassVar[bool] = True

    def plan(self, cfg: TrainConfig, runner: str) -> TaskPlan:
        from segray.datasets.instances import instance_label_map, list_frames, read_frame
        from segray.models.maskrcnn import INSTANCE_BACKBONES

        if cfg.model.encoder not in INSTANCE_BACKBONES:
            raise ValueError(
                f"model.encoder {cfg.model.encoder!r}: a maskrcnn backbone is one of {sorted(INSTANCE_BACKBONES)}"
            )
        if cfg.model.init_artifact:
            raise ValueError("model.init_artifact: not supported for maskrcnn; start from model.encoder_weights")
        if not cfg.data.root:
            raise ValueError(
                "data.root: give the canonical instance dataset (segray data convert --format coco|via-instances)"
            )
        label_map = instance_label_map(cfg.data.root)
        train = list_frames(cfg.data.root, _split(cfg, "train"))
        val = list_frames(cfg.data.root, _split(cfg, "val"))
        for frames in (train, val):  # one frame of each split decoded here: a foreign layout fails in seconds
            read_frame(frames[0], label_map.num_classes)
        if cfg.model.encoder_weights:
            storage.check_readable(cfg.model.encoder_weights)
        init = f"backbone from {cfg.model.encoder_weights}" if cfg.model.encoder_weights else "from scratch"
        data = {
            "train_data": f"{cfg.data.root} split {_split(cfg, 'train')}",
            "train_pairs": len(train),
            "val_data": f"{cfg.data.root} split {_split(cfg, 'val')}",
            "val_pairs": len(val),
        }
        items = ([(f.image, f.ids, f.meta) for f in train], [(f.image, f.ids, f.meta) for f in val])
        return TaskPlan(label_map, *items, init, data, "frames")

    def _build(self, cfg: TrainConfig, label_map: LabelMap, weights: bool) -> nn.Module:
        from segray.models import build_model

        h, w = cfg.model.height, cfg.model.width  # its transform works at the size labelling resizes to
        return build_model(
            cfg.model.arch,
            cfg.model.encoder,
            label_map.num_classes,
            encoder_weights=cfg.model.encoder_weights if weights else None,
            min_size=min(h, w),
            max_size=max(h, w),
            **cfg.model.kwargs,
        )

    def start_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        return self._build(cfg, label_map, weights=True)

    def build_model(self, cfg: TrainConfig, label_map: LabelMap) -> nn.Module:
        return self._build(cfg, label_map, weights=False)

    def worker(
        self, cfg: TrainConfig, label_map: LabelMap, plan: dict[str, Any], model: nn.Module, rank: int, world: int,
        device: torch.device,
    ) -> TaskWorker:  # fmt: skip
        from segray.tasks.instance.training import InstanceWorker

        return InstanceWorker(cfg, label_map, plan, model, rank, world, device)

    def describe_val(self, m: dict[str, Any]) -> str:
        return (f"val mask AP {m['val_mask_ap']:.4f} AP50 {m['val_mask_ap50']:.4f} AP75 {m['val_mask_ap75']:.4f}, "
                f"exact counts {m['val_exact_count_fraction']:.3f}")  # fmt: skip

    def export(
        self, model: nn.Module, metrics: dict[str, Any], cfg: TrainConfig, label_map: LabelMap, plan: TaskPlan
    ) -> ModelArtifact:
        from segray.models.artifact import ModelArtifact
        from segray.models.preprocessing import Preprocessing

        model.eval()
        m = metrics
        figures = {
            "val_mask_ap": m["val_mask_ap"],
            "val_mask_ap50": m["val_mask_ap50"],
            "val_mask_ap75": m["val_mask_ap75"],
            "val_exact_count_fraction": m["val_exact_count_fraction"],
            "val_count_mae": m["val_count_mae"],
            "val_ap_per_class": {n: m[f"val_ap_{n}"] for n in label_map.names},
        }
        pre = Preprocessing(height=cfg.model.height, width=cfg.model.width)
        return ModelArtifact(
            model, label_map, pre, cfg.name, cfg.model.arch, metrics=figures,
            encoder_weights=cfg.model.encoder_weights, task=self.name,
        )  # fmt: skip

    def predictor(self) -> type:
        from segray.tasks.instance.predict import InstancePredictor

        return InstancePredictor

    def check_label_options(self, model: str, opts: Mapping[str, Any]) -> dict[str, Any]:
        from segray.tasks.instance.predict import DEFAULT_MIN_SCORE

        given = {"--window": opts.get("tile_window") is not None, "--overlap": opts.get("tile_overlap") is not None,
                 "--decode gpu": opts.get("decode") == "gpu"}  # fmt: skip
        unsupported = [flag for flag, on in given.items() if on]
        if unsupported:
            raise ValueError(
                f"{model} is an instance model: {', '.join(unsupported)} apply to semantic models only "
                "(instance models label frames resized to the model input, decoded on CPUs; frames above "
                "--tile-above are recorded as failed)"
            )
        return {"min_score": DEFAULT_MIN_SCORE} if opts.get("min_score") is None else {}

    def predictor_kwargs(self, opts: Mapping[str, Any]) -> dict[str, Any]:
        return {"min_score": opts["min_score"], "tile_above": opts["tile_above"]}

    def labelled_by(self, model_id: str, opts: Mapping[str, Any]) -> str:
        # The threshold changes the masks and counts: rows of two thresholds are two models' rows.
        from segray.tasks.instance.predict import DEFAULT_MIN_SCORE

        score = DEFAULT_MIN_SCORE if opts.get("min_score") is None else opts["min_score"]
        return f"{model_id}+min{score:g}"

    def encode_mask(self, mask: np.ndarray, label_map: LabelMap) -> bytes:
        from segray.outputs.masks import encode_ids_png

        return encode_ids_png(mask)

    def frame_columns(self, batch: Mapping[str, Any], ok: list[int], label_map: LabelMap) -> dict[str, Any]:
        import numpy as np

        numbers = np.asarray(batch["instance_counts"])[ok]
        return {f"count_{name}": numbers[:, c] for c, name in enumerate(label_map.names)}

    def extra_tables(
        self, batch: Mapping[str, Any], ok: list[int], label_map: LabelMap, model_id: str, run_id: str, now: datetime
    ) -> dict[str, pa.Table]:
        from segray.tasks.instance.outputs import instances_table

        table = instances_table(batch, ok, label_map, model_id, run_id, now)
        return {"instances": table} if table.num_rows else {}

    # -- evaluation -----------------------------------------------------------------------------------------
    def eval_data(self, opts: EvalOptions, label_map: LabelMap) -> EvalData:
        from segray.tasks.instance.evaluate import eval_data

        return eval_data(opts, label_map)

    def eval_predictor(self, opts: EvalOptions, info: ArtifactInfo) -> EvalPredictor:
        from segray.tasks.instance.evaluate import InstanceEvalPredictor

        return InstanceEvalPredictor(opts)

    def eval_scorer(self, opts: EvalOptions, info: ArtifactInfo, data: EvalData) -> EvalScorer:
        from segray.tasks.instance.evaluate import InstanceEvalScorer

        return InstanceEvalScorer(opts, info, data)

    def eval_report(self, result: Scored, label_map: LabelMap) -> EvalReport:
        from segray.tasks.instance.evaluate import InstanceEvalResult, report

        return report(own_result(result, InstanceEvalResult), label_map)

    def eval_summary(self, result: Scored) -> list[str]:
        from segray.tasks.instance.evaluate import InstanceEvalResult, summary

        return summary(own_result(result, InstanceEvalResult))

    def compare_row(self, result: Scored) -> dict[str, Any]:
        from segray.tasks.instance.evaluate import InstanceEvalResult, compare_row

        return compare_row(own_result(result, InstanceEvalResult))

    def comparison(self, results: list[Scored], rows: list[dict[str, Any]]) -> Comparison:
        from segray.tasks.instance.evaluate import InstanceEvalResult, comparison

        return comparison(own_result(results[0], InstanceEvalResult), rows[0])
