"""What every format in ``FORMATS`` promises, checked on each one: a tiny source converts into the
canonical layout that training reads (frames with class-index masks, or the instance layout), with
a ``labels.json`` naming the classes, and a corrupt frame stops the run with an error naming it.

The parameters come from ``FORMATS`` itself, so a new format is under these checks the moment it is
registered; it then needs a sample maker in ``helpers/format_samples.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.format_samples import SAMPLES, FormatSample

from segray.datasets.formats import ConvertError, convert
from segray.datasets.formats.registry import FORMATS
from segray.datasets.instances import instance_label_map, list_frames, read_frame
from segray.datasets.masks import read_mask
from segray.datasets.pairs import PairSource, dataset_label_map, list_pairs, read_pair
from segray.labels import LabelMap


def sample(fmt: str, root: Path) -> FormatSample:
    if fmt not in SAMPLES:
        pytest.fail(f"format {fmt!r} has no sample maker: add one to SAMPLES in tests/helpers/format_samples.py")
    return SAMPLES[fmt](root)


def test_every_sample_maker_names_a_registered_format() -> None:
    assert sorted(set(SAMPLES) - set(FORMATS)) == []


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_sample_converts_to_the_canonical_layout(fmt: str, tmp_path: Path) -> None:
    src = sample(fmt, tmp_path / "src")
    out = tmp_path / "out"
    report = convert(fmt, str(src.src), str(out), src.options, workers=2)
    splits = sorted(report.frames)
    assert splits and sum(report.frames.values()) == len(src.frames)
    lm = LabelMap.from_json((out / "labels.json").read_text())
    assert lm.num_classes >= 1 and lm.names and report.label_map == lm.name
    meta = json.loads((out / "_convert.json").read_text())
    assert meta["format"] == fmt and meta["frames"] == report.frames
    if FORMATS[fmt].instances:
        assert instance_label_map(str(out)) == lm
        for split in splits:
            frames = list_frames(str(out), split)
            assert len(frames) == report.frames[split]
            for frame in frames:
                rgb, inst = read_frame(frame, lm.num_classes)
                assert rgb.ndim == 3 and rgb.shape[2] == 3
                assert inst.masks.shape[1:] == rgb.shape[:2]
                assert ((inst.classes >= 0) & (inst.classes < lm.num_classes)).all()
        assert sum(report.instances.values()) > 0  # the samples hold objects, and all were written
        assert not any(p.name.endswith("annot") for p in out.iterdir())
        return
    assert dataset_label_map(str(out)) == lm
    for split in splits:
        pairs = list_pairs(PairSource(root=str(out), split=split))
        assert len(pairs) == report.frames[split]
        for pair in pairs:
            image, mask = read_pair(pair, lm)  # same size, ids checked against the label map
            assert image.shape[:2] == mask.shape and mask.dtype == np.uint8
            assert np.array_equal(read_mask(pair.mask), mask)
    assert report.mask_pixels == sum(
        read_mask(p.mask).size for s in splits for p in list_pairs(PairSource(root=str(out), split=s))
    )


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_corrupt_frame_stops_the_run_naming_the_file(fmt: str, tmp_path: Path) -> None:
    src = sample(fmt, tmp_path / "src")
    bad = src.frames[-1]
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    with pytest.raises(ConvertError) as ei:
        convert(fmt, str(src.src), str(out), src.options, workers=2)
    assert str(bad) in str(ei.value)
    # The label map and the report are written only once every frame converted.
    assert not (out / "labels.json").exists() and not (out / "_convert.json").exists()
