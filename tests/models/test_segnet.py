"""SegNet: VGG16-BN encoder, decoder that unpools with the encoder's pooling indices. What is special
to it: sizes that are not multiples of 32, unpooling to the pooled positions, torchvision VGG16-BN
encoder weights through ``convert-weights``, the width option, and a recipe run that exports an
artifact the labelling job labels with and ``compare`` scores. The shared architecture contract
is in test_architectures.py."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import torch
from helpers.common import ROOT, TINY_ENCODER
from helpers.train_data import SHAPES, write_shapes_dataset

from segray.datasets.pairs import PairSource
from segray.evaluation.compare import compare
from segray.evaluation.evaluate import EvalOptions
from segray.labels import CAMVID
from segray.models import build_model
from segray.models.artifact import CONFIG, ArtifactError, ModelArtifact, init_artifact
from segray.models.convert import convert_weights
from segray.models.segnet import SegNet, VGGEncoder, unpool

#: A narrow SegNet (channels 8 ... 64) for the tests that only need the structure.
NARROW = {"width_multiplier": 0.125}


@pytest.mark.parametrize(("height", "width", "kwargs"), [(72, 104, {}), (96, 128, NARROW), (33, 47, NARROW)])
def test_forward_backward_at_sizes_not_multiples_of_32(height: int, width: int, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_model("segnet", "vgg16_bn", 5, **kwargs).train()
    out = model(torch.randn(2, 3, height, width))
    assert out.shape == (2, 5, height, width)
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing[:3]}"


def test_full_width_is_the_papers_vgg16_segnet() -> None:
    model = build_model("segnet", "vgg16_bn", 11)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder + 12 decoder convolutions + the class convolution
    assert 29.0e6 < sum(p.numel() for p in model.parameters()) < 29.6e6  # the paper: 29.5 M
    assert model.encoder.stage_channels == [64, 128, 256, 512, 512]


def test_unpooling_puts_each_maximum_back_where_it_was() -> None:
    """A hand-built 4x5 map: floor-mode pooling sees columns 0-3 only; unpooling to the pre-pooling
    size puts each window's maximum back at its own position and zeros everywhere else."""
    x = torch.tensor(
        [
            [1.0, 9.0, 2.0, 0.0, 7.0],
            [3.0, 4.0, 8.0, 5.0, 7.0],
            [6.0, 0.0, 1.0, 2.0, 7.0],
            [0.0, 5.0, 3.0, 4.0, 7.0],
        ]
    ).reshape(1, 1, 4, 5)
    pooled, indices = torch.nn.MaxPool2d(2, 2, return_indices=True)(x)
    assert pooled.flatten().tolist() == [9.0, 8.0, 6.0, 4.0]
    restored = unpool(pooled, indices, x.shape[-2:])
    want = torch.tensor(
        [
            [0.0, 9.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 8.0, 0.0, 0.0],
            [6.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 4.0, 0.0],
        ]
    ).reshape(1, 1, 4, 5)
    assert torch.equal(restored, want)


def test_encoder_hands_the_decoder_indices_and_pre_pooling_sizes() -> None:
    encoder = VGGEncoder(width_multiplier=0.125).eval()
    x = torch.randn(1, 3, 72, 104)
    with torch.no_grad():
        deepest, pools = encoder(x)
        assert [tuple(size) for _, size in pools] == [(72, 104), (36, 52), (18, 26), (9, 13), (4, 6)]
        assert deepest.shape[-2:] == (2, 3)
        # the indices point at the maxima: unpooling the pooled map and pooling again gives it back
        indices, size = pools[-1]
        restored = unpool(deepest, indices, size)
        assert torch.equal(torch.nn.functional.max_pool2d(restored, 2, 2), deepest.clamp(min=0))


def test_refusals_name_the_bad_input() -> None:
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet18' for segnet; it builds \['vgg16_bn'\]"):
        build_model("segnet", "resnet18", 3)
    with pytest.raises(ValueError, match=r"segnet width_multiplier must be in \(0, 1\], got 1.5"):
        build_model("segnet", "vgg16_bn", 3, width_multiplier=1.5)
    with pytest.raises(ValueError, match=r"segnet width_multiplier must be a number in \(0, 1\], got 'half'"):
        build_model("segnet", "vgg16_bn", 3, width_multiplier="half")
    with pytest.raises(ValueError, match=r"segnet takes width_multiplier only as a model argument, got \['decoder_"):
        build_model("segnet", "vgg16_bn", 3, decoder_channels=[16])
    with pytest.raises(ValueError, match=r"segnet takes encoder weights as a \.safetensors file only.*convert-weights"):
        init_artifact("segnet", "vgg16_bn", CAMVID, height=64, width=64, encoder_weights="imagenet")
    model = build_model("segnet", "vgg16_bn", 3, **NARROW)
    with pytest.raises(ValueError, match="segnet needs frames of at least 32x32 .*got 31x64"):
        model(torch.zeros(1, 3, 31, 64))


def test_artifact_round_trip_and_a_frame_not_a_multiple_of_32(tmp_path: Path) -> None:
    """Artifacts keep segray's multiple-of-32 input size; the model itself takes any size >= 32."""
    art = init_artifact("segnet", "vgg16_bn", CAMVID, name="segnet", height=64, width=96, model_kwargs=NARROW)
    x = torch.randn(1, 3, 72, 104, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = art.model(x)
    art.save(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / CONFIG).read_text())
    assert config == {
        "_segray_arch": "segnet",
        "encoder_name": "vgg16_bn",
        "classes": CAMVID.num_classes,
        "width_multiplier": 0.125,
    }
    loaded = ModelArtifact.load(str(tmp_path / "m"))
    assert isinstance(loaded.model, SegNet) and loaded.arch == "segnet" and loaded.model_id == art.model_id
    with torch.no_grad():
        assert torch.equal(loaded.model(x), want)
    config["width_multiplier"] = 0.25  # weights of another width: refused, not half-loaded
    (tmp_path / "m" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="weights do not fit the model in config.json"):
        ModelArtifact.load(str(tmp_path / "m"))


def torchvision_vgg16_bn_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A file laid out as torchvision's ImageNet ``vgg16_bn-6c64b313.pth`` (random values, no download):
    ``features.*`` as torchvision's VGG16-BN builds them, plus a classifier tensor the encoder has no use for."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in make_layers(cfgs["D"], batch_norm=True).state_dict().items()}
    state["classifier.6.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


def test_encoder_weights_from_torchvisions_vgg16_bn(tmp_path: Path) -> None:
    state = torchvision_vgg16_bn_checkpoint(tmp_path / "vgg16_bn.pth")
    out = str(tmp_path / "vgg16_bn.safetensors")
    c = convert_weights(str(tmp_path / "vgg16_bn.pth"), out, arch="segnet", encoder="vgg16_bn")
    assert (c.encoder_matched, c.encoder_total) == (len(state) - 1, len(state) - 1)
    art = init_artifact("segnet", "vgg16_bn", CAMVID, height=64, width=64, encoder_weights=out)
    got = art.model.encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if k.startswith("features."))
    # ... and into a VGG-UNet's encoder (smp's vgg16_bn keeps torchvision's names)
    unet = init_artifact("unet", "vgg16_bn", CAMVID, height=64, width=64, encoder_weights=out)
    assert torch.equal(unet.model.encoder.state_dict()["features.40.weight"], state["features.40.weight"])
    # A narrower SegNet cannot take them, and says why.
    with pytest.raises(ValueError, match=r"other shapes .*ImageNet weights fit only width_multiplier 1.0, not 0.125"):
        init_artifact("segnet", "vgg16_bn", CAMVID, height=64, width=64, encoder_weights=out, model_kwargs=NARROW)


def test_trains_with_the_recipe_exports_labels_and_compares(tmp_path: Path, ray_session: None) -> None:
    """The CPU recipe's own options (width, progressive resizing, logit adjustment, fitted offsets) on
    tiny frames, without Ray for training; the exported artifact is labelled with by the job on Ray."""
    from segray.labelling.job import LabelOptions, run_label_job
    from segray.recipe import load_config
    from segray.training.job import run_training

    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 4})
    recipe = ROOT / "configs" / "camvid-segnet-cpu.yaml"
    cfg = load_config(
        str(recipe),
        [
            f"data.root={data}",
            f"run.storage={tmp_path / 'runs'}",
            "model.kwargs={width_multiplier: 0.125}",
            "model.height=64",
            "model.width=64",
            "loss=[{type: ce, class_weights: [0.5, 1.0, 2.0]}]",
            "run.epochs=2",
            "run.val_every=1",
            "augment.small_epochs=1",
            "augment.small_scale=0.5",
            "run.num_workers=1",
            "run.torch_threads=2",
            "run.max_failures=0",
        ],
    )
    s = run_training(cfg, with_ray=False)
    assert s.completed and [(h["train_height"], h["train_width"]) for h in s.history] == [(32, 32), (64, 64)]
    art = ModelArtifact.load(s.artifact)
    assert art.arch == "segnet" and art.label_map == SHAPES and isinstance(art.model, SegNet)
    assert art.model.config["width_multiplier"] == 0.125
    out = tmp_path / "labels"
    job = run_label_job(LabelOptions(model=s.artifact, input=str(Path(data) / "val"), output=str(out)))
    assert (job.labelled, job.failed, job.model_id) == (4, 0, art.model_id)
    stats = pads.dataset(str(out / "stats"), format="parquet").to_table().to_pandas()
    assert len(stats) == 4 and set(stats["model_id"]) == {art.model_id}
    assert (stats["px_background"] + stats["px_box"] + stats["px_disc"] == 64 * 64).all()
    # ... and `compare` puts it beside a UNet on the same frames.
    unet = str(tmp_path / "unet")
    init_artifact("unet", TINY_ENCODER, SHAPES, name="tiny-unet", height=64, width=64).save(unet)
    md, rows = compare([s.artifact, unet], EvalOptions(model="", data=PairSource(root=data, split="val"), overlays=0))
    assert [r["model_id"] for r in rows] == [art.model_id, ModelArtifact.load(unet).model_id]
    segnet_row = rows[0]
    assert segnet_row["params"] == sum(p.numel() for p in art.model.parameters())
    assert segnet_row["gflops_per_frame"] > 0 and 0 <= segnet_row["miou"] <= 1
    assert f"| `{art.model_id}` | 64x64 |" in md


def test_fine_tunes_onto_other_classes_keeping_its_width(tmp_path: Path) -> None:
    """Fine-tuning a SegNet artifact onto another label map re-initialises only its class convolution."""
    from segray.labels import KITTI_ROAD
    from segray.recipe import ModelConfig
    from segray.tasks.semantic.init import describe_init, initial_model

    src = init_artifact("segnet", "vgg16_bn", CAMVID, name="segnet-src", height=64, width=64, model_kwargs=NARROW)
    src.save(str(tmp_path / "segnet"))
    cfg = ModelConfig(arch="segnet", encoder="vgg16_bn", init_artifact=str(tmp_path / "segnet"), height=64, width=64)
    assert "re-initialised" in describe_init(cfg, KITTI_ROAD)
    model = initial_model(cfg, KITTI_ROAD)
    assert isinstance(model, SegNet) and model.config["width_multiplier"] == NARROW["width_multiplier"]
    new, old = model.state_dict(), src.model.state_dict()
    assert new["segmentation_head.weight"].shape[0] == KITTI_ROAD.num_classes
    assert torch.equal(new["encoder.features.0.weight"], old["encoder.features.0.weight"])  # kept
    assert torch.equal(new["decoder.4.0.weight"], old["decoder.4.0.weight"])  # kept
