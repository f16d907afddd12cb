"""Band models: an artifact whose preprocessing names N scene bands takes (N, C, H, W) inputs in the
scenes' raw units (uint16 Sentinel-2 reflectance here), round-trips through the artifact with its
bands and normalisation, and is made and shown by `segray model init --bands` / `segray model info`.
RGB artifacts (no bands) read and behave as they always have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.cli import run
from helpers.common import TINY_ENCODER
from safetensors.torch import save_file

from segray.labels import CAMVID
from segray.models import adapt_first_conv, build_model, first_conv, load_encoder_weights, model_in_channels
from segray.models.artifact import CONFIG, META, ArtifactError, ModelArtifact, init_artifact, read_info
from segray.models.info import format_info, model_info
from segray.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, normalise, pixel_stats
from segray.recipe import ModelConfig
from segray.tasks.semantic.init import freeze_unused, initial_model

SIZE = 64
BANDS = ("B04", "B03", "B02", "B08")
#: Per-band mean/std of Sentinel-2 L2A reflectance (raw uint16 units), roughly.
MEAN = (1200.0, 1100.0, 950.0, 2600.0)
STD = (800.0, 700.0, 650.0, 1100.0)
#: The ``preprocessing`` record every RGB artifact has carried: no ``bands`` key.
RGB_RECORD = {
    "height": SIZE,
    "width": SIZE,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "policy": "resize",
    "hflip_average": False,
}


def scenes(n: int = 2, seed: int = 0) -> torch.Tensor:
    """(n, 4, SIZE, SIZE) uint16 reflectance-like values."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10_000, (n, len(BANDS), SIZE, SIZE), generator=g).to(torch.uint16)


@pytest.fixture(scope="module")
def band_artifact() -> ModelArtifact:
    return init_artifact(
        "unet", TINY_ENCODER, CAMVID, name="s2-unet", height=SIZE, width=SIZE, bands=BANDS, band_mean=MEAN, band_std=STD
    )


def logits(art: ModelArtifact, x: torch.Tensor) -> torch.Tensor:
    mean, std = art.preprocessing.stats()
    with torch.no_grad():
        return art.model(normalise(x, mean, std))


def test_band_artifact_round_trips(band_artifact: ModelArtifact, tmp_path: Path) -> None:
    pre = band_artifact.preprocessing
    assert (pre.bands, pre.mean, pre.std, pre.channels) == (BANDS, MEAN, STD, 4)
    assert model_in_channels(band_artifact.model) == 4
    want = logits(band_artifact, scenes())
    assert want.shape == (2, CAMVID.num_classes, SIZE, SIZE)
    sha = band_artifact.save(str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / META).read_text())
    assert meta["preprocessing"]["bands"] == list(BANDS)
    assert meta["preprocessing"]["mean"] == list(MEAN) and meta["preprocessing"]["std"] == list(STD)
    assert json.loads((tmp_path / "m" / CONFIG).read_text())["in_channels"] == 4
    loaded = ModelArtifact.load(str(tmp_path / "m"))
    assert loaded.preprocessing == pre and loaded.preprocessing.channels == 4
    assert loaded.model_id == band_artifact.model_id == f"s2-unet@{sha[:12]}"
    assert torch.equal(logits(loaded, scenes()), want)
    assert read_info(str(tmp_path / "m")).preprocessing == pre


def test_rgb_record_is_unchanged_and_reads_as_rgb(tiny_model: str) -> None:
    assert Preprocessing(height=SIZE, width=SIZE).to_dict() == RGB_RECORD
    pre = Preprocessing.from_dict(RGB_RECORD)
    assert (pre.bands, pre.channels, pre.pixel_scale) == ((), 3, 255.0)
    meta = json.loads(Path(tiny_model, META).read_text())
    assert meta["preprocessing"] == RGB_RECORD  # what artifacts wrote before bands existed
    loaded = ModelArtifact.load(tiny_model)
    assert loaded.preprocessing.channels == 3 and model_in_channels(loaded.model) == 3
    assert loaded.model_id == f"tiny-unet@{meta['weights_sha256'][:12]}"
    assert model_info(tiny_model)["model_id"] == loaded.model_id


def test_rgb_normalisation_is_on_the_8_bit_scale_and_bands_on_raw_units() -> None:
    m, s = Preprocessing().stats()
    assert m.shape == s.shape == (1, 3, 1, 1)
    assert torch.allclose(m.flatten(), torch.tensor(IMAGENET_MEAN) * 255)
    assert torch.allclose(s.flatten(), torch.tensor(IMAGENET_STD) * 255)
    frame = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    want = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(normalise(frame, m, s)[0, :, 0, 0], want)
    pre = Preprocessing(height=SIZE, width=SIZE, bands=BANDS, mean=MEAN, std=STD)
    m, s = pre.stats()
    assert m.shape == (1, 4, 1, 1) and torch.equal(m.flatten(), torch.tensor(MEAN))
    x = torch.tensor(MEAN).add(torch.tensor(STD)).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    for dtype in (torch.uint16, torch.int16, torch.float32):
        src = x.to(dtype).clone()
        out = normalise(src, m, s)
        assert out.dtype == torch.float32 and torch.allclose(out, torch.ones(1, 4, 2, 2)), dtype
        assert torch.equal(src, x.to(dtype))  # the caller's tensor is not normalised in place
    with pytest.raises(ValueError, match=r"dtype int64: segray normalises uint8, uint16, int16, float32"):
        normalise(x.to(torch.int64), m, s)
    with pytest.raises(ValueError, match=r"shape \(1, 3, 2, 2\): the model takes \(N, 4, H, W\)"):
        normalise(frame, m, s)
    assert pixel_stats(MEAN, STD, scale=1.0)[1].shape == (1, 4, 1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": BANDS, "mean": MEAN[:3], "std": STD}, r"4 input channels need 4 mean and 4 std values, got 3 mean"),
        (
            {"bands": BANDS, "mean": MEAN, "std": (800.0, 0.0, 650.0, 1100.0)},
            r"std 0.0 of band 'B03' must be a positive number",
        ),
        (
            {"bands": BANDS, "mean": (1.0, float("nan"), 1.0, 1.0), "std": STD},
            r"mean nan of band 'B03' is not a finite number",
        ),
        ({"bands": ("B04", "B03", "B04"), "mean": MEAN[:3], "std": STD[:3]}, r"band 'B04' is named twice"),
        ({"bands": ("0", "1"), "mean": (0.0, 0.0), "std": (1.0, 1.0)}, r"band '0': band indexes start at 1"),
        ({"bands": ("B04", " B03"), "mean": (0.0, 0.0), "std": (1.0, 1.0)}, r"band ' B03': a band is a non-empty"),
        ({"bands": ("B04", ""), "mean": (0.0, 0.0), "std": (1.0, 1.0)}, r"band '': a band is a non-empty"),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, r"3 input channels need 3 mean and 3 std values, got 2"),
        ({"std": (0.2, -0.1, 0.2)}, r"std -0.1 of RGB channel 2 must be a positive"),
    ],
)
def test_invalid_bands_and_stats_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Preprocessing(height=SIZE, width=SIZE, **kwargs)


def test_index_bands_and_list_inputs() -> None:
    pre = Preprocessing.from_dict({**RGB_RECORD, "bands": ["3", "2", "1"], "mean": [1, 2, 3], "std": [4, 5, 6]})
    assert pre.bands == ("3", "2", "1") and pre.mean == (1.0, 2.0, 3.0) and pre.pixel_scale == 1.0
    assert pre.to_dict()["bands"] == ["3", "2", "1"]
    with pytest.raises(ValueError, match=r"preprocessing.bands must be a list of band names, not 'B04'"):
        Preprocessing.from_dict({**RGB_RECORD, "bands": "B04"})


def test_init_refusals_and_the_default_normalisation() -> None:
    with pytest.warns(UserWarning, match=r"bands \['B04', 'B08'\] have no mean/std: .*raw values"):
        art = init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, bands=("B04", "B08"))
    assert (art.preprocessing.mean, art.preprocessing.std) == ((0.0, 0.0), (1.0, 1.0))
    with pytest.raises(ArtifactError, match="give both the bands' mean and their std"):
        init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, bands=BANDS, band_mean=MEAN)
    with pytest.raises(ArtifactError, match="band mean/std are for a band model"):
        init_artifact("unet", TINY_ENCODER, CAMVID, height=SIZE, width=SIZE, band_mean=MEAN, band_std=STD)
    with pytest.raises(ArtifactError, match=r"std -1.0 of band 'B08' must be a positive number"):
        init_artifact("unet", TINY_ENCODER, CAMVID, bands=BANDS, band_mean=MEAN, band_std=(1.0, 1.0, 1.0, -1.0))
    with pytest.raises(ArtifactError, match=r"in_channels=3 contradicts the input: 4 bands"):
        init_artifact(
            "unet", TINY_ENCODER, CAMVID, bands=BANDS, band_mean=MEAN, band_std=STD, model_kwargs={"in_channels": 3}
        )
    with pytest.raises(ArtifactError, match="maskrcnn takes RGB frames only"):
        init_artifact("maskrcnn", "resnet50", CAMVID, bands=BANDS, band_mean=MEAN, band_std=STD)
    with pytest.raises(ValueError, match="maskrcnn takes RGB frames only"):
        build_model("maskrcnn", "resnet50", 3, in_channels=4)


def test_load_refuses_a_config_of_other_channels_than_the_bands(band_artifact: ModelArtifact, tmp_path: Path) -> None:
    band_artifact.save(str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / META).read_text())
    meta["preprocessing"] = {**meta["preprocessing"], "bands": ["B04", "B03", "B02"], "mean": MEAN[:3], "std": STD[:3]}
    (tmp_path / "m" / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"config.json builds a model of 4 input channels but .* gives it 3"):
        ModelArtifact.load(str(tmp_path / "m"))
    del meta["preprocessing"]["bands"]  # RGB
    (tmp_path / "m" / META).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"4 input channels but segray.json's preprocessing gives it 3 \(RGB\)"):
        ModelArtifact.load(str(tmp_path / "m"))


@pytest.mark.parametrize("in_channels", [1, 2, 4, 10])
def test_first_conv_is_adapted_as_smp_and_timm_adapt_pretrained_weights(in_channels: int) -> None:
    from segmentation_models_pytorch.encoders._utils import patch_first_conv
    from timm.models import adapt_input_conv

    conv = torch.nn.Conv2d(3, 8, 3)
    weight = conv.weight.detach().clone()
    patch_first_conv(torch.nn.Sequential(conv), in_channels, pretrained=True)
    ours = adapt_first_conv(weight, in_channels)
    assert ours.shape == (8, in_channels, 3, 3)
    assert torch.allclose(ours, conv.weight.detach())
    assert torch.allclose(ours, adapt_input_conv(in_channels, weight))


@pytest.mark.parametrize(("arch", "encoder", "kwargs"), [("unet", TINY_ENCODER, {}), ("fcn", "resnet50", {})])
def test_rgb_encoder_weights_start_a_band_model(arch: str, encoder: str, kwargs: dict, tmp_path: Path) -> None:
    """A 3-channel weights file (torchvision's, timm's ImageNet) fills a 4-band model's encoder; its first
    convolution is adapted (repeated and scaled), every other tensor copied as it is."""
    donor = build_model(arch, encoder, 3, **kwargs)
    state = {k: v.contiguous() for k, v in donor.get_submodule("encoder").state_dict().items()}
    path = tmp_path / "rgb.safetensors"
    save_file(state, str(path))
    bands = {"bands": BANDS, "band_mean": MEAN, "band_std": STD}
    art = init_artifact(arch, encoder, CAMVID, height=SIZE, width=SIZE, encoder_weights=str(path), **bands)
    stem, _ = first_conv(art.model)
    got = art.model.get_submodule("encoder").state_dict()
    assert got[f"{stem}.weight"].shape[1] == 4 and state[f"{stem}.weight"].shape[1] == 3
    assert torch.allclose(got[f"{stem}.weight"], adapt_first_conv(state[f"{stem}.weight"], 4))
    assert all(torch.equal(got[k], v) for k, v in state.items() if k != f"{stem}.weight")
    assert logits(art, scenes(1)).shape == (1, CAMVID.num_classes, SIZE, SIZE)


def test_other_stem_shapes_are_refused_naming_the_layer() -> None:
    model = build_model("unet", TINY_ENCODER, 3, in_channels=4)
    stem, conv = first_conv(model)
    wrong = torch.zeros(conv.out_channels + 1, 3, *conv.kernel_size)
    with pytest.raises(ValueError, match=rf"e.g. {stem}.weight: \({conv.out_channels + 1}, 3,"):
        load_encoder_weights(model, {f"encoder.{stem}.weight": wrong}, "file")


def test_fine_tuning_from_a_band_artifact_keeps_its_channels(band_artifact: ModelArtifact, tmp_path: Path) -> None:
    band_artifact.save(str(tmp_path / "m"))
    cfg = ModelConfig(arch="unet", encoder=TINY_ENCODER, init_artifact=str(tmp_path / "m"), height=SIZE, width=SIZE)
    model = initial_model(cfg, CAMVID)
    assert model_in_channels(model) == 4
    stem = f"encoder.{first_conv(model)[0]}.weight"
    assert torch.equal(model.state_dict()[stem], band_artifact.model.state_dict()[stem])
    assert freeze_unused(model, SIZE, SIZE, "cpu", channels=4) == []


def test_cli_model_init_with_bands_and_model_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s2"
    argv = ["model", "init", "--encoder", TINY_ENCODER, "--height", "64", "--width", "64", "--bands", "B04,B03,B02,B08"]
    code, text = run(capsys, *argv, "--band-mean", "1200,1100,950,2600", "--band-std", "800,700,650,1100", str(out))
    assert code == 0 and "input: 4 bands B04, B03, B02, B08" in text
    loaded = ModelArtifact.load(str(out))
    assert loaded.preprocessing == Preprocessing(height=SIZE, width=SIZE, bands=BANDS, mean=MEAN, std=STD)
    assert logits(loaded, scenes(1)).shape == (1, CAMVID.num_classes, SIZE, SIZE)
    code, text = run(capsys, "model", "info", str(out))
    assert code == 0 and "bands 4 input channels, in this order: B04, B03, B02, B08" in text
    assert "B04 mean 1200, std 800 B03 mean 1100, std 700" in text and "RGB, 0-1 scale" not in text
    code, text = run(capsys, "model", "info", "--json", str(out))
    info = json.loads(text)
    assert info["preprocessing"]["bands"] == list(BANDS) and info["preprocessing"]["std"] == list(STD)
    assert info["config"]["in_channels"] == 4


def test_cli_model_init_band_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init = ["model", "init", "--encoder", TINY_ENCODER, "--height", "64", "--width", "64"]
    code, text = run(capsys, *init, "--band-mean", "1,2", str(tmp_path / "a"))
    assert code == 2 and "--band-mean/--band-std need --bands" in text
    code, text = run(
        capsys, *init, "--bands", "B04,B08", "--band-mean", "1,x", "--band-std", "1,1", str(tmp_path / "b")
    )
    assert code == 2 and "--band-mean: 'x' is not a number" in text
    code, text = run(capsys, *init, "--bands", "B04,B08,B04", str(tmp_path / "c"))
    assert code == 2 and "band 'B04' is named twice" in text
    assert not any(tmp_path.iterdir())
    with pytest.warns(UserWarning, match="have no mean/std"):
        code, text = run(capsys, *init, "--bands", "B04,B08", str(tmp_path / "d"))
    assert code == 0 and ModelArtifact.load(str(tmp_path / "d")).preprocessing.std == (1.0, 1.0)


def test_model_info_of_an_rgb_model_is_unchanged(tiny_model: str) -> None:
    text = format_info(model_info(tiny_model))
    assert f"normalisation  mean {list(IMAGENET_MEAN)}, std {list(IMAGENET_STD)} (RGB, 0-1 scale)" in text
    assert "bands" not in text
