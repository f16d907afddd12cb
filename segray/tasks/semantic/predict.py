"""Stage 2 (actor pool): the model, loaded once per actor, labels one batch per call.

GPU when torch sees one (bf16/fp16 autocast, channels-last), CPU otherwise; the device is chosen
from what torch sees, not from what Ray granted, so a fake-GPU or driverless node still works.
BatchNorm is folded into the convolutions (segray.models.fusion): same outputs, 6-17% less time on CPU.
An artifact whose preprocessing asks for flip averaging gets it here, so every caller (labelling,
tiles, evaluation, comparison) predicts as the artifact's metrics were measured.
Masks are made at each frame's own size from the model-size logits (segray.tiles.upsample): the
argmax of bilinearly resized logits, without resizing them, so a frame costs its uint8 mask and a
few values per pixel on its class boundaries, whatever its size.

Frames the read stage left encoded (larger than the tiling threshold) are decoded here, one at a
time, and labelled in overlapping windows at native resolution, ``batch_size`` windows per model
call, blended band by band (segray.tiles.windows, which states the memory one such frame costs).

Geodata rows (``geo_scene`` set by the read stage) are read here, window by window, from the scene
itself (segray.tiles.scene): the model's bands in the file's dtype, normalised with the model's
per-band statistics; pixels without data become class 255 and count for no class and no area.
With ``write_confidence`` each scene's per-pixel confidence map goes out too (``confidence_map``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segray.frames.decode import DEFAULT_MAX_PIXELS, FrameError
from segray.models.artifact import ModelArtifact
from segray.models.fusion import fold_batchnorm
from segray.models.precision import amp_dtype, pick_device
from segray.models.preprocessing import forward, normalise
from segray.outputs.schema import CONFIDENCE_MAP_COLUMN
from segray.storage import StorageError
from segray.tasks.batch import decode_left_encoded, predicted_batch
from segray.tiles.scene import SCENE_COLUMN, SceneResult, label_scene
from segray.tiles.upsample import masks_from_logits
from segray.tiles.windows import TileSpec, label_tile

log = logging.getLogger(__name__)


#: Confidence is measured on the model-resolution logits at this pixel stride: a frame-level
#: quality signal needs no full-resolution softmax, which costs more than the argmax itself on CPU.
CONFIDENCE_STRIDE = 2


def mean_confidence(logits: torch.Tensor, stride: int = CONFIDENCE_STRIDE) -> np.ndarray:
    """(N, C, h, w) logits -> (N,) mean over sampled pixels of the winning class's softmax probability."""
    sample = logits[:, :, ::stride, ::stride].float().contiguous()
    return sample.softmax(dim=1).amax(dim=1).mean(dim=(1, 2), dtype=torch.float64).cpu().numpy()


def upsample_argmax(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, h, w) logits of same-sized frames -> (N, height, width) uint8 class masks and their
    (N, C) int64 class counts: the argmax of the logits resized bilinearly (``align_corners=False``),
    computed without full-size logits (segray.tiles.upsample), where the logits are; only the
    uint8 masks and the counts reach the host."""
    return masks_from_logits(logits, height, width)


class Predictor:
    """Ray Data callable class: ``__init__`` loads the artifact once, ``__call__`` labels a batch."""

    def __init__(
        self,
        model_uri: str,
        torch_threads: int = 0,
        device: str = "auto",
        amp: bool = True,
        tile_window: tuple[int, int] | None = None,
        tile_overlap: int | None = None,
        tile_batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fold_bn: bool = True,
        decode: str = "cpu",
        write_confidence: bool = False,
    ) -> None:
        self.torch_threads = torch_threads
        self._apply_threads()
        self.device = pick_device(device)
        if decode not in ("cpu", "gpu"):
            raise ValueError(f"decode {decode!r}: choose cpu or gpu")
        if decode == "gpu" and self.device.type != "cuda":
            raise ValueError(
                f"--decode gpu needs a GPU in the inference actor, and this one runs on {self.device}; "
                "use --decode cpu on nodes without GPUs"
            )
        art = ModelArtifact.load(model_uri, map_location=self.device)
        if art.task != "semantic":
            raise ValueError(
                f"{model_uri}: an {art.task} model; this predicts a class per pixel (semantic models). "
                "`segray label` labels instance models too, and `segray evaluate` scores them"
            )
        pre = art.preprocessing
        probe = torch.randn((1, pre.channels, pre.height, pre.width), generator=torch.Generator().manual_seed(0))
        model = fold_batchnorm(art.model.eval(), probe.to(self.device)) if fold_bn else art.model.eval()
        self.model = model.to(memory_format=torch.channels_last)
        self.num_classes = art.label_map.num_classes
        self.hflip_average = pre.hflip_average
        self.mean, self.std = pre.stats(self.device)
        #: The scene bands the model reads, in channel order (an RGB model reads bands 1-3).
        self.bands = pre.bands or ("1", "2", "3")
        self.input_size = (pre.height, pre.width)
        # Windows default to the model's input size (see TileSpec.for_model).
        self.tile_spec = TileSpec.for_model(pre.height, pre.width, tile_window, tile_overlap)
        self.tile_batch_size = tile_batch_size
        self.max_pixels = max_pixels
        #: Scenes also hand over their per-pixel confidence map (segray.tiles.scene).
        self.write_confidence = write_confidence
        self._told_windows = False
        self.amp_dtype = amp_dtype(self.device, amp)
        log.info(
            "predictor pid=%s model=%s device=%s threads=%s amp=%s batchnorm folded=%s flip averaging=%s",
            os.getpid(),
            art.model_id,
            self.device,
            torch.get_num_threads(),
            self.amp_dtype,
            model is not art.model,
            self.hflip_average,
        )

    def _apply_threads(self) -> None:
        # OpenMP's thread count is per calling thread, and Ray Data may call __call__ from another
        # thread than __init__ (which would then run with Ray's OMP_NUM_THREADS=1): set it where
        # the model runs.
        if self.torch_threads > 0 and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    @torch.inference_mode()
    def predict_logits(self, images: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 at the model's input size -> (N, C, H, W) float32 logits."""
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        return self.logits_of(x.permute(0, 3, 1, 2))

    @torch.inference_mode()
    def predict_bands(self, windows: np.ndarray) -> torch.Tensor:
        """(N, h, w, C) scene windows in the file's dtype (uint8, uint16, int16, float32...) -> (N, classes,
        h, w) float32 logits: as float32 on the device, normalised with the model's per-band statistics."""
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)).to(self.device, non_blocking=True)
        return self.logits_of(x.permute(0, 3, 1, 2))

    @torch.inference_mode()
    def logits_of(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) on the device (uint8 frames, or scene bands), at the model's input size -> (N, classes,
        H, W) float32 logits."""
        self._apply_threads()
        x = normalise(x, self.mean, self.std)
        if self.amp_dtype is not None:
            with torch.autocast("cuda", dtype=self.amp_dtype):
                return forward(self.model, x, self.hflip_average).float()
        return forward(self.model, x, self.hflip_average)

    def _decode_on_device(
        self,
        encoded: np.ndarray,
        on_device: np.ndarray,
        errors: np.ndarray,
        stages: np.ndarray,
        orientations: np.ndarray | None = None,
    ) -> torch.Tensor:
        """The rows marked ``on_device`` decoded and resized on the device, in row order; a row that
        fails becomes an error row and is unmarked (``on_device``, ``errors`` and ``stages`` change).
        ``orientations``: the read stage's EXIF orientation per row, so no header is read again."""
        from segray.frames.device_decode import decode_jpegs

        rows = np.flatnonzero(on_device)
        datas = [bytes(encoded[i]) for i in rows]
        turns = None if orientations is None else [int(orientations[i]) for i in rows]
        images, failed = decode_jpegs(datas, self.device, *self.input_size, self.max_pixels, turns)
        for i, f in zip(rows, failed, strict=True):
            if f is not None:
                stages[i], errors[i] = f
                on_device[i] = False
        keep = torch.tensor([f is None for f in failed], device=images.device)
        return images[keep]

    @torch.inference_mode()
    def label_large(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """A frame too large for resizing, labelled window by window at full resolution."""
        result = label_tile(rgb, self.predict_logits, self.tile_spec, self.tile_batch_size)
        return result.mask, result.mean_confidence

    @torch.inference_mode()
    def label_scene(self, uri: str) -> SceneResult:
        """A geodata scene, read and labelled window by window at its own resolution."""
        return label_scene(
            uri,
            self.bands,
            self.predict_bands,
            self.tile_spec,
            self.tile_batch_size,
            self.num_classes,
            write_confidence=self.write_confidence,
        )

    def _label_scenes(self, batch: dict[str, Any], rows: np.ndarray, out: _Outputs) -> None:
        """Labels the geodata ``rows`` of the batch into ``out``; a scene that fails becomes an error row."""
        for i in rows:
            try:
                result = self.label_scene(str(batch["uri"][i]))
            except (OSError, StorageError) as e:  # a window that cannot be read
                out.errors[i], out.stages[i] = str(e), "read"
                continue
            except Exception as e:  # noqa: BLE001 - one scene must not take the batch down
                out.errors[i], out.stages[i] = f"{type(e).__name__}: {e}", "predict"
                continue
            out.masks[i], out.counts[i], out.confidence[i] = result.mask, result.class_pixels, result.mean_confidence
            out.areas[i], out.nodata[i] = result.class_area_m2, result.nodata_pixels
            if result.confidence is not None:
                out.confidence_maps[i] = result.confidence

    @torch.inference_mode()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(batch["uri"])
        out = _Outputs.empty(n, self.num_classes, batch["error"], batch["error_stage"])
        errors, stages, masks, counts, confidence = out.errors, out.stages, out.masks, out.counts, out.confidence
        encoded = batch["encoded"] if "encoded" in batch else np.full(n, b"", dtype=object)
        on_device = np.asarray(batch["on_device"], dtype=bool).copy() if "on_device" in batch else np.zeros(n, bool)
        turns = batch.get("exif_orientation")
        decoded = self._decode_on_device(encoded, on_device, errors, stages, turns) if on_device.any() else None
        scenes = batch[SCENE_COLUMN] if SCENE_COLUMN in batch else np.full(n, "", dtype=object)
        geo = np.array([not errors[i] and bool(scenes[i]) for i in range(n)], dtype=bool)
        large = np.array([not errors[i] and len(encoded[i]) > 0 for i in range(n)], dtype=bool) & ~on_device & ~geo
        ok = np.array([not e for e in errors], dtype=bool) & ~large & ~geo
        idx = np.flatnonzero(ok)
        if len(idx):
            x = torch.from_numpy(np.ascontiguousarray(batch["image"][idx])).to(self.device).permute(0, 3, 1, 2)
            if decoded is not None:  # the rows decoded on the device, in row order as ``idx`` is
                x = x.clone()  # on a CPU device x would share the batch's (read-only) array
                x[torch.from_numpy(np.flatnonzero(on_device[idx])).to(self.device)] = decoded
            logits = self.logits_of(x)
            confidence[idx] = mean_confidence(logits)
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in idx]
            for size in dict.fromkeys(sizes):  # frames of one size are resized together
                group = [j for j, s in enumerate(sizes) if s == size]
                # Indexing copies the logits: only when the batch mixes frame sizes.
                m, c = upsample_argmax(logits if len(group) == len(sizes) else logits[group], *size)
                for k, j in enumerate(group):
                    masks[idx[j]], counts[idx[j]] = m[k], c[k]
        self._label_large_rows(batch, np.flatnonzero(large), encoded, out)
        self._label_scenes(batch, np.flatnonzero(geo), out)
        # Only a run that writes confidence maps carries them (empty for rows without one).
        maps = {CONFIDENCE_MAP_COLUMN: out.confidence_maps} if self.write_confidence else {}
        return predicted_batch(
            batch,
            errors,
            stages,
            masks,
            np.uint8,
            class_pixels=counts,
            mean_confidence=confidence,
            windowed=(large | geo) & (errors == ""),
            class_area_m2=out.areas,
            nodata_pixels=out.nodata,
            **{SCENE_COLUMN: scenes},
            **maps,
        )

    def _label_large_rows(self, batch: dict[str, Any], rows: np.ndarray, encoded: np.ndarray, out: _Outputs) -> None:
        """Frames left encoded by the read stage, decoded and labelled in windows one at a time: a frame's
        pixels are freed before the next is decoded."""
        for i in rows:
            if not self._told_windows:
                self._told_windows = True
                log.info(
                    "%s is %dx%d, above --tile-above times the reference size: labelled in windows at its own "
                    "resolution (the run's summary counts such frames)",
                    batch["relative_path"][i],
                    int(batch["width"][i]),
                    int(batch["height"][i]),
                )
            try:
                rgb = decode_left_encoded(bytes(encoded[i]), batch, int(i), self.max_pixels)
            except FrameError as e:
                out.errors[i], out.stages[i] = e.reason, e.stage
                continue
            except Exception as e:  # noqa: BLE001 - a decoder bug must not take the batch down
                out.errors[i], out.stages[i] = f"{type(e).__name__}: {e}", "decode"
                continue
            out.masks[i], out.confidence[i] = self.label_large(rgb)
            del rgb
            out.counts[i] = np.bincount(out.masks[i].ravel(), minlength=self.num_classes)[: self.num_classes]


@dataclass
class _Outputs:
    """The per-row outputs of a batch, filled in by the steps of :meth:`Predictor.__call__`."""

    errors: np.ndarray
    stages: np.ndarray
    masks: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    #: (N, classes) m^2 per class: NaN for frames and for scenes without a CRS.
    areas: np.ndarray
    #: Pixels without data per row (0 for frames).
    nodata: np.ndarray
    #: Per row, a scene's (h, w) uint8 confidence map; an empty (0, 0) array for other rows.
    confidence_maps: np.ndarray

    @classmethod
    def empty(cls, n: int, num_classes: int, errors: Any, stages: Any) -> _Outputs:
        return cls(
            np.array([str(e) for e in errors], dtype=object),
            np.array([str(s) for s in stages], dtype=object),
            np.empty(n, dtype=object),
            np.zeros((n, num_classes), dtype=np.int64),
            np.full(n, np.nan, dtype=np.float64),
            np.full((n, num_classes), np.nan, dtype=np.float64),
            np.zeros(n, dtype=np.int64),
            _empty_maps(n),
        )


def _empty_maps(n: int) -> np.ndarray:
    """``n`` empty uint8 maps, one per row, so the column holds one kind of array."""
    maps = np.empty(n, dtype=object)
    for i in range(n):
        maps[i] = np.zeros((0, 0), dtype=np.uint8)
    return maps
