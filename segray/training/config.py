"""The training recipe: a YAML file plus ``key=value`` overrides, checked before anything starts.

Sections mirror the parts of a run (model, data, augment, optim, loss, run); every unknown key is
an error that names it, because a misspelt key silently falling back to a default wastes a
45-minute run. Overrides use dotted keys and YAML values: ``optim.lr=3e-4 run.num_workers=1``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from segray import storage
from segray.datasets.pairs import PairSource


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    #: Local or s3:// .safetensors file of encoder weights (e.g. ImageNet weights a user downloaded).
    encoder_weights: str | None = None
    #: A segray artifact to fine-tune from; its head is re-initialised when the classes differ.
    init_artifact: str | None = None
    #: Model input size (the artifact's preprocessing): validation, evaluation and labelling resize
    #: frames to it, and training crops are taken from frames resized to it (times the scale jitter).
    height: int = 352
    width: int = 480
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    #: From scratch only: start each residual block's last BatchNorm scale at 0, so every block
    #: begins as the identity and the early steps train a shallow network (Goyal et al. 2017).
    zero_init_residual: bool = False
    #: The exported artifact predicts each frame and its mirror image and averages the logits
    #: (twice the labelling cost). Validation during the run stays single-pass (the best checkpoint
    #: is chosen on it, at half the cost); the export scores the val frames again as the artifact predicts.
    hflip_average: bool = False


@dataclass
class DataConfig:
    root: str | None = None
    #: Label map: built-in name or JSON path/URI; default ``<root>/labels.json``, else CamVid.
    labels: str | None = None
    train: dict[str, Any] = field(default_factory=lambda: {"split": "train"})
    val: dict[str, Any] = field(default_factory=lambda: {"split": "val"})
    #: Keep decoded (and resized) frames in each worker's memory after the first epoch.
    cache: bool = True
    loader_workers: int = 0

    def source(self, which: str) -> PairSource:
        d = dict(getattr(self, which))
        if "split" in d:
            d.setdefault("root", self.root)
        return PairSource.from_dict(d, f"data.{which}")


@dataclass
class AugmentConfig:
    enabled: bool = True
    #: Random rescale of the model-size frame, as a factor range, before the crop.
    scale_min: float = 0.5
    scale_max: float = 2.0
    #: Crop size (default: the model input size); padded with the ignore id where the frame is smaller.
    crop_height: int | None = None
    crop_width: int | None = None
    hflip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.02
    #: Progressive resizing: the first ``small_epochs`` epochs train on frames and crops scaled by
    #: ``small_scale`` (crops rounded down to multiples of 32). From scratch on a CPU budget, the
    #: cheaper early epochs learn the large classes; the full-size epochs after them learn the detail.
    small_epochs: int = 0
    small_scale: float = 0.67
    #: The general form: ``[[epochs, scale], ...]`` stages in order before the full-size epochs,
    #: e.g. ``[[8, 0.5], [6, 0.67]]``. ``small_epochs``/``small_scale`` is the one-stage shorthand.
    progressive: list[list[float]] = field(default_factory=list)

    def stages(self) -> list[tuple[int, float]]:
        """The progressive-resizing stages as (epochs, scale), in training order."""
        if self.progressive:
            return [(int(e), float(s)) for e, s in self.progressive]
        return [(self.small_epochs, self.small_scale)] if self.small_epochs else []

    def scale_at(self, epoch: int) -> float:
        """The scale of 0-based ``epoch``: its stage's, 1.0 once the stages are over."""
        end = 0
        for epochs, scale in self.stages():
            end += epochs
            if epoch < end:
                return scale
        return 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    #: Learning rate of the (pretrained) encoder as a fraction of ``lr``.
    encoder_lr_factor: float = 1.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    schedule: str = "poly"  # poly | cosine
    poly_power: float = 0.9
    min_lr_factor: float = 0.0
    #: Validate, keep and export an exponential moving average of the weights (0: off), updated
    #: after every optimiser step with decay ``min(ema_decay, (1 + n) / (10 + n))`` at update n, so
    #: the from-scratch weights of the first steps are soon forgotten. Training itself is unchanged.
    #: On CamVid's CPU UNet it smooths the curve but ends level with the raw weights once the
    #: schedule anneals to 0 (README). Checkpoints hold both; the average is ``model.safetensors``.
    ema_decay: float = 0.0


@dataclass
class LossConfig:
    dice_weight: float = 0.0
    #: Per-class cross-entropy weights (one per class), or null.
    class_weights: list[float] | None = None
    #: Online hard example mining: cross-entropy only over pixels whose true class has a predicted
    #: probability below this (null: every pixel), and at least ``ohem_min_kept`` of the batch's
    #: labelled pixels (the hardest). Once sky and road are easy, the steps go to thin classes and edges.
    ohem_thresh: float | None = None
    ohem_min_kept: float = 1 / 16
    #: Validation and the exported model subtract this times log(class weight) from the logits
    #: (0: off): weighted cross-entropy over-predicts the up-weighted classes (see logit_adjust.py).
    logit_adjustment: float = 0.0
    #: At export, fit per-class logit offsets on the training frames (on top of the adjustment),
    #: fold them into the exported model and score val with them (see calibrate.py).
    fit_offsets: bool = False
    #: Deep supervision (UNet only): loss weights of training-only 1x1 heads on the decoder stages
    #: before the output, the nearest to the output first, e.g. ``[0.4, 0.4]``; null: off. Each
    #: head is scored by the same loss against the mask shrunk to its size (see deep_supervision.py).
    deep_supervision: list[float] | None = None
    #: Lovasz-softmax (Berman et al. 2018, smp's LovaszLoss): a surrogate of each class's IoU,
    #: added to the cross-entropy with this weight (0: off) from epoch ``lovasz_from_epoch`` on,
    #: over a random ``lovasz_pixels`` fraction of each batch's pixels (its per-class sort is the
    #: cost: ~0.26 s per 4x192x256 batch on 2 cores, a quarter of that at 0.25).
    lovasz_weight: float = 0.0
    lovasz_from_epoch: int = 1
    lovasz_pixels: float = 1.0
    #: Train against each model pixel's class fractions (the share of its footprint in the full-size
    #: mask, void excluded) instead of one class sampled at its centre: shrinking a mask to the model
    #: size drops thin objects at some positions and keeps them at others (see data.py). Cross-entropy
    #: only: Dice, Lovasz, OHEM and deep supervision need one class per pixel. The cache then holds
    #: one byte per class and pixel instead of one per pixel (CamVid at 192x256: 0.54 MB a frame).
    soft_targets: bool = False


@dataclass
class RunConfigSection:
    #: Ray Train storage: a folder or s3:// prefix; the run lives in ``<storage>/<name>``.
    storage: str = "runs"
    epochs: int = 10
    batch_size: int = 8
    val_batch_size: int = 4
    #: Validate every N epochs and always at the last epoch. Epochs in between still checkpoint
    #: (val metrics NaN, so they never rank as best): a lost worker resumes from the latest epoch.
    val_every: int = 1
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    #: torch CPU threads per worker (0: the worker's Ray CPUs, at least 1).
    torch_threads: int = 0
    amp: bool = True
    max_failures: int = 3
    #: Checkpoints kept: the best by val mIoU plus the latest (Ray always keeps the latest).
    keep_checkpoints: int = 2
    #: Stop after this many epochs in this invocation (rerunning continues); null = run to the end.
    max_epochs_this_run: int | None = None
    #: Where the best checkpoint is exported as a model artifact (default ``<storage>/<name>/model``).
    export_to: str | None = None
    seed: int = 0
    log_every: int = 20
    #: Testing aid: rank 0 fails once at the start of this epoch (FailureConfig then restarts the workers).
    inject_failure_at_epoch: int | None = None


@dataclass
class TrainConfig:
    name: str = "segray-train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfigSection = field(default_factory=RunConfigSection)

    @property
    def run_uri(self) -> str:
        return storage.join(self.run.storage, self.name)

    @property
    def export_uri(self) -> str:
        return self.run.export_to or storage.join(self.run_uri, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _build(cls, d, "")

    def validate(self) -> None:
        if self.model.height % 32 or self.model.width % 32:
            raise ValueError(f"model.height/width {self.model.height}x{self.model.width} must be multiples of 32")
        if self.optim.schedule not in ("poly", "cosine"):
            raise ValueError(f"optim.schedule {self.optim.schedule!r}: choose poly or cosine")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay {self.optim.ema_decay!r}: give a decay in [0, 1), e.g. 0.995; 0 is off")
        if min(self.run.epochs, self.run.batch_size, self.run.num_workers, self.run.val_every) < 1:
            raise ValueError("run.epochs, run.batch_size, run.num_workers and run.val_every must be >= 1")
        if not 0 < self.augment.scale_min <= self.augment.scale_max:
            raise ValueError("augment.scale_min must be > 0 and <= augment.scale_max")
        if self.augment.small_epochs < 0 or not 0 < self.augment.small_scale <= 1:
            raise ValueError("augment.small_epochs must be >= 0 and augment.small_scale in (0, 1]")
        if self.augment.progressive:
            if self.augment.small_epochs:
                raise ValueError("give augment.progressive or augment.small_epochs, not both")
            for stage in self.augment.progressive:
                if (
                    not isinstance(stage, (list, tuple))
                    or len(stage) != 2
                    or isinstance(stage[0], bool)
                    or not isinstance(stage[0], int)
                    or stage[0] < 1
                    or not isinstance(stage[1], (int, float))
                    or not 0 < stage[1] <= 1
                ):
                    raise ValueError(
                        f"augment.progressive: stage {stage!r} must be [epochs >= 1, scale in (0, 1]], "
                        "e.g. [[8, 0.5], [6, 0.67]]"
                    )
        if not isinstance(self.model.hflip_average, bool):
            raise ValueError(f"model.hflip_average must be true or false, not {self.model.hflip_average!r}")
        if self.model.zero_init_residual and (self.model.encoder_weights or self.model.init_artifact):
            raise ValueError(
                "model.zero_init_residual is for training from scratch: it would erase the residual "
                "branches of model.encoder_weights / model.init_artifact"
            )
        ohem = (self.loss.ohem_thresh, self.loss.ohem_min_kept)
        if ohem[0] is not None and not (0 < ohem[0] <= 1 and 0 < ohem[1] <= 1):
            raise ValueError("loss.ohem_thresh and loss.ohem_min_kept must be in (0, 1]")
        if self.loss.lovasz_weight < 0 or self.loss.lovasz_from_epoch < 1 or not 0 < self.loss.lovasz_pixels <= 1:
            raise ValueError(
                "loss.lovasz_weight must be >= 0, loss.lovasz_from_epoch >= 1 and loss.lovasz_pixels in (0, 1]"
            )
        if self.loss.logit_adjustment < 0 or (self.loss.logit_adjustment and not self.loss.class_weights):
            raise ValueError("loss.logit_adjustment must be >= 0 and needs loss.class_weights")
        if self.loss.soft_targets:
            hard_only = {
                "loss.dice_weight": self.loss.dice_weight > 0,
                "loss.lovasz_weight": self.loss.lovasz_weight > 0,
                "loss.ohem_thresh": self.loss.ohem_thresh is not None,
                "loss.deep_supervision": bool(self.loss.deep_supervision),
            }
            if on := [k for k, v in hard_only.items() if v]:
                raise ValueError(f"loss.soft_targets is cross-entropy only: turn off {', '.join(on)}")
        ds = self.loss.deep_supervision
        if ds is not None:
            if self.model.arch != "unet":
                raise ValueError(f"loss.deep_supervision needs model.arch unet, not {self.model.arch!r}")
            if (
                not isinstance(ds, list)
                or not ds
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0 for w in ds)
            ):
                raise ValueError(f"loss.deep_supervision {ds!r}: give positive weights, e.g. [0.4, 0.4], or null")
        if self.model.encoder_weights and self.model.init_artifact:
            raise ValueError("give model.encoder_weights or model.init_artifact, not both")
        for which in ("train", "val"):
            self.data.source(which)


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; known: {sorted(fields)}")
    kwargs = {}
    for k, v in d.items():
        sub = fields[k].default_factory if fields[k].default_factory is not dataclasses.MISSING else None
        sub_cls = type(sub()) if sub is not None else None
        if sub_cls is not None and dataclasses.is_dataclass(sub_cls):
            kwargs[k] = _build(sub_cls, v or {}, f"{prefix}{k}.")
        else:
            kwargs[k] = _coerce(v, str(fields[k].type), prefix + k)
    return cls(**kwargs)


def _coerce(v: Any, annotation: str, key: str) -> Any:
    """YAML reads ``3e-4`` as a string and ``1`` as an int: fit numbers to the field's declared type."""
    if v is None or isinstance(v, bool):
        return v
    try:
        if annotation.startswith("float") and isinstance(v, (int, str)):
            return float(v)
        if annotation.startswith("int") and isinstance(v, str):
            return int(v)
    except ValueError as e:
        raise ValueError(f"config key {key}: {v!r} is not a {annotation.split(' ')[0]}") from e
    return v


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=value`` items (YAML values) set into a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value (e.g. optim.lr=3e-4)")
        node = d
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw else None
    return d


def load_config(path: str | None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (local or s3://) plus overrides -> a validated :class:`TrainConfig`."""
    d: dict[str, Any] = {}
    if path:
        try:
            d = yaml.safe_load(storage.read_bytes(path)) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: the config must be a mapping")
    cfg = TrainConfig.from_dict(apply_overrides(d, overrides or []))
    cfg.validate()
    return cfg
