"""The training recipe: a YAML file plus ``key=value`` overrides, checked before anything starts.

Sections mirror the parts of a run (model, data, augment, optim, loss, export, run); every unknown
key is an error that names it, because a misspelt key silently falling back to a default wastes a
long run. Overrides use dotted keys and YAML values: ``optim.lr=3e-4 run.num_workers=1``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from segray import storage
from segray.datasets.pairs import PairSource
from segray.losses import LossTerm
from segray.options import close_matches

#: Keys recipes no longer take, each with what takes its place. A recipe that gives one is refused,
#: saying so. Recipes saved with older runs and artifacts (recipe.yaml, segray.json) may hold them:
#: those are only shown (``segray model info``), never parsed back, so they always load.
REMOVED = {
    "model.name": "the artifact takes the run's name (the top-level name key)",
    "data.labels": "the label map is <data.root>/labels.json (segray data convert writes it), else CamVid's",
    "augment.enabled": "turn off each augmentation instead (scale_min/scale_max 1, hflip 0, colour jitter 0)",
    "optim.poly_power": "the poly schedule's power is 0.9",
    "optim.min_lr_factor": "the cosine schedule decays to 0",
    "run.export_to": "the artifact is exported to <run.storage>/<name>/model",
    "run.inject_failure_at_epoch": "the fault drill belongs to the test suite (tests/training/test_train.py)",
}


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    #: Encoder weights: a name segmentation-models-pytorch knows for the encoder (e.g. ``imagenet``,
    #: fetched where there is a network), or a local or s3:// ``.safetensors`` file
    #: (``segray model convert-weights`` makes one from a torchvision/timm ``.pth``). null: from scratch.
    encoder_weights: str | None = None
    #: A segray artifact to fine-tune from; its head is re-initialised when the classes differ.
    init_artifact: str | None = None
    #: Model input size (the artifact's preprocessing): validation, evaluation and labelling resize
    #: frames to it, and training crops are taken from frames resized to it (times the scale jitter).
    height: int = 352
    width: int = 480
    kwargs: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.height % 32 or self.width % 32 or min(self.height, self.width) < 32:
            raise ValueError(f"model.height/width {self.height}x{self.width} must be multiples of 32")
        if self.encoder_weights and self.init_artifact:
            raise ValueError("give model.encoder_weights or model.init_artifact, not both")


@dataclass
class ScenesConfig:
    """GeoTIFF scenes with label rasters or vector labels: training on random chips of the model size."""

    #: GeoTIFF scenes (.tif/.tiff): a file, or a folder or s3:// prefix (searched recursively).
    images: str | None = None
    #: Label rasters matched to the scenes by file name, on the same grid (CRS, transform, size).
    labels: str | None = None
    #: The label rasters' value that means "no label" (ignored); their own nodata is ignored too.
    unlabelled: float = 0.0
    #: Vector labels instead of ``labels``: polygons (GeoPackage, GeoJSON, Shapefile), reprojected to each scene.
    vectors: str | None = None
    #: The polygons' attribute holding the class (its values are the ``classes``' values).
    class_column: str = "label"
    #: Polygons of the areas where the vectors were drawn; pixels outside them are ignored. null: everywhere.
    labelled_areas: str | None = None
    #: The class of labelled pixels that no polygon covers (one of the ``classes``' names); null: ignored.
    background: str | None = None
    #: The label map in class-id order: ``{value, name, color}`` each (``value``: the raster value or the
    #: class column's value; the background class needs none).
    classes: list[dict[str, Any]] = field(default_factory=list)
    #: Random chips of the model input size per training epoch, each with at least one labelled pixel.
    chips_per_epoch: int = 400

    def check(self) -> None:
        if self.images is None:
            for key in ("labels", "vectors", "labelled_areas", "background"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.scenes.{key} is set but data.scenes.images is not: name the scenes")
            return
        if (self.labels is None) == (self.vectors is None):
            raise ValueError("data.scenes: give labels (label rasters) or vectors (polygons), exactly one")
        if self.labels is not None and (self.labelled_areas or self.background):
            raise ValueError("data.scenes.labelled_areas and background are for vector labels (data.scenes.vectors)")
        if self.chips_per_epoch < 1:
            raise ValueError(f"data.scenes.chips_per_epoch must be >= 1, got {self.chips_per_epoch}")
        self._check_classes()

    def _check_classes(self) -> None:
        if not isinstance(self.classes, list) or not self.classes:
            raise ValueError(
                "data.scenes.classes: give the label map, e.g. [{value: 1, name: forest, color: '#2e8b57'}]"
            )
        names = [c.get("name") if isinstance(c, dict) else None for c in self.classes]
        for i, c in enumerate(self.classes):
            if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                raise ValueError(f"data.scenes.classes[{i}] {c!r}: give a mapping with name, value and color")
            unknown = set(c) - {"value", "name", "color"}
            if unknown:
                key = sorted(unknown)[0]
                raise ValueError(f"data.scenes.classes[{i}]: unknown key {key} (known: value, name, color)")
            if "value" not in c and c["name"] != self.background:
                raise ValueError(f"data.scenes.classes[{i}] ({c['name']}): no value")
        values = [c["value"] for c in self.classes if "value" in c]
        if len(set(map(str, values))) != len(values):
            raise ValueError(f"data.scenes.classes: a value is given twice ({values})")
        if self.background is not None and self.background not in names:
            known = ", ".join(map(str, names))
            raise ValueError(f"data.scenes.background {self.background!r} is not a class name ({known})")


@dataclass
class SplitConfig:
    """Which part of the scenes validates (exactly one key): training chips never touch it."""

    #: Pixel rows ``[start, stop)`` of every scene.
    val_rows: list[int] | None = None
    #: A box ``[xmin, ymin, xmax, ymax]`` in the scenes' CRS.
    val_bbox: list[float] | None = None
    #: Polygons of the validation areas (reprojected to each scene).
    val_areas: str | None = None

    def check(self) -> None:
        given = [k for k in ("val_rows", "val_bbox", "val_areas") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"data.split: give exactly one of val_rows, val_bbox, val_areas (got {', '.join(given) or 'none'})"
            )
        rows, box = self.val_rows, self.val_bbox
        if rows is not None and not (
            isinstance(rows, list) and len(rows) == 2 and all(type(v) is int for v in rows) and 0 <= rows[0] < rows[1]
        ):
            raise ValueError(f"data.split.val_rows {rows!r}: give [start, stop), 0 <= start < stop")
        if box is not None and not (
            isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            and box[0] < box[2] and box[1] < box[3]
        ):  # fmt: skip
            raise ValueError(f"data.split.val_bbox {box!r}: give [xmin, ymin, xmax, ymax], xmin < xmax, ymin < ymax")


@dataclass
class DataConfig:
    #: The dataset; its label map is ``<root>/labels.json``, else CamVid's.
    root: str | None = None
    train: dict[str, Any] = field(default_factory=lambda: {"split": "train"})
    val: dict[str, Any] = field(default_factory=lambda: {"split": "val"})
    #: Keep decoded (and resized) frames in each worker's memory after the first epoch.
    cache: bool = True
    loader_workers: int = 0
    #: Scene bands the model takes (band descriptions such as ``B04``, or 1-based indexes); set with
    #: ``scenes``: training on GeoTIFF scenes.
    bands: list[str | int] | None = None
    #: Band normalisation: a JSON file from ``segray data band-stats``, or ``{mean: [...], std: [...]}`` in
    #: the scenes' raw units. null: computed over the training scenes (valid pixels) when the run starts.
    band_stats: str | dict[str, Any] | None = None
    #: GeoTIFF scenes and their labels; ``root``, ``train`` and ``val`` are then not used.
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    #: The spatial split of the scenes into training and validation.
    split: SplitConfig = field(default_factory=SplitConfig)

    @property
    def from_scenes(self) -> bool:
        """Training on GeoTIFF scenes (``data.scenes.images`` set) rather than on image/mask pairs."""
        return self.scenes.images is not None

    def source(self, which: str) -> PairSource:
        d = dict(getattr(self, which))
        if "split" in d:
            d.setdefault("root", self.root)
        return PairSource.from_dict(d, f"data.{which}")

    def check(self) -> None:
        if self.loader_workers < 0:
            raise ValueError(f"data.loader_workers must be >= 0, got {self.loader_workers}")
        self.scenes.check()
        if not self.from_scenes:
            if self.bands is not None or self.band_stats is not None or self.split != SplitConfig():
                raise ValueError("data.bands, data.band_stats and data.split are for scene training: set data.scenes")
            for which in ("train", "val"):
                self.source(which)
            return
        # Scene training reads data.scenes and data.split; data.root, data.train and data.val are not used.
        if self.root is not None:
            raise ValueError("data.root is for image/mask pairs; with data.scenes it is not used: drop it")
        if self.train != {"split": "train"} or self.val != {"split": "val"}:
            raise ValueError("data.train and data.val are for image/mask pairs; with data.scenes, data.split validates")
        if not isinstance(self.bands, list) or not self.bands:
            raise ValueError("data.bands: name the scene bands the model takes, e.g. [B02, B03, B04, B08]")
        self._check_band_stats()
        self.split.check()

    def _check_band_stats(self) -> None:
        stats = self.band_stats
        if stats is None or isinstance(stats, str):
            return
        n = len(self.bands or [])
        if not (isinstance(stats, dict) and all(isinstance(stats.get(k), list) and len(stats[k]) == n
                                                for k in ("mean", "std"))):  # fmt: skip
            raise ValueError(f"data.band_stats: a JSON file, or {{mean: [...], std: [...]}} with {n} values each")


@dataclass
class AugmentConfig:
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
    #: ``small_scale`` (crops rounded down to multiples of 32): cheaper early epochs that learn the
    #: large classes, then full-size epochs that learn the detail.
    small_epochs: int = 0
    small_scale: float = 0.67

    def stages(self) -> list[tuple[int, float]]:
        """The progressive-resizing stages as (epochs, scale), in training order."""
        return [(self.small_epochs, self.small_scale)] if self.small_epochs else []

    def scale_at(self, epoch: int) -> float:
        """The scale of 0-based ``epoch``: the small scale during the small epochs, then 1.0."""
        return self.small_scale if epoch < self.small_epochs else 1.0

    def check(self) -> None:
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("augment.scale_min must be > 0 and <= augment.scale_max")
        for key in ("crop_height", "crop_width"):
            v = getattr(self, key)
            if v is not None and (v < 32 or v % 32):
                raise ValueError(f"augment.{key} {v}: give a multiple of 32 (what every encoder accepts), or null")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"augment.hflip {self.hflip}: a probability in [0, 1]")
        for key in ("brightness", "contrast", "saturation"):
            if getattr(self, key) < 0:
                raise ValueError(f"augment.{key} must be >= 0")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue {self.hue}: must be in [0, 0.5]")
        if self.small_epochs < 0 or not 0 < self.small_scale <= 1:
            raise ValueError("augment.small_epochs must be >= 0 and augment.small_scale in (0, 1]")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    #: Learning rate of the (pretrained) encoder as a fraction of ``lr``.
    encoder_lr_factor: float = 1.0
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    #: ``poly`` (power 0.9) or ``cosine`` (down to 0), after the warm-up.
    schedule: str = "poly"

    def check(self) -> None:
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"optim.schedule {self.schedule!r}: choose poly or cosine")
        if not self.lr > 0 or self.encoder_lr_factor < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("optim.lr must be > 0; optim.encoder_lr_factor, weight_decay and warmup_epochs >= 0")


@dataclass
class ExportConfig:
    """What the export does to the best checkpoint, in this order (each step folds into the head's
    bias, so the artifact format and the labelling cost stay the same)."""

    #: Subtract this times log(class weight of the ce term) from the logits (0: off). Validation
    #: during the run scores the adjusted logits too. See logit_adjust.py.
    logit_adjustment: float = 0.0
    #: Fit per-class logit offsets on the training frames and fold them in (see calibrate.py).
    fit_offsets: bool = False

    def check(self) -> None:
        if self.logit_adjustment < 0:
            raise ValueError(f"export.logit_adjustment must be >= 0, got {self.logit_adjustment}")


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
    seed: int = 0
    log_every: int = 20

    def check(self) -> None:
        if min(self.epochs, self.batch_size, self.val_batch_size, self.num_workers, self.val_every) < 1:
            raise ValueError(
                "run.epochs, run.batch_size, run.val_batch_size, run.num_workers and run.val_every must be >= 1"
            )
        if not self.cpus_per_worker > 0 or self.torch_threads < 0 or self.max_failures < 0:
            raise ValueError("run.cpus_per_worker must be > 0, run.torch_threads and run.max_failures >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError("run.keep_checkpoints must be >= 1")
        if self.max_epochs_this_run is not None and self.max_epochs_this_run < 1:
            raise ValueError("run.max_epochs_this_run must be >= 1, or null")


@dataclass
class TrainConfig:
    name: str = "segray-train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    #: The loss: weighted terms added together, e.g. ``[{type: ce, class_weights: [...]}, {type: dice, weight: 0.5}]``.
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfigSection = field(default_factory=RunConfigSection)

    @property
    def run_uri(self) -> str:
        return storage.join(self.run.storage, self.name)

    @property
    def export_uri(self) -> str:
        """Where the best checkpoint is exported as a model artifact."""
        return storage.join(self.run_uri, "model")

    @property
    def class_weights(self) -> list[float] | None:
        """The ce term's class weights (what the logit adjustment undoes), or None; ``auto`` must
        have been resolved (the driver does it before any worker starts)."""
        w = next((t.class_weights for t in self.loss if t.type == "ce" and t.class_weights), None)
        if isinstance(w, str):
            raise ValueError(f"loss class_weights {w!r} not resolved yet")
        return w

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved recipe (overrides applied, defaults filled in), as saved with the run and the model."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the recipe") -> TrainConfig:
        """A recipe from its dict; an unknown key is an error naming ``source`` and the closest known key."""
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a mapping, got {d!r}")
        check_keys(d, source)
        d = dict(d)
        terms = d.pop("loss", None)
        cfg = _build(cls, d, "")
        if terms is not None:
            if not isinstance(terms, list) or not terms:
                raise ValueError(
                    f"loss: give a list of terms, e.g. [{{type: ce, class_weights: null}}, {{type: dice, weight: 0.5}}]"
                    f", not {terms!r}"
                )
            cfg.loss = [_build(LossTerm, t, f"loss[{i}].") for i, t in enumerate(terms)]
        return cfg

    def validate(self) -> None:
        """Every check that needs only the recipe (the driver also runs :meth:`check_data`)."""
        for section in (self.model, self.data, self.augment, self.optim, self.export, self.run):
            section.check()
        for i, term in enumerate(self.loss):
            term.check(f"loss[{i}]")
        if self.export.logit_adjustment and not any(t.type == "ce" and t.class_weights for t in self.loss):
            raise ValueError("export.logit_adjustment needs class weights on the loss's ce term")

    def check_data(self, num_classes: int, label_map_name: str) -> None:
        """Checks against the data's label map, on the driver before any worker starts."""
        for i, term in enumerate(self.loss):
            if isinstance(term.class_weights, list) and len(term.class_weights) != num_classes:
                raise ValueError(
                    f"loss[{i}].class_weights has {len(term.class_weights)} values, but label map "
                    f"{label_map_name!r} has {num_classes} classes"
                )


#: The type of ``TrainConfig.loss`` in :func:`_section`: a list of :class:`LossTerm`.
_LOSS_LIST = "loss list"


def _section(cls: type, key: str) -> Any:
    """What ``cls.key`` holds when it has keys of its own (a section, or the loss list); None otherwise
    (a value, or a free-form mapping such as ``model.kwargs``)."""
    if cls is TrainConfig and key == "loss":
        return _LOSS_LIST
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    if f.default_factory is dataclasses.MISSING:
        return None
    sub = type(f.default_factory())
    return sub if dataclasses.is_dataclass(sub) else None


def _unknown_key(parts: list[str], i: int, cls: type, source: str) -> ValueError:
    """``parts[i]`` is not a key of ``cls``: the error names the key and ``source`` and suggests the
    closest keys of that section, else the same key in another section, else lists the known keys."""
    known = [f.name for f in dataclasses.fields(cls)]
    key = ".".join(parts[: i + 1])
    if key in REMOVED:
        return ValueError(f"unknown key {key} in {source}: it was removed; {REMOVED[key]}")
    close = close_matches(str(parts[i]), known)
    if not close and cls is not TrainConfig and i == 1:  # optim.crop_height -> augment.crop_height
        sections = [n for n in known_sections() if n != parts[0]]
        close_keys = [f"{n}.{parts[i]}" for n in sections if parts[i] in _keys(n)]
        if close_keys:
            return ValueError(f"unknown key {key} in {source}: did you mean {' or '.join(close_keys)}?")
    if close:
        guesses = [".".join([*parts[:i], c, *parts[i + 1 :]]) for c in close]
        return ValueError(f"unknown key {key} in {source}: did you mean {' or '.join(guesses)}?")
    where = f" in {'.'.join(parts[:i])}" if i else ""
    return ValueError(f"unknown key {key} in {source}; known keys{where}: {', '.join(known)}")


def known_sections() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if _section(TrainConfig, f.name) not in (None, _LOSS_LIST)]


def _keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(_section(TrainConfig, section))]


def check_key(parts: list[str], source: str) -> None:
    """The dotted key ``parts`` (``["model", "encoder"]``, ``["loss", "0", "type"]``) names a recipe
    key, or a key inside a free-form mapping (``model.kwargs.x``); else a ValueError with a suggestion."""
    cls: Any = TrainConfig
    for i, part in enumerate(parts):
        if cls is None:
            return
        if cls is _LOSS_LIST:
            cls = LossTerm if part.isdigit() else None  # apply_overrides reports a bad index
            continue
        if part not in {f.name for f in dataclasses.fields(cls)}:
            raise _unknown_key(parts, i, cls, source)
        cls = _section(cls, part)


def check_keys(d: dict[str, Any], source: str) -> None:
    """Every key of the recipe dict ``d`` is known (see :func:`check_key`)."""

    def walk(node: Any, cls: Any, parts: list[str]) -> None:
        if cls is _LOSS_LIST and isinstance(node, list):
            for i, term in enumerate(node):
                walk(term, LossTerm, [*parts[:-1], f"{parts[-1]}[{i}]"])
        elif cls not in (None, _LOSS_LIST) and isinstance(node, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            for k, v in node.items():
                if k not in names:
                    raise _unknown_key([*parts, str(k)], len(parts), cls, source)
                walk(v, _section(cls, k), [*parts, k])

    walk(d, TrainConfig, [])


def _build(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in d.items():
        sub_cls = _section(cls, k)
        if sub_cls not in (None, _LOSS_LIST):
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
    """``a.b=value`` items (YAML values) set into a nested dict; a number picks a list item
    (``loss.0.class_weights=[...]`` sets the first loss term's weights)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r}: expected key=value (e.g. optim.lr=3e-4)")
        node: Any = d
        parts = key.split(".")
        check_key(parts, f"override {item!r}")
        for p in parts[:-1]:
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ValueError(f"override {item!r}: {p!r} is not an index of a {len(node)}-item list")
                node = node[int(p)]
            else:
                node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        last = parts[-1]
        value = yaml.safe_load(raw) if raw else None
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ValueError(f"override {item!r}: {last!r} is not an index of a {len(node)}-item list")
            node[int(last)] = value
        else:
            node[last] = value
        check_keys(d, f"override {item!r}")  # keys inside the value: loss=[{type: ce, wieght: 2}]
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
    check_keys(d, path or "the recipe")
    d.setdefault("loss", [dataclasses.asdict(LossTerm())])  # so that loss.0.<key>=... has a term to set
    cfg = TrainConfig.from_dict(apply_overrides(d, overrides or []), path or "the recipe")
    cfg.validate()
    return cfg
