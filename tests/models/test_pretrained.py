"""Pretrained encoder starts: smp's named weights (``imagenet``, ...) and their clear offline failure,
and ``segray model convert-weights`` (a .pth checkpoint read without unpickling code -> safetensors)
loading into a UNet's encoder. No Ray; the Hugging Face cache is a per-test empty folder."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers.common import TINY_ENCODER
from safetensors.torch import load_file, save_file

from segray import cli, storage
from segray.labels import CAMVID
from segray.models import encoder_weight_names
from segray.models.artifact import CONFIG, META, ArtifactError, init_artifact
from segray.models.convert import convert_weights

SIZE = 64
#: The pinned revision smp 0.6.0 fetches resnet18's ImageNet weights at (its pretrained_settings).
RESNET18_IMAGENET = ("smp-hub/resnet18.imagenet", "3f2325ff978283d47aa6a1d6878ca20565622683")


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, so a developer's cached weights cannot make 'offline' succeed."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's way to say 'no network': huggingface_hub's own switch, honoured at call time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def assert_offline_message(message: str) -> None:
    assert "'imagenet' for resnet18 could not be downloaded (no network?)" in message
    assert "segray model convert-weights IN.pth OUT.safetensors" in message
    assert "model.encoder_weights: /path/OUT.safetensors" in message


# --- named weights ---------------------------------------------------------------------------------


def test_imagenet_without_network_fails_with_the_way_out() -> None:
    """No mocks: this machine has no network, so the Hub probe fails and the build fails fast."""
    from segray.models.artifact import _hub_reachable

    if _hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable here; test_imagenet_offline_mode covers the message")
    with pytest.raises(ValueError) as ei:
        init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights="imagenet")
    assert_offline_message(str(ei.value))


def test_imagenet_offline_mode(hub_offline: None) -> None:
    with pytest.raises(ValueError) as ei:
        init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights="imagenet")
    assert_offline_message(str(ei.value))
    assert "https://huggingface.co/smp-hub/resnet18.imagenet" in str(ei.value)


def test_cli_imagenet_offline_exits_2(hub_offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    rc = cli.main(["model", "init", "--encoder", "resnet18", "--encoder-weights", "imagenet", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("segray: error: ")
    assert_offline_message(err)
    assert not out.exists()


def test_imagenet_from_the_hub_cache_offline(hub_offline: None, empty_hub_cache: Path, tmp_path: Path) -> None:
    """Weights smp fetched earlier (here: planted in the cache) load offline, and the saved artifact
    records the name in segray.json but not in config.json, so loading it never downloads."""
    repo, revision = RESNET18_IMAGENET
    snapshot = empty_hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(99)
    donor = init_artifact("unet", "resnet18", CAMVID, seed=99).model.encoder.state_dict()
    save_file({k: v.contiguous() for k, v in donor.items()}, str(snapshot / "model.safetensors"))

    art = init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights="imagenet")
    got = art.model.encoder.state_dict()
    assert got.keys() == donor.keys()
    assert all(torch.equal(got[k], donor[k]) for k in donor)

    art.save(str(tmp_path / "model"))
    assert json.loads((tmp_path / "model" / CONFIG).read_text())["encoder_weights"] is None
    assert json.loads((tmp_path / "model" / META).read_text())["encoder_weights"] == "imagenet"


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as ei:
        init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights="imagenett")
    msg = str(ei.value)
    assert "'imagenett'" in msg and "resnet18" in msg
    assert "['imagenet', 'ssl', 'swsl']" in msg


def test_timm_encoder_takes_imagenet() -> None:
    assert encoder_weight_names(TINY_ENCODER) == ["imagenet"]
    with pytest.raises(ValueError, match=rf"'ssl' for {TINY_ENCODER}; smp has \['imagenet'\]"):
        init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, encoder_weights="ssl")


def test_fcn_refuses_a_weights_name() -> None:
    with pytest.raises(ValueError, match=r"fcn takes encoder weights as a \.safetensors file only.*convert-weights"):
        init_artifact("fcn", "resnet50", CAMVID, height=SIZE, width=SIZE, encoder_weights="imagenet")


def test_a_pth_file_is_not_taken_for_a_name() -> None:
    with pytest.raises(ArtifactError, match=r"must be a \.safetensors file.*convert-weights"):
        init_artifact("unet", "resnet18", CAMVID, encoder_weights="weights.pth")


# --- convert-weights -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_resnet18() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(5)
    return torchvision.models.resnet18(weights=None).state_dict()


def assert_unet_encoder_is(converted: Path, tv: dict[str, torch.Tensor]) -> None:
    """Every UNet-ResNet18 encoder tensor came from the torchvision checkpoint, exactly."""
    art = init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights=str(converted))
    enc = art.model.encoder.state_dict()
    matched = [k for k in enc if k in tv and torch.equal(enc[k], tv[k])]
    assert len(matched) == len(enc)  # num_batches_tracked included: torchvision's file has them too
    assert set(tv) - set(enc) == {"fc.weight", "fc.bias"}


def test_convert_torchvision_resnet18(
    torchvision_resnet18: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pth, out = tmp_path / "resnet18.pth", tmp_path / "resnet18.safetensors"
    torch.save(torchvision_resnet18, pth)
    assert cli.main(["model", "convert-weights", str(pth), str(out)]) == 0
    assert f"wrote {len(torchvision_resnet18)} tensors to {out}" in capsys.readouterr().out
    assert load_file(str(out)).keys() == torchvision_resnet18.keys()
    assert_unet_encoder_is(out, torchvision_resnet18)


def test_convert_wrapped_ddp_checkpoint_with_encoder_check(
    torchvision_resnet18: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pth, out = tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors"
    torch.save({"state_dict": {f"module.{k}": v for k, v in torchvision_resnet18.items()}, "epoch": 3}, pth)
    assert cli.main(["model", "convert-weights", str(pth), str(out), "--encoder", "resnet18"]) == 0
    printed = capsys.readouterr().out
    n_encoder = len(torchvision_resnet18) - 2  # all but fc.weight, fc.bias
    assert f"wrote {len(torchvision_resnet18)} tensors" in printed
    assert f"{n_encoder} of {n_encoder} unet/resnet18 encoder tensors match" in printed
    assert load_file(str(out)).keys() == torchvision_resnet18.keys()
    assert_unet_encoder_is(out, torchvision_resnet18)


def test_convert_refuses_a_file_that_fits_no_encoder_tensor(tmp_path: Path) -> None:
    pth, out = tmp_path / "other.pth", tmp_path / "other.safetensors"
    torch.save({"head.weight": torch.zeros(3, 3)}, pth)
    with pytest.raises(ValueError, match="none of its 1 tensors fits the resnet18 encoder"):
        convert_weights(str(pth), str(out), encoder="resnet18")
    assert not out.exists()


def test_convert_refuses_junk(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.pth: not a PyTorch checkpoint"):
        convert_weights(str(tmp_path / "junk.pth"), str(tmp_path / "junk.safetensors"))


def test_convert_shared_storage_tensors(tmp_path: Path) -> None:
    """Tied weights (views of one storage) are written as separate tensors, which safetensors needs."""
    base = torch.arange(12.0)
    pth, out = tmp_path / "tied.pth", tmp_path / "tied.safetensors"
    torch.save({"a": base, "b": base[:6].view(2, 3), "c": base.view(3, 4).t()}, pth)
    assert convert_weights(str(pth), str(out)).tensors == 3
    got = load_file(str(out))
    assert torch.equal(got["c"], base.view(3, 4).t())


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_payload_fires_when_unpickled(tmp_path: Path) -> None:
    """The payload is real, so 'no marker' below means 'never unpickled'."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_convert_refuses_a_pickle_with_a_payload(how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker, pth, out = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "evil.safetensors"
    if how == "pickle":
        pth.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload(marker)}, pth)
    assert cli.main(["model", "convert-weights", str(pth), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{pth}: refused" in err
    assert "only plain tensor checkpoints" in err
    assert not marker.exists()
    assert not out.exists()


def test_converted_file_from_s3(torchvision_resnet18: dict[str, torch.Tensor], s3_prefix: str, tmp_path: Path) -> None:
    """Both ends on S3; the stem's tensors only, to keep the transfer small."""
    stem = {k: v for k, v in torchvision_resnet18.items() if k.startswith(("conv1.", "bn1."))}
    pth = tmp_path / "stem.pth"
    torch.save(stem, pth)
    src, dst = f"{s3_prefix}/in/stem.pth", f"{s3_prefix}/out/stem.safetensors"
    storage.write_bytes(src, pth.read_bytes())
    assert convert_weights(src, dst).tensors == len(stem)
    art = init_artifact("unet", "resnet18", CAMVID, height=SIZE, width=SIZE, encoder_weights=dst)
    enc = art.model.encoder.state_dict()
    assert all(torch.equal(enc[k], v) for k, v in stem.items())
