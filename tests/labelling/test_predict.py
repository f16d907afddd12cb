"""The inference stage without Ray: resizing logits back to the frame, and one batch call."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segray.models.artifact import ArtifactError, ModelArtifact, read_info
from segray.models.preprocessing import Preprocessing
from segray.tasks.semantic.predict import Predictor, mean_confidence, upsample_argmax


@pytest.mark.parametrize("size", [(37, 91), (360, 480), (5, 3)])
def test_batched_resizing_equals_interpolate(size: tuple[int, int]) -> None:
    logits = torch.randn(2, 5, 16, 24, generator=torch.Generator().manual_seed(0))
    ref_mask = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1).numpy()
    mask, counts = upsample_argmax(logits.contiguous(memory_format=torch.channels_last), *size)
    assert mask.shape == (2, *size) and mask.dtype == np.uint8
    assert (mask == ref_mask).all()
    # The counts are those of the mask returned (computed beside it, on the logits' device).
    assert [np.bincount(m.ravel(), minlength=5).tolist() for m in mask] == counts.tolist()


def test_mean_confidence_is_mean_max_softmax() -> None:
    logits = torch.randn(3, 4, 10, 12, generator=torch.Generator().manual_seed(1))
    full = logits.softmax(1).amax(1).mean(dim=(1, 2)).numpy()
    assert mean_confidence(logits, stride=1) == pytest.approx(full, rel=1e-6)
    sampled = logits[:, :, ::2, ::2].softmax(1).amax(1).mean(dim=(1, 2)).numpy()
    assert mean_confidence(logits) == pytest.approx(sampled, rel=1e-6)
    confident = torch.zeros(1, 4, 6, 6)
    confident[:, 2] = 50.0
    assert mean_confidence(confident)[0] == pytest.approx(1.0)


def test_predictor_batch_keeps_failed_rows(tiny_model: str) -> None:
    p = Predictor(tiny_model, torch_threads=1)
    n = 3
    batch = {
        "uri": np.array(["a", "b", "c"], dtype=object),
        "relative_path": np.array(["a", "b", "c"], dtype=object),
        "image": np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
        "width": np.array([64, 0, 100], dtype=np.int32),
        "height": np.array([48, 0, 30], dtype=np.int32),
        "error": np.array(["", "decode: bad", ""], dtype=object),
        "error_stage": np.array(["", "decode", ""], dtype=object),
    }
    out = p(batch)
    assert "image" not in out and list(out["error"]) == ["", "decode: bad", ""]
    assert out["mask"][0].shape == (48, 64) and out["mask"][2].shape == (30, 100)
    assert out["class_pixels"][0].sum() == 48 * 64 and out["class_pixels"][1].sum() == 0
    assert np.isnan(out["mean_confidence"][1]) and 0 < out["mean_confidence"][0] <= 1
    assert out["windowed"].tolist() == [False, False, False]


def test_flip_averaging_artifact_predicts_the_mean_of_both_views(tiny_model: str, tmp_path: Path) -> None:
    plain = Predictor(tiny_model, torch_threads=1)
    art = ModelArtifact.load(tiny_model)
    art.preprocessing = replace(art.preprocessing, hflip_average=True)
    art.save(str(tmp_path / "flip"))
    p = Predictor(str(tmp_path / "flip"), torch_threads=1)
    images = np.random.default_rng(3).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    a = plain.predict_logits(images)
    mirrored = plain.predict_logits(np.ascontiguousarray(images[:, :, ::-1]))
    expected = (a + mirrored.flip(3)) / 2
    assert torch.allclose(p.predict_logits(images), expected, atol=1e-5)
    assert not torch.allclose(a, expected, atol=1e-3)  # the untrained model is not mirror-symmetric
    info = read_info(str(tmp_path / "flip"))
    assert info.weights_sha256 == read_info(tiny_model).weights_sha256
    assert info.model_id == read_info(tiny_model).model_id + "+hflip"  # rows tell the two apart


def test_flip_averaging_flag_in_segray_json(tiny_model: str, tmp_path: Path) -> None:
    assert Preprocessing.from_dict({"height": 64, "width": 64}).hflip_average is False  # artifacts before it
    meta = json.loads((Path(tiny_model) / "segray.json").read_text())
    meta["preprocessing"]["hflip_average"] = "yes"
    shutil.copytree(tiny_model, tmp_path / "bad")
    (tmp_path / "bad" / "segray.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="hflip_average must be true or false"):
        ModelArtifact.load(str(tmp_path / "bad"))
