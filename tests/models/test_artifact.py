"""Model artifacts: save/load round trips (local and S3), checksums, pickle refusal, encoder weights,
and the `segray model init` command. One shared contract class, one short subclass per architecture
(as segmentation-models-pytorch's shared model tests do)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers.common import TINY_ENCODER
from helpers.pickles import write_booby_trapped_pickle
from safetensors.torch import load_file, save_file

from segray import cli, storage
from segray.labels import CAMVID, LabelMap
from segray.models.artifact import (
    CONFIG,
    META,
    PICKLE_NAMES,
    WEIGHTS,
    ArtifactError,
    ModelArtifact,
    init_artifact,
    read_info,
)
from segray.models.preprocessing import Preprocessing

SIZE = 64


def fixed_input() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(2, 3, SIZE, SIZE, generator=g)


def run(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(fixed_input())


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_booby_trap_works(tmp_path: Path) -> None:
    """The trap used below really fires when unpickled, so 'marker absent' means 'never unpickled'."""
    marker = tmp_path / "fired"
    write_booby_trapped_pickle(tmp_path / "trap.bin", marker)
    assert not marker.exists()
    torch.load(tmp_path / "trap.bin", weights_only=False)
    assert marker.exists()


class ArtifactContract:
    """What every architecture's artifact must do. Subclasses set ``arch``."""

    arch: str

    @pytest.fixture(scope="class")
    @classmethod
    def artifact(cls) -> ModelArtifact:
        return init_artifact(cls.arch, TINY_ENCODER, CAMVID, name=f"tiny-{cls.arch}", height=SIZE, width=SIZE)

    @pytest.fixture
    def saved(self, artifact: ModelArtifact, tmp_path: Path) -> Path:
        path = tmp_path / f"art-{self.arch}"
        artifact.save(str(path))
        return path

    def test_init(self, artifact: ModelArtifact) -> None:
        assert artifact.arch == self.arch
        assert artifact.name == f"tiny-{self.arch}"
        assert artifact.preprocessing == Preprocessing(height=SIZE, width=SIZE)
        assert not artifact.model.training
        assert run(artifact.model).shape == (2, CAMVID.num_classes, SIZE, SIZE)

    def test_saved_layout(self, artifact: ModelArtifact, saved: Path) -> None:
        assert sorted(p.name for p in saved.iterdir()) == sorted([CONFIG, META, WEIGHTS])
        meta = json.loads((saved / META).read_text())
        assert meta["format_version"] == 1
        assert meta["arch"] == self.arch
        assert meta["name"] == f"tiny-{self.arch}"
        assert meta["weights_sha256"] == hashlib.sha256((saved / WEIGHTS).read_bytes()).hexdigest()
        assert meta["weights_sha256"] == artifact.weights_sha256
        assert LabelMap.from_dict(meta["label_map"]) == CAMVID
        config = json.loads((saved / CONFIG).read_text())
        assert config["encoder_name"] == TINY_ENCODER
        assert config["classes"] == CAMVID.num_classes

    def test_local_round_trip(self, artifact: ModelArtifact, saved: Path) -> None:
        loaded = ModelArtifact.load(str(saved))
        assert loaded.weights_sha256 == artifact.weights_sha256
        assert len(loaded.weights_sha256) == 64
        assert loaded.model_id == artifact.model_id == f"tiny-{self.arch}@{artifact.weights_sha256[:12]}"
        assert (loaded.arch, loaded.name) == (self.arch, artifact.name)
        assert loaded.label_map == CAMVID
        assert loaded.preprocessing == artifact.preprocessing
        assert not loaded.model.training
        assert_same_state(loaded.model, artifact.model)
        assert torch.equal(run(loaded.model), run(artifact.model))

    def test_s3_round_trip(self, artifact: ModelArtifact, s3_prefix: str) -> None:
        uri = f"{s3_prefix}/{self.arch}"
        sha = artifact.save(uri)
        assert storage.exists(storage.join(uri, META))
        loaded = ModelArtifact.load(uri)
        assert loaded.weights_sha256 == sha == artifact.weights_sha256
        assert loaded.model_id == artifact.model_id
        assert torch.equal(run(loaded.model), run(artifact.model))
        info = read_info(uri)
        assert (info.uri, info.model_id) == (uri, artifact.model_id)

    def test_read_info_matches(self, artifact: ModelArtifact, saved: Path) -> None:
        info = read_info(str(saved))
        assert info.uri == str(saved)
        assert info.name == artifact.name
        assert info.weights_sha256 == artifact.weights_sha256
        assert info.model_id == artifact.model_id
        assert info.label_map == CAMVID
        assert info.preprocessing == Preprocessing(height=SIZE, width=SIZE)

    def test_tampered_weights_refused(self, saved: Path) -> None:
        weights = bytearray((saved / WEIGHTS).read_bytes())
        weights[-1] ^= 0x01  # one bit of one tensor value
        (saved / WEIGHTS).write_bytes(bytes(weights))
        with pytest.raises(ArtifactError, match="checksum") as ei:
            ModelArtifact.load(str(saved))
        assert str(saved) in str(ei.value)

    def test_pickled_weights_refused_and_never_unpickled(self, saved: Path, tmp_path: Path) -> None:
        marker = tmp_path / "unpickled-marker"
        (saved / WEIGHTS).unlink()
        write_booby_trapped_pickle(saved / "pytorch_model.bin", marker)
        with pytest.raises(ArtifactError, match="pickle") as ei:
            ModelArtifact.load(str(saved))
        assert "pytorch_model.bin" in str(ei.value)
        assert not marker.exists()

    def test_cli_model_init(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        out = tmp_path / "cli-model"
        argv = ["model", "init", "--arch", self.arch, "--encoder", TINY_ENCODER, "--name", "from-cli"]
        rc = cli.main([*argv, "--height", "64", "--width", "96", str(out)])
        assert rc == 0
        loaded = ModelArtifact.load(str(out))
        assert loaded.arch == self.arch
        assert loaded.name == "from-cli"
        assert loaded.preprocessing == Preprocessing(height=64, width=96)
        assert loaded.label_map == CAMVID
        assert loaded.model_id in capsys.readouterr().out
        assert run(loaded.model).shape == (2, CAMVID.num_classes, SIZE, SIZE)


class TestUnet(ArtifactContract):
    arch = "unet"


class TestPSPNet(ArtifactContract):
    arch = "pspnet"


# --- architecture-independent checks (on the session's tiny UNet) ----------------------------


@pytest.fixture
def tiny_copy(tiny_model: str, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(tiny_model, dst)
    return dst


@pytest.mark.parametrize("name", PICKLE_NAMES)
def test_every_pickle_name_refused(tiny_copy: Path, tmp_path: Path, name: str) -> None:
    marker = tmp_path / "marker"
    (tiny_copy / WEIGHTS).unlink()
    write_booby_trapped_pickle(tiny_copy / name, marker)
    with pytest.raises(ArtifactError, match=f"pickle \\({name}\\)"):
        ModelArtifact.load(str(tiny_copy))
    assert not marker.exists()


def test_missing_weights_refused(tiny_copy: Path) -> None:
    (tiny_copy / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match=f"no {WEIGHTS}"):
        ModelArtifact.load(str(tiny_copy))


def test_missing_artifact_path_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ArtifactError, match="no such model artifact") as ei:
        ModelArtifact.load(str(missing))
    assert str(missing) in str(ei.value)
    with pytest.raises(ArtifactError, match="no such model artifact"):
        read_info(str(missing))


def test_missing_artifact_on_s3_named(s3_prefix: str) -> None:
    uri = f"{s3_prefix}/absent-model"
    with pytest.raises(ArtifactError, match="no such model artifact") as ei:
        ModelArtifact.load(uri)
    assert uri in str(ei.value)


def test_folder_without_meta_is_not_an_artifact(tiny_copy: Path) -> None:
    (tiny_copy / META).unlink()
    with pytest.raises(ArtifactError, match=f"not a segray model artifact \\(no {META}\\)"):
        ModelArtifact.load(str(tiny_copy))


def test_corrupt_meta_json(tiny_copy: Path) -> None:
    (tiny_copy / META).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON") as ei:
        read_info(str(tiny_copy))
    assert META in str(ei.value)


def test_invalid_safetensors_with_matching_checksum_refused(tiny_copy: Path) -> None:
    junk = b"\x08\x00\x00\x00\x00\x00\x00\x00not-json"
    (tiny_copy / WEIGHTS).write_bytes(junk)
    meta = json.loads((tiny_copy / META).read_text())
    meta["weights_sha256"] = hashlib.sha256(junk).hexdigest()
    (tiny_copy / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        ModelArtifact.load(str(tiny_copy))


def test_label_map_class_count_mismatch_refused(tiny_copy: Path) -> None:
    meta = json.loads((tiny_copy / META).read_text())
    meta["label_map"]["classes"] = meta["label_map"]["classes"][:5]
    (tiny_copy / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="11 output classes but the label map has 5"):
        ModelArtifact.load(str(tiny_copy))


# --- encoder weights -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def donor() -> ModelArtifact:
    """A model whose encoder differs from the seed-0 default (different seed)."""
    return init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, seed=7)


def test_encoder_weights_from_safetensors(donor: ModelArtifact, tmp_path: Path) -> None:
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in donor.model.encoder.state_dict().items()}, str(path))
    plain = init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE)
    loaded = init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, encoder_weights=str(path))
    want = load_file(str(path))
    got = loaded.model.encoder.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the file really changed something: the default init's encoder differs
    assert not torch.equal(plain.model.encoder.state_dict()["model.conv_stem.weight"], want["model.conv_stem.weight"])
    # decoder untouched: same seed, same decoder as the plain init
    assert_same_state(loaded.model.decoder, plain.model.decoder)


def test_encoder_weights_from_whole_model_file_on_s3(donor: ModelArtifact, s3_prefix: str, tmp_path: Path) -> None:
    """A whole smp model's state dict ("encoder." prefixed keys) works too, read from S3."""
    local = tmp_path / "whole.safetensors"
    save_file({k: v.contiguous() for k, v in donor.model.state_dict().items()}, str(local))
    uri = f"{s3_prefix}/weights/whole.safetensors"
    storage.write_bytes(uri, local.read_bytes())
    loaded = init_artifact("pspnet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, encoder_weights=uri)
    assert_same_state(loaded.model.encoder, donor.model.encoder)


def test_encoder_weights_pth_refused_without_unpickling(donor: ModelArtifact, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "encoder.pth"
    write_booby_trapped_pickle(path, marker)
    with pytest.raises(ArtifactError, match=r"must be a \.safetensors file") as ei:
        init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, encoder_weights=str(path))
    assert str(path) in str(ei.value)
    assert not marker.exists()


def test_encoder_weights_matching_nothing_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match="no tensor matches the encoder"):
        init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, encoder_weights=str(path))


def test_cli_encoder_weights_pth_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "marker"
    pth = tmp_path / "enc.pth"
    write_booby_trapped_pickle(pth, marker)
    out = tmp_path / "never"
    rc = cli.main(["model", "init", "--encoder", TINY_ENCODER, "--encoder-weights", str(pth), str(out)])
    assert rc == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not out.exists()
    assert not marker.exists()


def test_unpickling_is_not_what_torch_load_weights_only_does(tmp_path: Path) -> None:
    """Sanity for the trap: the default safe loader refuses it too (the refusal is not luck)."""
    marker = tmp_path / "m"
    write_booby_trapped_pickle(tmp_path / "t.bin", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "t.bin", weights_only=True)
    assert not marker.exists()
