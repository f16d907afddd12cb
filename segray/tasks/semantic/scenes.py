"""Training on GeoTIFF scenes: the scenes' bands and class masks in memory, random chips of the model
size for training, a fixed grid of chips over the validation region for validation.

Each training worker reads every scene of the run (its selected bands, in the file's dtype) and its
label mask once, when it starts: **the scenes must fit in one worker's memory** (ten uint16 bands of
a 2,000 x 2,000 scene are 80 MB). Chips never leave a scene: a training chip lies wholly outside the
validation region of the spatial split (:func:`segray.geo.labels.train_chips`) and has at least one
labelled pixel; a validation chip scores only the labelled pixels of the region.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segray import storage
from segray.geo import labels as geolabels
from segray.labels import LabelClass, LabelMap

if TYPE_CHECKING:
    from segray.recipe import DataConfig, TrainConfig


@dataclass
class Scene:
    """One scene in memory: bands (C, H, W) in the file's dtype, class ids (H, W) with 255 where there
    is no label (nodata pixels included), and the validation region (H, W)."""

    uri: str
    data: np.ndarray
    mask: np.ndarray
    region: np.ndarray


def scene_label_map(cfg: TrainConfig) -> LabelMap:
    """``data.scenes.classes`` as the run's label map (class ids in list order, 255 ignored)."""
    from PIL import ImageColor

    classes = []
    for i, c in enumerate(cfg.data.scenes.classes):
        color = c.get("color", "#000000")
        try:
            rgb = tuple(ImageColor.getrgb(color))[:3] if isinstance(color, str) else tuple(int(v) for v in color)
        except ValueError as e:
            raise ValueError(f"data.scenes.classes[{i}] color {color!r}: give #rrggbb or [r, g, b] ({e})") from None
        classes.append(LabelClass(i, str(c["name"]), rgb))  # type: ignore[arg-type]
    return LabelMap(cfg.name, tuple(classes))


def scene_pairs(data: DataConfig) -> list[tuple[str, str]]:
    """(scene, label raster or "") of every scene: label rasters are matched by file name."""
    from segray.geo.bandstats import scene_uris

    s = data.scenes
    images = scene_uris([str(s.images)])
    if s.labels is None:
        return [(uri, "") for uri in images]
    found = scene_uris([s.labels])
    if len(images) == 1 and len(found) == 1:
        return [(images[0], found[0])]
    by_name = {os.path.basename(u): u for u in found}
    missing = [u for u in images if os.path.basename(u) not in by_name]
    if missing:
        raise ValueError(f"data.scenes.labels {s.labels}: no label raster named {os.path.basename(missing[0])} "
                         f"(for scene {missing[0]}; {len(missing)} scene(s) without labels)")  # fmt: skip
    return [(u, by_name[os.path.basename(u)]) for u in images]


def load_scene(image: str, label: str, data: DataConfig) -> Scene:
    """Read a scene's bands, its class mask (label raster or rasterised vectors) and its validation region."""
    from rasterio.windows import Window

    from segray.geo.scene import open_scene, read_window, scene_info, select_bands

    s, split = data.scenes, data.split
    classes = geolabels.LabelClasses.from_recipe(s.classes)
    with open_scene(image) as ds:
        info = scene_info(ds, image)
        bands, valid = read_window(ds, Window(0, 0, info.width, info.height), select_bands(info, data.bands))
    if label:
        mask = geolabels.read_label_raster(label, info, classes, s.unlabelled)
    else:
        mask = geolabels.rasterise_vectors(
            str(s.vectors), info, classes, s.class_column, s.labelled_areas, s.background
        )
    mask[~valid] = geolabels.IGNORE  # the sensor saw nothing there: no label to learn
    region = geolabels.val_region(info, split.val_rows, split.val_bbox, split.val_areas)
    return Scene(image, bands, mask, region)


def absolutise(data: DataConfig) -> None:
    """Local paths made absolute: Ray workers may run in another working directory."""
    s = data.scenes
    for key in ("images", "labels", "vectors", "labelled_areas"):
        if getattr(s, key) is not None:
            setattr(s, key, storage.absolute(getattr(s, key)))
    if data.split.val_areas is not None:
        data.split.val_areas = storage.absolute(data.split.val_areas)
    if isinstance(data.band_stats, str):
        data.band_stats = storage.absolute(data.band_stats)


def resolve_band_stats(data: DataConfig, scenes: list[str]) -> dict[str, Any]:
    """``data.band_stats`` as ``{mean, std}`` in raw units: read from its JSON file, taken as given, or
    computed over ``scenes`` (valid pixels only), and written back into the recipe so that the run's
    recipe.yaml records the numbers the model was normalised with."""
    from segray.geo.bandstats import band_stats, read_band_stats

    bands = [str(b) for b in data.bands or []]
    if isinstance(data.band_stats, dict):
        return data.band_stats
    if isinstance(data.band_stats, str):
        stats = read_band_stats(data.band_stats).pick(bands)
    else:
        stats = band_stats(scenes, bands)
        print(f"data.band_stats: null -> computed over {len(scenes)} training scene(s)", flush=True)
    data.band_stats = {"mean": stats.mean, "std": stats.std}
    return data.band_stats


def scene_items(
    data: DataConfig, height: int, width: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str, int, int, int, int]], dict[str, Any]]:
    """The plan of a scene run: train items (scene, label), val items (scene, label, top, left, row0,
    col0) and what the artifact records about the data. Reads every scene once, so that a scene
    without a training or validation chip fails here, before any worker starts."""
    train: list[tuple[str, str]] = []
    val: list[tuple[str, str, int, int, int, int]] = []
    chips = labelled = val_pixels = 0
    pairs = scene_pairs(data)
    for image, label in pairs:
        scene = load_scene(image, label, data)
        if scene.data.shape[1] < height or scene.data.shape[2] < width:
            raise ValueError(f"scene {image} ({scene.data.shape[2]}x{scene.data.shape[1]}) is smaller than one "
                             f"chip of the model size {width}x{height}")  # fmt: skip
        n = len(geolabels.train_chips(scene.mask, scene.region, height, width))
        if n:
            train.append((image, label))
        chips += n
        labelled += int(((scene.mask != geolabels.IGNORE) & ~scene.region).sum())
        grid = geolabels.val_chips(scene.mask, scene.region, height, width)
        val += [(image, label, *chip) for chip in grid]
        val_pixels += sum(int((geolabels.val_chip_mask(scene.mask, scene.region, c, height, width)
                               != geolabels.IGNORE).sum()) for c in grid)  # fmt: skip
    if not train:
        raise ValueError("data.scenes: no training chip (one outside the validation region with a labelled pixel)")
    if not val:
        raise ValueError("data.split: the validation region holds no labelled pixel of any scene")
    split = data.split
    region = next(f"{k} {v}" for k, v in (("rows", split.val_rows), ("box", split.val_bbox),
                                           ("areas", split.val_areas)) if v is not None)  # fmt: skip
    info = {
        "train_data": f"{data.scenes.images}: {len(train)} scene(s) with training chips",
        "val_data": f"chips of the validation region ({region})",
        "scenes": data.scenes.images,
        "scene_count": len(pairs),
        "bands": [str(b) for b in data.bands or []],
        "train_scenes": len(train),
        "train_chip_positions": chips,
        "train_labelled_pixels": labelled,
        "chips_per_epoch": data.scenes.chips_per_epoch,
        "val_chips": len(val),
        "val_labelled_pixels": val_pixels,
        "train_frame_size": [height, width],  # labelling windows scenes at the model size
    }
    return train, val, info


class SceneChips(Dataset):
    """Items: ``(bands float32 (C, h, w), mask int64 (h, w))``, chips of scenes held in memory.

    ``train=True``: :meth:`set_epoch` draws this worker's share of ``chips`` random chips among every
    valid training chip of the scenes, with random flips and 90-degree rotations (180 only for a chip
    that is not square), all from (seed, epoch): a resumed epoch sees the same chips. ``train=False``:
    the fixed validation chips ``val`` (top, left, row0, col0 per scene index).
    """

    def __init__(
        self,
        scenes: list[Scene],
        height: int,
        width: int,
        *,
        train: bool,
        chips: int = 0,
        seed: int = 0,
        val: list[tuple[int, int, int, int, int]] | None = None,
    ) -> None:
        self.scenes, self.size, self.train, self.chips, self.seed = scenes, (height, width), train, chips, seed
        self.items: list[tuple[int, ...]] = list(val or [])
        if train:
            found = [geolabels.train_chips(s.mask, s.region, height, width) for s in scenes]
            self.candidates = np.concatenate(
                [np.column_stack([np.full(len(f), i), f]) for i, f in enumerate(found)]
            ).astype(np.int64)

    def set_epoch(self, epoch: int, rank: int = 0, world: int = 1) -> None:
        """Draw ``epoch``'s chips (the same on every worker) and keep this worker's share."""
        rng = np.random.default_rng([self.seed, epoch])
        picks = self.candidates[rng.integers(0, len(self.candidates), self.chips)]
        ops = rng.integers(0, 4, size=(self.chips, 3))  # rotation, vertical flip, horizontal flip
        self.items = [(*map(int, p), *map(int, o)) for p, o in zip(picks, ops, strict=True)][rank::world]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.size
        if self.train:
            s, top, left, rot, vflip, hflip = self.items[i]
            scene = self.scenes[s]
            image = scene.data[:, top : top + h, left : left + w]
            mask = scene.mask[top : top + h, left : left + w]
            image, mask = _augment(image, mask, rot if h == w else 2 * (rot % 2), vflip % 2, hflip % 2)
        else:
            s, top, left, r0, c0 = self.items[i]
            scene = self.scenes[s]
            image = scene.data[:, top : top + h, left : left + w]
            mask = geolabels.val_chip_mask(scene.mask, scene.region, (top, left, r0, c0), h, w)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        return x, torch.from_numpy(np.ascontiguousarray(mask)).long()


def _augment(image: np.ndarray, mask: np.ndarray, rot: int, vflip: int, hflip: int) -> tuple[np.ndarray, np.ndarray]:
    """The same quarter turns and flips of a chip's bands (C, h, w) and mask (h, w)."""
    image, mask = np.rot90(image, rot, axes=(1, 2)), np.rot90(mask, rot)
    if vflip:
        image, mask = image[:, ::-1], mask[::-1]
    if hflip:
        image, mask = image[:, :, ::-1], mask[:, ::-1]
    return image, mask


def worker_datasets(cfg: TrainConfig, plan: dict[str, Any]) -> tuple[SceneChips, SceneChips]:
    """A worker's training and validation datasets: every scene of the plan read once."""
    h, w = cfg.model.height, cfg.model.width
    uris: dict[tuple[str, str], int] = {}
    for item in [*plan["train"], *plan["val"]]:
        uris.setdefault((item[0], item[1]), len(uris))
    scenes = [load_scene(image, label, cfg.data) for image, label in uris]
    # Scenes without a training chip (the plan left them out of its train items) yield none here either.
    train = SceneChips(scenes, h, w, train=True, chips=cfg.data.scenes.chips_per_epoch, seed=cfg.run.seed)
    val = [(uris[(v[0], v[1])], *v[2:]) for v in plan["val"]]
    return train, SceneChips(scenes, h, w, train=False, val=val)
