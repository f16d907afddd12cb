"""Every registered architecture: builds, returns plain logits and round-trips through the artifact;
torchvision's FCN, SegNet, a VGG-UNet and one more smp architecture train a step on converted data
and label frames with the job (which sees no difference between them and a UNet). SegNet's own
tests are in test_segnet.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers.common import ROOT, TINY_ENCODER
from PIL import Image
from safetensors.torch import save_file

from segray.datasets.formats import convert
from segray.datasets.pairs import PairSource, dataset_label_map, list_pairs
from segray.labels import CAMVID, LabelMap
from segray.models import ARCHITECTURES, SMP_ARCHITECTURES, build_model, load_encoder_weights
from segray.models.artifact import CONFIG, ArtifactError, ModelArtifact, init_artifact
from segray.models.fcn import TorchvisionFCN

SIZE = 64
#: PAN's pyramid pools its deepest feature map down 8 times further: it needs a bigger input.
INPUT = {"pan": 256}
#: A narrow SegNet (channels 8 ... 64): the same structure at a test's cost.
NARROW_SEGNET = {"width_multiplier": 0.125}


def test_registry_has_every_smp_architecture_fcn_and_segnet() -> None:
    import segmentation_models_pytorch as smp

    assert set(SMP_ARCHITECTURES) == set(smp.MODEL_ARCHITECTURES_MAPPING)
    assert {*SMP_ARCHITECTURES, "fcn", "segnet"} <= set(ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown architecture 'segnett'"):
        build_model("segnett", TINY_ENCODER, 3)
    with pytest.raises(ValueError, match=r"unknown encoder 'resnet18' for fcn; torchvision builds \['resnet50', "):
        build_model("fcn", "resnet18", 3)


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        *(
            pytest.param(a, TINY_ENCODER, {}, marks=pytest.mark.slow)
            if a == "dpt"  # DPT: 31 M parameters even on a tiny encoder
            else (a, TINY_ENCODER, {})
            for a in SMP_ARCHITECTURES
            if a not in ("unet", "pspnet")  # covered by test_artifact.py
        ),
        ("unet", "vgg16_bn", {}),  # VGG-UNet
        ("segnet", "vgg16_bn", NARROW_SEGNET),
    ],
)
def test_architecture_artifact_round_trip(arch: str, encoder: str, kwargs: dict, tmp_path: Path) -> None:
    size = INPUT.get(arch, SIZE)
    art = init_artifact(arch, encoder, CAMVID, name=f"tiny-{arch}", height=size, width=size, model_kwargs=kwargs)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = art.model(x)
    assert isinstance(want, torch.Tensor) and want.shape == (1, CAMVID.num_classes, size, size)
    art.save(str(tmp_path / arch))
    loaded = ModelArtifact.load(str(tmp_path / arch))
    assert loaded.arch == arch and loaded.model_id == art.model_id
    with torch.no_grad():
        assert torch.equal(loaded.model(x), want)


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        pytest.param(a, TINY_ENCODER, {}, marks=pytest.mark.slow) if a == "dpt" else (a, TINY_ENCODER, {})
        for a in SMP_ARCHITECTURES
    ]
    + [("segnet", "vgg16_bn", NARROW_SEGNET), ("fcn", "resnet50", {})],
)
def test_architecture_takes_four_bands(arch: str, encoder: str, kwargs: dict, tmp_path: Path) -> None:
    """Every semantic architecture builds with 4 input channels (a band model); segray's own ones
    (whose config.json segray writes) keep them through the artifact, smp's as test_band_models.py's UNet."""
    size = INPUT.get(arch, SIZE)
    bands = {"bands": ("B04", "B03", "B02", "B08"), "band_mean": (1000.0,) * 4, "band_std": (500.0,) * 4}
    art = init_artifact(arch, encoder, CAMVID, height=size, width=size, model_kwargs=kwargs, **bands)
    assert art.preprocessing.channels == 4
    x = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = art.model(x)
    assert isinstance(want, torch.Tensor) and want.shape == (1, CAMVID.num_classes, size, size)
    if ARCHITECTURES[arch].startswith("smp:"):
        return
    art.save(str(tmp_path / arch))
    assert json.loads((tmp_path / arch / CONFIG).read_text())["in_channels"] == 4
    loaded = ModelArtifact.load(str(tmp_path / arch))
    assert loaded.preprocessing == art.preprocessing
    with torch.no_grad():
        assert torch.equal(loaded.model(x), want)


def test_fcn_is_torchvisions_fcn_with_tensor_output() -> None:
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    ours = build_model("fcn", "resnet50", 3).eval()
    theirs = fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False).eval()
    # same modules, same state-dict keys: a torchvision FCN checkpoint loads strictly
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        out = ours(x)
        assert isinstance(out, torch.Tensor)
        assert torch.equal(out, theirs(x)["out"])
    assert ours.encoder is ours.backbone


def test_fcn_encoder_weights_from_a_torchvision_resnet(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    donor = resnet50(weights=None)  # stands in for ImageNet weights (no download here)
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    art = init_artifact("fcn", "resnet50", CAMVID, height=SIZE, width=SIZE, encoder_weights=str(path))
    got = art.model.encoder.state_dict()
    assert torch.equal(got["conv1.weight"], donor.state_dict()["conv1.weight"])
    assert torch.equal(got["layer4.2.conv3.weight"], donor.state_dict()["layer4.2.conv3.weight"])
    model = build_model("fcn", "resnet50", 3)
    assert load_encoder_weights(model, {f"backbone.{k}": v for k, v in donor.state_dict().items()}, "x") > 300


def test_fcn_artifact_layout_and_refusals(tmp_path: Path) -> None:
    art = init_artifact("fcn", "resnet50", CAMVID, name="fcn", height=SIZE, width=SIZE)
    art.save(str(tmp_path / "fcn"))
    config = json.loads((tmp_path / "fcn" / CONFIG).read_text())
    assert config == {"_segray_arch": "fcn", "encoder_name": "resnet50", "classes": CAMVID.num_classes}
    meta = json.loads((tmp_path / "fcn" / "segray.json").read_text())
    assert meta["arch"] == "fcn" and meta["format_version"] == 1
    loaded = ModelArtifact.load(str(tmp_path / "fcn"))
    assert isinstance(loaded.model, TorchvisionFCN) and loaded.model_id == art.model_id
    config["encoder_name"] = "vgg16"
    (tmp_path / "fcn" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"config.json: cannot build fcn from it \(unknown encoder 'vgg16'"):
        ModelArtifact.load(str(tmp_path / "fcn"))
    del config["classes"]
    (tmp_path / "fcn" / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"config.json: malformed \(no 'classes'\)"):
        ModelArtifact.load(str(tmp_path / "fcn"))


# --- one training step on converted data, then the labelling job -----------------------------------


def kitti_road(root: Path, n: int = 3) -> None:
    """A tiny KITTI road folder: the lower half road (magenta), the upper half not road (red), a black band."""
    rng = np.random.default_rng(0)
    for folder in ("image_2", "gt_image_2"):
        (root / "training" / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = 40, 100
        gt = np.zeros((h, w, 3), np.uint8)
        gt[: h // 2] = (0, 0, 255)  # BGR red
        gt[h // 2 :] = (255, 0, 255)  # magenta
        gt[:, :5] = 0
        img = rng.integers(0, 256, (h, w, 3), np.uint8)
        img[h // 2 :] //= 3  # road darker: something to learn
        cv2.imwrite(str(root / "training" / "image_2" / f"um_{i:06d}.png"), img)
        cv2.imwrite(str(root / "training" / "gt_image_2" / f"um_road_{i:06d}.png"), gt)


def batch_from(root: str, label_map: LabelMap, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks) tensors from a canonical root's train split, at the model's input size."""
    from segray.datasets.formats.base import read_index_mask, read_rgb
    from segray.models.preprocessing import Preprocessing

    pre = Preprocessing(height=size, width=size)
    xs, ys = [], []
    for pair in list_pairs(PairSource(root=root, split="train")):
        _, rgb = read_rgb(pair.image)
        mask = read_index_mask(pair.mask)
        xs.append((pre.resize(rgb) / 255.0 - np.array(pre.mean)) / np.array(pre.std))
        ys.append(cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float()
    return x, torch.from_numpy(np.stack(ys)).long()


def train_one_step(art: ModelArtifact, x: torch.Tensor, y: torch.Tensor) -> float:
    model = art.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=art.label_map.ignore_id or -100)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the step changed no weight"
    assert torch.isfinite(loss)
    return float(loss.detach())


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs"),
    [
        ("fcn", "resnet50", {}),
        ("deeplabv3plus", TINY_ENCODER, {}),
        ("segnet", "vgg16_bn", NARROW_SEGNET),
        ("unet", "vgg16_bn", {}),  # VGG-UNet
    ],
)
def test_trains_a_step_and_labels_with_the_job(
    arch: str, encoder: str, kwargs: dict, tmp_path: Path, ray_session: None
) -> None:
    from segray.labelling.job import LabelOptions, run_label_job

    kitti_road(tmp_path / "data_road")
    data = str(tmp_path / "canonical")
    convert("kitti-road", str(tmp_path / "data_road"), data)
    label_map = dataset_label_map(data)
    assert label_map.names == ["not_road", "road"]
    art = init_artifact(arch, encoder, label_map, name=f"road-{arch}", height=SIZE, width=SIZE, model_kwargs=kwargs)
    x, y = batch_from(data, label_map, SIZE)
    assert set(np.unique(y.numpy())) == {0, 1, 255}
    train_one_step(art, x, y)
    model_uri = str(tmp_path / "model")
    art.save(model_uri)
    out = tmp_path / "labels"
    s = run_label_job(LabelOptions(model=model_uri, input=str(tmp_path / "canonical" / "train"), output=str(out)))
    assert (s.labelled, s.failed, s.model_id) == (3, 0, art.model_id)
    stats = pq.read_table(out / "stats").to_pandas()
    assert len(stats) == 3 and set(stats["model_id"]) == {art.model_id}
    assert (stats["px_not_road"] + stats["px_road"] == 40 * 100).all()
    for rel in stats["mask_path"]:
        with Image.open(out / rel) as im:  # palette PNG: PIL gives the class indices
            mask = np.asarray(im)
        assert mask.shape == (40, 100) and set(np.unique(mask)) <= {0, 1}


def test_fcn_fine_tunes_onto_other_classes(tmp_path: Path) -> None:
    """Fine-tuning an FCN artifact onto a different label map re-initialises only its class layer."""
    import torch

    from segray.labels import KITTI_ROAD
    from segray.recipe import ModelConfig
    from segray.tasks.semantic.init import describe_init, initial_model

    src = init_artifact("fcn", "resnet50", CAMVID, name="fcn-src", height=64, width=64)
    src.save(str(tmp_path / "fcn"))
    cfg = ModelConfig(arch="fcn", encoder="resnet50", init_artifact=str(tmp_path / "fcn"), height=64, width=64)
    assert "re-initialised" in describe_init(cfg, KITTI_ROAD)
    model = initial_model(cfg, KITTI_ROAD)
    new, old = model.state_dict(), src.model.state_dict()
    assert new["classifier.4.weight"].shape[0] == KITTI_ROAD.num_classes
    assert torch.equal(new["classifier.0.weight"], old["classifier.0.weight"])  # kept
    assert torch.equal(new["backbone.conv1.weight"], old["backbone.conv1.weight"])


def test_vgg_unet_recipe_trains_exports_and_labels(tmp_path: Path, ray_session: None) -> None:
    """configs/camvid-vgg-unet-gpu.yaml on CPUs and tiny frames (its loss, augmentation and export
    as written): smp's UNet on the VGG16-BN encoder trains, exports and is labelled with by the job."""
    from helpers.train_data import SHAPES, write_shapes_dataset

    from segray.labelling.job import LabelOptions, run_label_job
    from segray.recipe import load_config
    from segray.training.job import run_training

    data = write_shapes_dataset(str(tmp_path / "shapes"), {"train": 8, "val": 4})
    recipe = ROOT / "configs" / "camvid-vgg-unet-gpu.yaml"
    cfg = load_config(
        str(recipe),
        [
            f"data.root={data}",
            f"run.storage={tmp_path / 'runs'}",
            "model.height=64",
            "model.width=64",
            "loss=[{type: ce, class_weights: [0.5, 1.0, 2.0]}, {type: dice, weight: 0.5}]",
            "data.loader_workers=0",
            "run.epochs=1",
            "run.batch_size=4",
            "run.use_gpu=false",
            "run.amp=false",
            "run.torch_threads=2",
            "run.max_failures=0",
        ],
    )
    s = run_training(cfg, with_ray=False)
    art = ModelArtifact.load(s.artifact)
    assert s.completed and art.arch == "unet" and art.label_map == SHAPES
    assert json.loads((Path(s.artifact) / CONFIG).read_text())["encoder_name"] == "vgg16_bn"
    out = tmp_path / "labels"
    job = run_label_job(LabelOptions(model=s.artifact, input=str(Path(data) / "val"), output=str(out)))
    assert (job.labelled, job.failed, job.model_id) == (4, 0, art.model_id)
