"""Mask R-CNN instance models: builder, forward in train and eval mode, the ``task: instance``
artifact (local and S3 round trips with identical predictions, no pickle), backbone weights from
safetensors files only. One contract class, one short subclass per backbone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers.pickles import write_booby_trapped_pickle
from safetensors.torch import save_file

from segray import cli, storage
from segray.labels import LabelClass, LabelMap
from segray.models.artifact import META, ArtifactError, ModelArtifact, init_artifact, read_info
from segray.models.info import format_info, model_info
from segray.models.maskrcnn import (
    INSTANCE_ARCH,
    INSTANCE_BACKBONES,
    build_instance_model,
    load_backbone_weights,
    to_class_index,
    to_model_labels,
)
from segray.models.preprocessing import Preprocessing

SIZE = 64
SMALL = "mobilenet_v3_small_fpn"
OBJECTS = LabelMap("shapes", (LabelClass(0, "square", (200, 40, 40)), LabelClass(1, "disc", (40, 40, 200))))


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.rand(3, SIZE, SIZE, generator=g), torch.rand(3, SIZE - 16, SIZE, generator=g)]


def targets() -> list[dict[str, torch.Tensor]]:
    """One square (class 0) in the first image, none in the second."""
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    mask[0, 8:30, 10:34] = 1
    first = {
        "boxes": torch.tensor([[10.0, 8.0, 34.0, 30.0]]),
        "labels": to_model_labels(torch.tensor([0])),
        "masks": mask,
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, SIZE - 16, SIZE, dtype=torch.uint8),
    }
    return [first, empty]


def predict(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    model.eval()
    with torch.no_grad():
        return model(images())


def assert_same_predictions(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for pa, pb in zip(a, b, strict=True):
        assert pa.keys() == pb.keys() == {"boxes", "labels", "scores", "masks"}
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k


class InstanceContract:
    """What every instance backbone must do. Subclasses set ``backbone``."""

    backbone: str

    @pytest.fixture(scope="class")
    @classmethod
    def artifact(cls) -> ModelArtifact:
        return init_artifact(INSTANCE_ARCH, cls.backbone, OBJECTS, name=f"tiny-{cls.backbone}", height=SIZE, width=SIZE)

    def test_config(self, artifact: ModelArtifact) -> None:
        assert artifact.task == "instance"
        assert artifact.arch == INSTANCE_ARCH
        assert artifact.model.config == {  # type: ignore[union-attr]
            "_segray_arch": INSTANCE_ARCH,
            "encoder_name": self.backbone,
            "classes": OBJECTS.num_classes,
            "min_size": SIZE,
            "max_size": SIZE,
            "detections_per_img": 100,
        }
        # background + the label map's classes
        assert artifact.model.roi_heads.box_predictor.cls_score.out_features == OBJECTS.num_classes + 1  # type: ignore[union-attr]

    def test_eval_forward(self, artifact: ModelArtifact) -> None:
        out = predict(artifact.model)
        for pred, img in zip(out, images(), strict=True):
            n = len(pred["scores"])
            assert pred["boxes"].shape == (n, 4)
            assert pred["masks"].shape == (n, 1, *img.shape[1:])
            assert set(pred["labels"].tolist()) <= set(to_model_labels(torch.arange(OBJECTS.num_classes)).tolist())

    def test_train_forward_and_backward(self) -> None:
        model = build_instance_model(self.backbone, OBJECTS.num_classes, min_size=SIZE, max_size=SIZE)
        model.train()
        losses = model(images(), targets())
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()
        grads = [p.grad for p in model.roi_heads.mask_predictor.parameters()]  # type: ignore[union-attr]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)

    def test_local_round_trip(self, artifact: ModelArtifact, tmp_path: Path) -> None:
        sha = artifact.save(str(tmp_path / "art"))
        meta = json.loads((tmp_path / "art" / META).read_text())
        assert (meta["task"], meta["arch"]) == ("instance", INSTANCE_ARCH)
        assert LabelMap.from_dict(meta["label_map"]) == OBJECTS
        loaded = ModelArtifact.load(str(tmp_path / "art"))
        assert (loaded.task, loaded.arch, loaded.weights_sha256) == ("instance", INSTANCE_ARCH, sha)
        assert loaded.label_map == OBJECTS
        assert loaded.preprocessing == Preprocessing(height=SIZE, width=SIZE)
        assert not loaded.model.training
        assert_same_predictions(predict(loaded.model), predict(artifact.model))

    def test_s3_round_trip(self, artifact: ModelArtifact, s3_prefix: str) -> None:
        uri = f"{s3_prefix}/instance-{self.backbone}"
        artifact.save(uri)
        loaded = ModelArtifact.load(uri)
        assert loaded.model_id == artifact.model_id
        assert_same_predictions(predict(loaded.model), predict(artifact.model))
        info = read_info(uri)
        assert (info.task, info.model_id, info.label_map) == ("instance", artifact.model_id, OBJECTS)


class TestMobileNetSmall(InstanceContract):
    backbone = SMALL


class TestResNet50FPNv2(InstanceContract):
    backbone = "resnet50_fpn_v2"


def test_backbones_registry() -> None:
    assert set(INSTANCE_BACKBONES) == {"resnet50_fpn_v2", SMALL}
    assert {TestMobileNetSmall.backbone, TestResNet50FPNv2.backbone} == set(INSTANCE_BACKBONES)


def test_label_conversion_round_trip() -> None:
    classes = torch.tensor([0, 1, 1, 0])
    assert to_model_labels(classes).tolist() == [1, 2, 2, 1]
    assert torch.equal(to_class_index(to_model_labels(classes)), classes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "resnet18_fpn"}, "unknown instance backbone 'resnet18_fpn'"),
        ({"num_classes": 0}, "at least one object class"),
        ({"min_size": 96, "max_size": 64}, "min_size 96 and max_size 64"),
        ({"detections_per_img": 0}, "detections_per_img must be >= 1"),
    ],
)
def test_bad_builder_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"backbone": SMALL, "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_instance_model(**args)  # type: ignore[arg-type]


def test_semantic_artifacts_stay_semantic(tiny_model: str, tmp_path: Path) -> None:
    """A record without ``task`` (artifacts written before it existed) is a semantic model."""
    assert read_info(tiny_model).task == "semantic"
    assert ModelArtifact.load(tiny_model).task == "semantic"
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    meta = json.loads((old / META).read_text())
    meta.pop("task")
    (old / META).write_text(json.dumps(meta))
    assert read_info(str(old)).task == "semantic"
    assert ModelArtifact.load(str(old)).task == "semantic"


def test_unknown_task_refused(tiny_model: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    meta = json.loads((bad / META).read_text())
    meta["task"] = "panoptic"
    (bad / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unknown task 'panoptic'") as ei:
        read_info(str(bad))
    assert str(bad) in str(ei.value)
    with pytest.raises(ArtifactError, match="unknown task 'panoptic'"):
        ModelArtifact.load(str(bad))


def test_instance_arch_with_semantic_task_refused(tmp_path: Path) -> None:
    art = init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, height=SIZE, width=SIZE)
    art.save(str(tmp_path / "a"))
    meta = json.loads((tmp_path / "a" / META).read_text())
    meta["task"] = "semantic"
    (tmp_path / "a" / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unknown architecture 'maskrcnn' for a semantic model"):
        ModelArtifact.load(str(tmp_path / "a"))


def test_model_info_shows_task(tmp_path: Path) -> None:
    art = init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, name="shapes-rcnn", height=SIZE, width=SIZE)
    art.save(str(tmp_path / "a"))
    info = model_info(str(tmp_path / "a"))
    assert info["task"] == "instance"
    text = format_info(info)
    assert "task           instance" in text
    assert f"backbone {SMALL}" in text
    assert "square" in text and "disc" in text


# --- backbone weights ------------------------------------------------------------------------------


def test_whole_model_weights_file(tmp_path: Path) -> None:
    """A whole Mask R-CNN file fills every tensor that fits (here: all of them)."""
    torch.manual_seed(3)
    donor = build_instance_model(SMALL, 2, min_size=SIZE, max_size=SIZE)
    path = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    loaded = build_instance_model(SMALL, 2, min_size=SIZE, max_size=SIZE, backbone_weights=str(path))
    for k, v in donor.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_classification_weights_fill_the_body(s3_prefix: str, tmp_path: Path) -> None:
    """torchvision's ImageNet classifier keys (``features.*``) land in the backbone body, from S3."""
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(5)
    classifier = mobilenet_v3_small(weights=None)
    local = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(local))
    uri = f"{s3_prefix}/weights/mobilenet_v3_small.safetensors"
    storage.write_bytes(uri, local.read_bytes())
    plain = init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, height=SIZE, width=SIZE)
    art = init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, height=SIZE, width=SIZE, encoder_weights=uri)
    assert art.encoder_weights == uri
    body = art.model.backbone.body.state_dict()  # type: ignore[union-attr]
    want = {k.removeprefix("features."): v for k, v in classifier.state_dict().items() if k.startswith("features.")}
    taken = [k for k in body if k in want]
    assert len(taken) == len(body)  # the body is MobileNetV3-Small's features, all of them
    for k in taken:
        assert torch.equal(body[k], want[k]), k
    # the heads are left as built (same seed as the plain artifact)
    for k, v in plain.model.roi_heads.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(art.model.roi_heads.state_dict()[k], v), k  # type: ignore[union-attr]


def test_weights_matching_nothing_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match=f"{path}: no tensor matches the {SMALL} Mask R-CNN"):
        build_instance_model(SMALL, 2, backbone_weights=str(path))
    model = build_instance_model(SMALL, 2)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_backbone_weights(model, {"x": torch.zeros(1)}, "x.safetensors")


def test_pickled_weights_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    pth = tmp_path / "maskrcnn_coco.pth"
    write_booby_trapped_pickle(pth, marker)
    with pytest.raises(ArtifactError, match=r"\.safetensors file .*pickled checkpoints .* are refused"):
        init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, height=SIZE, width=SIZE, encoder_weights=str(pth))
    assert not marker.exists()


def test_weights_name_refused_offline() -> None:
    with pytest.raises(ArtifactError, match="'imagenet': Mask R-CNN backbone weights are a local or s3://"):
        init_artifact(INSTANCE_ARCH, SMALL, OBJECTS, height=SIZE, width=SIZE, encoder_weights="imagenet")
    with pytest.raises(ValueError, match="weights are not downloaded by name"):
        build_instance_model(SMALL, 2, backbone_weights="coco")


def test_missing_weights_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(ValueError, match=f"{missing}: no such weights file"):
        build_instance_model(SMALL, 2, backbone_weights=str(missing))


def test_cli_model_init_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "shapes.json"
    labels.write_text(json.dumps(OBJECTS.to_dict()))
    out = tmp_path / "cli-rcnn"
    argv = ["model", "init", "--arch", INSTANCE_ARCH, "--encoder", SMALL, "--labels", str(labels)]
    assert cli.main([*argv, "--height", "64", "--width", "96", str(out)]) == 0
    loaded = ModelArtifact.load(str(out))
    assert (loaded.task, loaded.label_map) == ("instance", OBJECTS)
    assert loaded.model.config["min_size"] == 64 and loaded.model.config["max_size"] == 96  # type: ignore[index]
    capsys.readouterr()
    assert cli.main(["model", "info", str(out)]) == 0
    assert "task           instance" in capsys.readouterr().out
