"""What a semantic recipe takes from its training data: class weights (``auto``) and the frames' size."""

from __future__ import annotations

import numpy as np

from segray import storage
from segray.datasets.pairs import Pair, list_pairs
from segray.labels import LabelMap
from segray.recipe import TrainConfig

#: Training frames whose headers are read for :func:`frame_size`.
FRAME_SIZE_SAMPLE = 50


def frame_size(pairs: list[Pair], sample: int = FRAME_SIZE_SAMPLE) -> tuple[int, int] | None:
    """The median (height, width) of up to ``sample`` frames evenly spread over ``pairs``."""
    from concurrent.futures import ThreadPoolExecutor

    from segray.frames.decode import header_size

    step = max(1, len(pairs) // sample)
    chosen = pairs[::step][:sample]
    with ThreadPoolExecutor(8) as pool:
        sizes = [s for s in pool.map(lambda p: header_size(storage.read_bytes(p.image)), chosen) if s]
    if not sizes:
        return None
    return int(np.median([h for _, h in sizes])), int(np.median([w for w, _ in sizes]))


def resolve_auto_weights(cfg: TrainConfig, label_map: LabelMap, train_pairs: list[Pair] | None = None) -> None:
    """``class_weights: auto`` -> median-frequency weights from the training masks, printed, and
    written into the recipe (so recipe.yaml and the run's identity hold the numbers used)."""
    from segray.datasets.eda import AUTO_WEIGHTS_MAX_MASKS, median_frequency_weights
    from segray.losses import AUTO

    terms = [(i, t) for i, t in enumerate(cfg.loss) if t.class_weights == AUTO]
    if not terms:
        return
    pairs = train_pairs if train_pairs is not None else list_pairs(cfg.data.source("train"))
    weights = median_frequency_weights([(p.image, p.mask) for p in pairs], label_map)
    used = min(len(pairs), AUTO_WEIGHTS_MAX_MASKS)
    for i, term in terms:
        term.class_weights = list(weights)
        print(
            f"loss[{i}].class_weights: auto -> median frequency over {used} training masks: "
            + ", ".join(f"{c.name} {w:g}" for c, w in zip(label_map.classes, weights, strict=True)),
            flush=True,
        )
