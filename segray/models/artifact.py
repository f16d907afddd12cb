"""The model artifact: one directory (local or S3) that fully describes a usable model.

Layout::

    config.json        the builder arguments: smp's model config (what ``save_pretrained`` writes),
                       or for non-smp models (torchvision's FCN) the same keys written by segray
    model.safetensors  weights: safetensors only, so loading never unpickles anything
    segray.json        name, task, architecture, label map, preprocessing, weights SHA-256, metrics
    recipe.yaml        the training recipe, when ``segray train`` exported the artifact

The weights checksum is recorded at save time and verified at load time; the model id that stats
rows carry is ``<name>@<first 12 hex of the SHA-256>``, so rows say exactly which weights made them,
with ``+hflip`` after it when the artifact predicts with flip averaging (the same weights, other masks).

``task`` says what the model predicts: ``semantic`` (a class per pixel; the default when absent, as
in artifacts written before the field existed) or ``instance`` (Mask R-CNN, see
:mod:`segray.models.maskrcnn`: objects with a class, score, box and mask; its label map lists the
object classes, background is implicit).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segray import storage
from segray.labels import LabelMap
from segray.models import ARCHITECTURE_TASKS, build_model
from segray.models.maskrcnn import INSTANCE_ARCH
from segray.models.preprocessing import Preprocessing

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "segray.json"
#: The resolved training recipe, beside the weights of an artifact that ``segray train`` exported.
RECIPE = "recipe.yaml"
#: File names that hold pickled weights; an artifact carrying one instead of safetensors is refused.
PICKLE_NAMES = ("pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")
#: What a model predicts: a class per pixel, or objects (instances).
TASKS = ("semantic", "instance")


class ArtifactError(ValueError):
    """The artifact is missing, malformed, or its weights cannot be trusted."""


@dataclass
class ModelArtifact:
    model: nn.Module
    label_map: LabelMap
    preprocessing: Preprocessing
    name: str
    arch: str
    weights_sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Where the encoder's starting weights came from (an smp weights name or a file), if anywhere.
    encoder_weights: str | None = None
    #: ``semantic`` or ``instance`` (see the module docstring).
    task: str = "semantic"

    @property
    def model_id(self) -> str:
        return model_id(self.name, self.weights_sha256, self.preprocessing)

    def save(self, uri: str) -> str:
        """Write the artifact under ``uri``; returns the weights SHA-256."""
        from safetensors.torch import save as st_save

        if self.task not in TASKS:
            raise ArtifactError(f"unknown task {self.task!r}; choose from {list(TASKS)}")
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        weights = st_save(state)
        self.weights_sha256 = hashlib.sha256(weights).hexdigest()
        config = model_config(self.model)
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "arch": self.arch,
            "label_map": self.label_map.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "weights_sha256": self.weights_sha256,
            "metrics": self.metrics,
            "saved_at": datetime.now(timezone.utc).isoformat(),
        }
        if self.encoder_weights:
            meta["encoder_weights"] = self.encoder_weights
        storage.write_bytes(storage.join(uri, WEIGHTS), weights)
        storage.write_bytes(storage.join(uri, CONFIG), config)
        # segray.json last: a directory without it is not an artifact, so a half-written one is
        # never mistaken for a complete one.
        storage.write_bytes(storage.join(uri, META), json.dumps(meta, indent=2).encode())
        return self.weights_sha256

    @classmethod
    def load(cls, uri: str, map_location: str | torch.device = "cpu") -> ModelArtifact:
        from safetensors.torch import load as st_load

        meta = read_json(uri, META)
        config = read_json(uri, CONFIG)
        if not storage.exists(storage.join(uri, WEIGHTS)):
            pickled = [n for n in PICKLE_NAMES if storage.exists(storage.join(uri, n))]
            if pickled:
                raise ArtifactError(
                    f"{uri}: weights are a pickle ({pickled[0]}); segray loads safetensors only and "
                    "never unpickles a model. Convert it with safetensors.torch.save_file."
                )
            raise ArtifactError(f"{uri}: no {WEIGHTS} in the artifact")
        weights = storage.read_bytes(storage.join(uri, WEIGHTS))
        sha = hashlib.sha256(weights).hexdigest()
        expected = meta.get("weights_sha256")
        if expected and sha != expected:
            raise ArtifactError(
                f"{uri}: {WEIGHTS} does not match its recorded checksum "
                f"(expected {expected[:12]}…, got {sha[:12]}…); refusing to load"
            )
        try:
            label_map = LabelMap.from_dict(meta["label_map"], f"{uri}/{META}")
            pre = Preprocessing.from_dict(meta["preprocessing"])
            arch = str(meta["arch"])
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"{uri}/{META}: malformed ({e})") from e
        task = read_task(meta, uri)
        if ARCHITECTURE_TASKS.get(arch) != task:
            raise ArtifactError(f"{uri}: unknown architecture {arch!r} for a {task} model")
        kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
        kwargs.pop("encoder_weights", None)
        try:
            encoder = kwargs.pop("encoder_name")
            classes = kwargs.pop("classes")
        except KeyError as e:
            raise ArtifactError(f"{uri}/{CONFIG}: malformed (no {e})") from e
        if classes != label_map.num_classes:
            raise ArtifactError(
                f"{uri}: model has {classes} output classes but the label map has {label_map.num_classes}"
            )
        in_channels = kwargs.pop("in_channels", 3)  # absent from RGB configs of segray's own models
        if in_channels != pre.channels:
            raise ArtifactError(
                f"{uri}: {CONFIG} builds a model of {in_channels} input channels but {META}'s preprocessing "
                f"gives it {pre.channels}" + (f" (bands {list(pre.bands)})" if pre.bands else " (RGB)")
            )
        try:
            model = build_model(arch, encoder, classes, in_channels=in_channels, **kwargs)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{uri}/{CONFIG}: cannot build {arch} from it ({e})") from e
        try:
            state = st_load(weights)
        except Exception as e:  # noqa: BLE001 - any parse failure means untrusted bytes
            raise ArtifactError(f"{uri}: {WEIGHTS} is not a valid safetensors file ({e})") from e
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{uri}: weights do not fit the model in {CONFIG} ({e})") from e
        model.to(map_location).eval()
        source = meta.get("encoder_weights")
        return cls(
            model,
            label_map,
            pre,
            str(meta.get("name", arch)),
            arch,
            sha,
            dict(meta.get("metrics", {})),
            str(source) if source else None,
            task,
        )


def read_task(meta: dict[str, Any], uri: str) -> str:
    """The artifact's task (``semantic`` when the record has none)."""
    task = str(meta.get("task", "semantic"))
    if task not in TASKS:
        raise ArtifactError(f"{uri}/{META}: unknown task {task!r}; this segray knows {list(TASKS)}")
    return task


def model_config(model: nn.Module) -> bytes:
    """``config.json``: the builder arguments ``ModelArtifact.load`` rebuilds the model from.

    smp models write their own (so the folder stays loadable by ``smp.from_pretrained`` too);
    other models (torchvision's FCN) carry a ``config`` dict with the same keys (``encoder_name``,
    ``classes``, builder kwargs; keys starting with ``_`` are notes, not arguments).
    """
    save_pretrained = getattr(model, "save_pretrained", None)
    if save_pretrained is not None:
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(tmp)
            return Path(tmp, CONFIG).read_bytes()
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or not {"encoder_name", "classes"} <= config.keys():
        raise ArtifactError(f"{type(model).__name__}: neither smp's save_pretrained nor a config dict to save")
    return json.dumps(config, indent=2).encode()


def read_json(uri: str, name: str) -> dict[str, Any]:
    target = storage.join(uri, name)
    if not storage.exists(target):
        if not storage.exists(uri):
            raise ArtifactError(f"{uri}: no such model artifact")
        raise ArtifactError(f"{uri}: not a segray model artifact (no {name})")
    try:
        return dict(json.loads(storage.read_bytes(target)))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{target}: not valid JSON ({e})") from e


def init_artifact(
    arch: str,
    encoder: str,
    label_map: LabelMap,
    *,
    name: str | None = None,
    height: int = 352,
    width: int = 480,
    encoder_weights: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    bands: Sequence[str] = (),
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
) -> ModelArtifact:
    """A new (untrained) artifact; ``encoder_weights`` is a local/S3 safetensors file or a weights
    name smp fetches (``imagenet``, ``ssl``, ...; see :func:`segray.models.encoder_weight_names`).

    ``bands`` makes a band model (one input channel per band, see
    :class:`~segray.models.preprocessing.Preprocessing`); ``band_mean``/``band_std`` are its
    normalisation in the scenes' raw units, mean 0 and std 1 (the raw values) with a warning when
    not given."""
    from segray.models import load_encoder_weights

    if bands and arch == INSTANCE_ARCH:
        raise ArtifactError(f"{arch} takes RGB frames only; bands {list(bands)} need a semantic architecture")
    pre = band_preprocessing(height, width, bands, band_mean, band_std)
    if arch == INSTANCE_ARCH:
        return init_instance_artifact(
            encoder,
            label_map,
            name=name,
            height=height,
            width=width,
            backbone_weights=encoder_weights,
            seed=seed,
            **(model_kwargs or {}),
        )
    torch.manual_seed(seed)
    kwargs = dict(model_kwargs or {})
    if kwargs.setdefault("in_channels", pre.channels) != pre.channels:
        raise ArtifactError(
            f"model argument in_channels={kwargs['in_channels']} contradicts the input: "
            + (f"{pre.channels} bands {list(pre.bands)}" if pre.bands else "RGB frames, 3 channels")
        )
    named = bool(encoder_weights) and is_weights_name(encoder_weights or "")
    if named:
        model = _build_pretrained(arch, encoder, label_map.num_classes, str(encoder_weights), kwargs)
    else:
        model = build_model(arch, encoder, label_map.num_classes, **kwargs)
    if encoder_weights and not named:
        from safetensors.torch import load as st_load

        if not encoder_weights.endswith(".safetensors"):
            raise ArtifactError(
                f"{encoder_weights}: encoder weights must be a .safetensors file (pickled .pth files "
                "are refused); convert it with `segray model convert-weights IN.pth OUT.safetensors`"
            )
        load_encoder_weights(model, st_load(storage.read_bytes(encoder_weights)), encoder_weights)
    model.eval()
    return ModelArtifact(
        model, label_map, pre, name or f"{arch}-{encoder}", arch, encoder_weights=encoder_weights or None
    )


def band_preprocessing(
    height: int,
    width: int,
    bands: Sequence[str] = (),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Preprocessing:
    """The preprocessing of a new model: RGB frames (no ``bands``), or ``bands`` normalised by
    ``mean``/``std`` (raw units; 0 and 1, with a warning, when neither is given)."""
    if not bands:
        if mean is not None or std is not None:
            raise ArtifactError("band mean/std are for a band model: name its bands too")
        return Preprocessing(height=height, width=width)
    if (mean is None) != (std is None):
        raise ArtifactError("give both the bands' mean and their std, or neither")
    unset = mean is None or std is None
    try:
        pre = Preprocessing(
            height=height,
            width=width,
            mean=(0.0,) * len(bands) if mean is None else tuple(mean),
            std=(1.0,) * len(bands) if std is None else tuple(std),
            bands=tuple(bands),
        )
    except ValueError as e:
        raise ArtifactError(str(e)) from e
    if unset:
        warnings.warn(
            f"bands {list(bands)} have no mean/std: the model sees the scenes' raw values (mean 0, std 1). "
            "Give each band's mean and std over your scenes, in their raw units (--band-mean/--band-std)",
            UserWarning,
            stacklevel=3,
        )
    return pre


def init_instance_artifact(
    backbone: str,
    label_map: LabelMap,
    *,
    name: str | None = None,
    height: int = 512,
    width: int = 512,
    backbone_weights: str | None = None,
    detections_per_img: int = 100,
    seed: int = 0,
) -> ModelArtifact:
    """A new (untrained) Mask R-CNN artifact for ``label_map``'s object classes.

    The model works at ``height`` x ``width``: its transform's ``min_size``/``max_size`` are set so
    that a frame already at that size is not resized again (labelling resizes frames to it, as for
    semantic models). ``backbone_weights``: a local or ``s3://`` ``.safetensors`` file.
    """
    from segray.models.maskrcnn import build_instance_model

    if backbone_weights and is_weights_name(backbone_weights):
        raise ArtifactError(
            f"{backbone_weights!r}: Mask R-CNN backbone weights are a local or s3:// .safetensors file, not a "
            "name (nothing is downloaded); convert torchvision's .pth with "
            "`segray model convert-weights IN.pth OUT.safetensors` and pass OUT.safetensors"
        )
    pre = Preprocessing(height=height, width=width)
    torch.manual_seed(seed)
    try:
        model = build_instance_model(
            backbone,
            label_map.num_classes,
            min_size=min(height, width),
            max_size=max(height, width),
            detections_per_img=detections_per_img,
            backbone_weights=backbone_weights,
        )
    except ValueError as e:
        raise ArtifactError(str(e)) from e
    model.eval()
    return ModelArtifact(
        model,
        label_map,
        pre,
        name or f"{INSTANCE_ARCH}-{backbone}",
        INSTANCE_ARCH,
        encoder_weights=backbone_weights or None,
        task="instance",
    )


def is_weights_name(encoder_weights: str) -> bool:
    """A weights name (``imagenet``) rather than a file: no directory part and no file extension."""
    return not any(c in encoder_weights for c in "/\\.")


#: Seconds to wait for the Hugging Face Hub before treating the machine as offline.
HUB_PROBE_TIMEOUT_S = 5.0
#: Socket timeout while building offline, so a URL download (timm's non-Hub weights) cannot hang.
OFFLINE_SOCKET_TIMEOUT_S = 5.0


def _build_pretrained(arch: str, encoder: str, num_classes: int, weights: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build through smp with named encoder weights, failing fast and clearly without a network.

    huggingface_hub retries an unreachable Hub for about 25 s per file before giving up, so the Hub
    is probed once first; when it cannot be reached (or ``HF_HUB_OFFLINE`` is set) the build runs in
    offline mode, which still uses weights already in the local cache.
    """
    from segray.models import check_encoder_weights, encoder_weights_source

    check_encoder_weights(arch, encoder, weights)  # a bad name fails before any network access
    offline = _offline_requested() or not _hub_reachable()
    try:
        with _hub_offline() if offline else nullcontext():
            model = build_model(arch, encoder, num_classes, encoder_weights=weights, **kwargs)
    except _download_errors() as e:
        source = encoder_weights_source(encoder, weights)
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300].rstrip(". ")
        raise ValueError(
            f"the encoder weights {weights!r} for {encoder} could not be downloaded (no network?)"
            + (f" from {source}" if source else "")
            + f": {cause}. To train offline, download them on a machine with a network, convert them with "
            "`segray model convert-weights IN.pth OUT.safetensors`, and pass the file as "
            "`model.encoder_weights: /path/OUT.safetensors` (or `segray model init --encoder-weights "
            "/path/OUT.safetensors`); local or s3://"
        ) from e
    # The weights now live in the model: config.json records no name, so that loading the artifact
    # (segray's or smp.from_pretrained) never downloads; segray.json records where they came from.
    config = getattr(model, "_hub_mixin_config", None)
    if isinstance(config, dict):
        config["encoder_weights"] = None
    return model


def _download_errors() -> tuple[type[BaseException], ...]:
    """What a failed weights download raises: OSError covers urllib's URLError and huggingface_hub's
    LocalEntryNotFoundError and HfHubHTTPError; the HTTP clients' own errors are added when installed."""
    errors: list[type[BaseException]] = [OSError]
    for module, attr in (
        ("huggingface_hub.errors", "OfflineModeIsEnabled"),
        ("httpx2", "HTTPError"),
        ("httpx", "HTTPError"),
        ("requests", "RequestException"),
    ):
        with suppress(ImportError, AttributeError):
            errors.append(getattr(importlib.import_module(module), attr))
    return tuple(errors)


def _offline_requested() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face Hub answers at all (any HTTP status), through the Hub's own client
    (so proxies and ``HF_ENDPOINT`` apply)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to get a response means "not reachable"
        return False
    return True


@contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub's offline mode (cache only, no retries) and a short socket timeout, restored after."""
    from huggingface_hub import constants

    saved_offline, saved_timeout = constants.HF_HUB_OFFLINE, socket.getdefaulttimeout()
    constants.HF_HUB_OFFLINE = True
    socket.setdefaulttimeout(OFFLINE_SOCKET_TIMEOUT_S)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_offline
        socket.setdefaulttimeout(saved_timeout)


@dataclass(frozen=True)
class ArtifactInfo:
    """What the driver needs of an artifact without loading its weights."""

    uri: str
    name: str
    label_map: LabelMap
    preprocessing: Preprocessing
    weights_sha256: str
    #: (height, width) of the frames the model was trained on, when ``segray train`` recorded it.
    train_frame_size: tuple[int, int] | None = None
    #: ``semantic`` or ``instance``.
    task: str = "semantic"

    @property
    def model_id(self) -> str:
        return model_id(self.name, self.weights_sha256, self.preprocessing)


def model_id(name: str, weights_sha256: str, pre: Preprocessing) -> str:
    """What rows and reports name a model by: its weights and how it predicts with them."""
    return f"{name}@{weights_sha256[:12]}" + ("+hflip" if pre.hflip_average else "")


def read_info(uri: str) -> ArtifactInfo:
    meta = read_json(uri, META)
    try:
        return ArtifactInfo(
            uri,
            str(meta["name"]),
            LabelMap.from_dict(meta["label_map"], f"{uri}/{META}"),
            Preprocessing.from_dict(meta["preprocessing"]),
            str(meta["weights_sha256"]),
            _size(meta.get("metrics", {}).get("train_frame_size")),
            read_task(meta, uri),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ArtifactError(f"{uri}/{META}: malformed ({e})") from e


def _size(value: Any) -> tuple[int, int] | None:
    return None if not value else (int(value[0]), int(value[1]))
