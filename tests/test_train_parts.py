"""Training's parts without Ray: recipes, pair listing, masks, augmentation, weight init, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ENCODER
from safetensors.torch import save_file
from train_data import SHAPES, png, write_shapes_dataset

from segray import storage
from segray.datasets.pairs import PairSource, dataset_label_map, list_pairs
from segray.labels import CAMVID
from segray.training import checkpoint as ckpt_io
from segray.training.augment import CentredRandomResize, SoftMask, train_transform
from segray.training.config import AugmentConfig, ModelConfig, load_config
from segray.training.data import PairDataset, class_fractions, read_pair
from segray.training.init import describe_init, initial_model
from segray.training.loop import SegLoss, freeze_unused, make_optimizer, make_scheduler


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), {"train": 6, "val": 2})


def test_recipes_load_and_bad_keys_are_named() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(root.glob("camvid-*.yaml"))
    assert {p.stem for p in recipes} == {"camvid-unet-cpu", "camvid-unet-gpu", "camvid-pspnet-cpu", "camvid-pspnet-gpu"}
    for p in recipes:
        cfg = load_config(str(p))
        assert cfg.model.arch in p.stem and cfg.model.height % 32 == 0
        assert len(cfg.loss.class_weights or []) in (0, CAMVID.num_classes)
    cfg = load_config(str(recipes[0]), ["optim.lr=3e-4", "run.epochs=2", "data.train={split: train, limit: 4}"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.run.epochs == 2 and cfg.data.source("train").limit == 4
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optim.lrr'\]"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"data.train: unknown key\(s\) \['splt'\]"):
        load_config(None, ["data.train={splt: train}"])
    with pytest.raises(ValueError, match="config key run.epochs: 'many' is not a int"):
        load_config(None, ["run.epochs=many"])
    with pytest.raises(ValueError, match="multiples of 32"):
        load_config(None, ["model.height=100"])
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(None, ["run.epochs"])


def test_canonical_folder_and_manifest_pairs_agree(shapes: str, tmp_path: Path) -> None:
    canonical = list_pairs(PairSource(root=shapes, split="train"))
    assert [p.name for p in canonical] == sorted(f"seq{i % 2}_{i:04d}.png" for i in range(6))
    assert all(p.mask == p.image.replace("/train/", "/trainannot/") for p in canonical)
    folders = list_pairs(PairSource(images=f"{shapes}/train", masks=f"{shapes}/trainannot"))
    assert folders == canonical
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = tmp_path / "m.parquet"
    rel = [(str(Path(p.image).relative_to(shapes)), str(Path(p.mask).relative_to(shapes))) for p in canonical]
    pq.write_table(pa.table({"frame": [r[0] for r in rel], "label": [r[1] for r in rel]}), manifest)
    (tmp_path / "train").symlink_to(Path(shapes, "train"))
    (tmp_path / "trainannot").symlink_to(Path(shapes, "trainannot"))
    via_manifest = list_pairs(PairSource(manifest=str(manifest), image_column="frame", mask_column="label"))
    assert [p.name for p in via_manifest] == [p.name for p in canonical]
    with pytest.raises(ValueError, match="no 'image' column"):
        list_pairs(PairSource(manifest=str(manifest)))
    held_out = list_pairs(PairSource(root=shapes, split="train", exclude_prefixes=["seq1"]))
    assert [p.name for p in held_out] == ["seq0_0000.png", "seq0_0002.png", "seq0_0004.png"]
    assert dataset_label_map(shapes) == SHAPES
    assert dataset_label_map(str(tmp_path)) == CAMVID  # no labels.json: CamVid's built-in map


def test_unmatched_frame_and_bad_masks_are_named(tmp_path: Path, s3_prefix: str) -> None:
    root = write_shapes_dataset(s3_prefix, {"train": 2}, labels=False)
    storage.write_bytes(storage.join(root, "train", "lonely.png"), png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(
        ValueError, match=r"s3://.*/train/lonely.png: no mask for this frame \(expected .*trainannot/lonely.png\)"
    ):
        list_pairs(PairSource(root=root, split="train"))
    with pytest.raises(ValueError, match="give exactly one of"):
        list_pairs(PairSource(root=root, split="train", images="x"))
    local = write_shapes_dataset(str(tmp_path / "d"), {"train": 1})
    pair = list_pairs(PairSource(root=local, split="train"))[0]
    Path(pair.mask).write_bytes(png(np.zeros((64, 64, 3), np.uint8)))
    with pytest.raises(ValueError, match=f"{pair.mask}: mask must be single-channel"):
        read_pair(pair, SHAPES)
    Path(pair.mask).write_bytes(png(np.full((64, 64), 7, np.uint8)))
    with pytest.raises(ValueError, match=rf"{pair.mask}: mask holds class ids \[7\]"):
        read_pair(pair, SHAPES)
    Path(pair.mask).write_bytes(png(np.zeros((32, 64), np.uint8)))
    with pytest.raises(ValueError, match=f"{pair.mask}: mask is .* but its frame"):
        read_pair(pair, SHAPES)


def test_joint_augmentation_keeps_masks_valid(shapes: str) -> None:
    pairs = list_pairs(PairSource(root=shapes, split="train"))
    aug = AugmentConfig(scale_min=0.5, scale_max=1.0, crop_height=64, crop_width=96)
    ds = PairDataset(pairs, SHAPES, 64, 64, train=True, transform=train_transform(aug, 64, 64, 255))
    torch.manual_seed(0)
    for i in range(len(ds)):
        img, mask = ds[i]
        assert img.shape == (3, 64, 96) and img.dtype == torch.uint8 and mask.shape == (64, 96)
        assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
        # Scale <= 1 into a wider crop: >= 32 padded columns, ignore in the mask and black in the frame.
        padded = (mask == 255).all(dim=0)
        assert padded.sum() >= 32 and (img[:, :, padded] == 0).all()
    # Hue-free geometric check: without colour jitter, the box's red pixels stay labelled box.
    plain = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, scale_min=0.5, scale_max=2.0)
    ds = PairDataset(pairs, SHAPES, 64, 64, train=True, transform=train_transform(plain, 64, 64, 255))
    img, mask = ds[0]
    red = (img[0] > 150) & (img[2] < 100)
    assert (mask[red] == 1).float().mean() > 0.9
    val = PairDataset(pairs, SHAPES, 32, 32, train=False)
    img, mask = val[0]
    assert img.shape == (3, 32, 32) and mask.shape == (64, 64)  # frame at model size, mask at its own


def _centred(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest neighbour taken at each output pixel's centre: row ``floor((i + 0.5) * H / h)``.

    In float32, as torch computes it: at an exact tie (row 57 of 115 from 128: 57.5 * 128 / 115 = 64)
    its rounding picks the pixel on either side.
    """

    def index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        return np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(int)

    return a[index(a.shape[0], h)][:, index(a.shape[1], w)]


def test_training_masks_shrink_centred_on_their_frames(tmp_path: Path) -> None:
    # CamVid's 360x480 cached at the recipe's 192x256 (1.875): each mask pixel is the one at the
    # centre of its footprint, where INTER_AREA and the logits' bilinear upsampling put it.
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 12, (360, 480), dtype=np.uint8)
    storage.write_bytes(str(tmp_path / "train" / "f.png"), png(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)))
    storage.write_bytes(str(tmp_path / "trainannot" / "f.png"), png(mask))
    ds = PairDataset(list_pairs(PairSource(root=str(tmp_path), split="train")), CAMVID, 192, 256, train=True)
    small = ds[0][1].numpy()
    assert np.array_equal(small, _centred(mask, 192, 256))
    # Plain nearest (floor(i * 1.875), what the cache did before) is ~0.44 source pixels up-left of it.
    floor = mask[(np.arange(192) * 1.875).astype(int)][:, (np.arange(256) * 1.875).astype(int)]
    assert (small != floor).mean() > 0.5


@pytest.mark.parametrize("size", [77, 115, 140])  # progressive resizing's ~0.6, the recipe's 0.9 and 1.1
def test_random_rescale_keeps_masks_centred_on_their_frames(size: int) -> None:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    rng = np.random.default_rng(size)
    img = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 128, 160), dtype=np.uint8)))
    mask = tv_tensors.Mask(torch.from_numpy(rng.integers(0, 12, (128, 160), dtype=np.uint8)))
    out_img, out_mask = CentredRandomResize(size, size + 1)(img, mask)
    assert out_mask.shape[0] == size
    assert np.array_equal(out_mask.numpy(), _centred(mask.numpy(), *out_mask.shape))
    assert torch.equal(out_img, v2.functional.resize(img, [size]))  # the frame exactly as v2.RandomResize does it
    # The recipe's transforms, with progressive resizing's factor or without, rescale through it.
    for factor in (1.0, 0.67):
        steps = train_transform(AugmentConfig(), 192, 256, 11, factor).transforms
        assert sum(isinstance(t, CentredRandomResize) for t in steps) == 1
        assert not any(type(t) is v2.RandomResize for t in steps)


def test_soft_targets_hold_each_pixels_class_shares(tmp_path: Path) -> None:
    # Hand-built, factor 2: each output pixel averages a 2x2 block; void (255) counts for no class.
    mask = np.array([[0, 0, 1, 2], [1, 255, 2, 2], [3, 3, 3, 3], [3, 3, 4, 255]], dtype=np.uint8)
    shares = class_fractions(mask, 5, 2, 2)
    assert shares.shape == (2, 2, 5) and shares.dtype == np.uint8
    expected = np.array([[[2, 1, 0, 0, 0], [0, 1, 3, 0, 0]], [[0, 0, 0, 4, 0], [0, 0, 0, 2, 1]]]) * 255 / 4
    assert np.abs(shares.astype(float) - expected).max() <= 0.5  # rounded to the nearest 1/255
    # CamVid's 360x480 at the recipe's 192x256 (1.875, more than OpenCV's 4 channels per call): a
    # one-pixel pole in every source column in turn keeps its whole area, where sampling each output
    # pixel's centre drops the columns that fall between centres.
    rng = np.random.default_rng(0)
    dropped = False
    for column in range(0, 16):
        pole = np.full((360, 480), 11, dtype=np.uint8)
        pole[:, 100 + column] = 2
        area = class_fractions(pole, 11, 192, 256)[..., 2].astype(float).sum() / 255 * 1.875**2
        assert area == pytest.approx(360, rel=0.01)
        dropped = dropped or not (_centred(pole, 192, 256) == 2).any()
    assert dropped
    mask = rng.integers(0, 12, (360, 480), dtype=np.uint8)
    shares = class_fractions(mask, 11, 192, 256).astype(float)
    blocks = (mask[..., None] == np.arange(11)).mean(axis=(0, 1))  # each class's share of the frame
    assert shares.mean(axis=(0, 1)) / 255 == pytest.approx(blocks, abs=2e-3)
    labelled = shares.sum(axis=2) / 255
    assert labelled.max() <= 1.0 + 11 * 0.5 / 255 and labelled.mean() == pytest.approx((mask != 11).mean(), abs=2e-3)
    # Through the training dataset: (classes, h, w) shares, cached like the hard masks.
    storage.write_bytes(str(tmp_path / "train" / "f.png"), png(rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)))
    storage.write_bytes(str(tmp_path / "trainannot" / "f.png"), png(mask))
    pairs = list_pairs(PairSource(root=str(tmp_path), split="train"))
    img, target = PairDataset(pairs, CAMVID, 192, 256, train=True, soft_targets=True)[0]
    assert img.shape == (3, 192, 256) and target.shape == (11, 192, 256) and target.dtype == torch.uint8
    assert np.array_equal(target.permute(1, 2, 0).numpy(), class_fractions(mask, 11, 192, 256))
    with pytest.raises(ValueError, match="soft_targets is for training"):
        PairDataset(pairs, CAMVID, 192, 256, train=False, soft_targets=True)


@pytest.mark.parametrize("factor", [1.0, 0.67])
def test_soft_targets_move_with_their_frames(factor: float) -> None:
    """A frame whose three channels are the shares of three classes: every geometric step (rescale,
    crop and its padding, flip) must leave frame and shares equal; colour jitter only the frame."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (96, 128))
    onehot = torch.from_numpy((classes[None] == np.arange(3)[:, None, None]).astype(np.uint8) * 255)
    plain = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, scale_min=0.7, scale_max=1.3, hflip=0.5)
    transform = train_transform(plain, 96, 128, 255, factor)
    torch.manual_seed(0)
    padded = False
    for _ in range(8):
        img, soft = transform(tv_tensors.Image(onehot.clone()), SoftMask(onehot.clone()))
        assert isinstance(soft, SoftMask) and soft.shape == img.shape
        assert torch.equal(img.as_subclass(torch.Tensor), soft.as_subclass(torch.Tensor))
        padded = padded or bool((soft.sum(0) == 0).any())  # padding is no class (the frame's black)
    assert padded
    jitter = v2.ColorJitter(0.5, 0.5, 0.5, 0.2)
    frame = tv_tensors.Image(torch.from_numpy(rng.integers(0, 256, (3, 96, 128), dtype=np.uint8)))
    out_frame, out_soft = jitter(frame, SoftMask(onehot.clone()))
    assert not torch.equal(out_frame, frame) and torch.equal(out_soft.as_subclass(torch.Tensor), onehot)


def test_soft_cross_entropy_weighs_each_pixel_by_its_shares() -> None:
    weights = "loss.class_weights=[1.0, 2.0, 4.0]"
    loss = SegLoss(load_config(None, [weights, "loss.soft_targets=true"]), SHAPES)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 5, 6), generator=g)
    target[0, 0] = 255  # a void row: all shares zero
    onehot = torch.stack([target == c for c in range(3)], dim=1).to(torch.uint8) * 255
    hard = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 4.0]), ignore_index=255)
    assert loss(logits, onehot).item() == pytest.approx(hard.item(), rel=1e-6)
    # One pixel, half class 1 and a quarter class 2 (the rest void), by hand:
    one = torch.tensor([0.3, -0.2, 1.1]).view(1, 3, 1, 1)
    logp = torch.log_softmax(one, dim=1).view(3)
    shares = torch.tensor([0, 128, 64], dtype=torch.uint8).view(1, 3, 1, 1)
    q = torch.tensor([0, 128, 64]) / 255 * torch.tensor([1.0, 2.0, 4.0])
    assert loss(one, shares).item() == pytest.approx(float(-(q * logp).sum() / q.sum()), rel=1e-6)
    void = loss(logits, torch.zeros_like(onehot))  # nothing labelled: zero, and it backpropagates
    assert void.item() == 0.0
    void.backward()
    hard_only = ("loss.dice_weight=1", "loss.ohem_thresh=0.7", "loss.lovasz_weight=1", "loss.deep_supervision=[0.4]")
    for other in hard_only:
        with pytest.raises(ValueError, match=f"cross-entropy only: turn off {other.split('=')[0]}$"):
            load_config(None, ["model.arch=unet", "loss.soft_targets=true", other])


@pytest.mark.parametrize("enabled", [True, False])
def test_progressive_resizing_shrinks_scene_and_crop_together(shapes: str, enabled: bool) -> None:
    pairs = list_pairs(PairSource(root=shapes, split="train"))
    plain = AugmentConfig(enabled=enabled, brightness=0, contrast=0, saturation=0, hue=0, scale_min=1.0, scale_max=1.0)
    full = PairDataset(pairs, SHAPES, 128, 128, train=True, transform=train_transform(plain, 128, 128, 255))
    small = PairDataset(pairs, SHAPES, 128, 128, train=True, transform=train_transform(plain, 128, 128, 255, 0.5))
    torch.manual_seed(0)
    img, mask = small[0]
    # 128 x 0.5 = 64: a multiple of 32, so the whole scene fits the crop (no padding), at a quarter
    # of the pixels: each class, and the frame's own void, keeps its share of the scene.
    assert img.shape == (3, 64, 64) and mask.shape == (64, 64)
    big = full[0][1]
    for c in (0, 1, 2, 255):
        assert abs(float((mask == c).float().mean()) - float((big == c).float().mean())) < 0.05
    # Crops are rounded down to multiples of 32, whatever the factor.
    odd = PairDataset(pairs, SHAPES, 128, 128, train=True, transform=train_transform(plain, 128, 128, 255, 0.67))
    img, mask = odd[0]
    assert img.shape[1:] == (64, 64) and mask.shape == (64, 64)


def test_progressive_stages_run_in_order_then_full_size() -> None:
    cfg = load_config(None, ["augment.progressive=[[2, 0.5], [1, 0.67]]", "run.epochs=5"])
    assert cfg.augment.stages() == [(2, 0.5), (1, 0.67)]
    assert [cfg.augment.scale_at(e) for e in range(5)] == [0.5, 0.5, 0.67, 1.0, 1.0]
    short = load_config(None, ["augment.small_epochs=2", "augment.small_scale=0.5"])  # the one-stage shorthand
    assert short.augment.stages() == [(2, 0.5)] and [short.augment.scale_at(e) for e in range(3)] == [0.5, 0.5, 1.0]
    assert load_config(None).augment.stages() == [] and load_config(None).augment.scale_at(0) == 1.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["augment.small_epochs=2", "augment.small_scale=1.5"], "augment.small_scale"),
        (["augment.progressive=[[2, 0.5]]", "augment.small_epochs=1"], "not both"),
        (["augment.progressive=[[0, 0.5]]"], r"stage \[0, 0.5\] must be"),
        (["augment.progressive=[[2, 1.5]]"], r"stage \[2, 1.5\] must be"),
        (["augment.progressive=[2, 0.5]"], "stage 2 must be"),
        (["augment.progressive=[[2.5, 0.5]]"], r"stage \[2.5, 0.5\] must be"),
    ],
)
def test_recipe_refuses_a_bad_progressive_resizing(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_zero_init_residual_starts_each_block_as_the_identity() -> None:
    from torchvision.models.resnet import BasicBlock

    cfg = ModelConfig(arch="unet", encoder="resnet18", height=64, width=64, zero_init_residual=True)
    model = initial_model(cfg, SHAPES, seed=3).eval()
    blocks = [m for m in model.encoder.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(not b.bn2.weight.detach().any() for b in blocks)
    assert all(float(b.bn1.weight.detach().min()) == 1 for b in blocks)  # only the last BatchNorm of each block
    x = torch.rand(1, 64, 16, 16)
    block = model.encoder.layer1[0]  # no downsample: the block is relu(x + 0) = relu(x)
    assert torch.equal(block(x), torch.relu(x))
    # Without the option the same seed gives the same weights, but with the scales at 1.
    plain = initial_model(ModelConfig(arch="unet", encoder="resnet18", height=64, width=64), SHAPES, seed=3)
    assert float(plain.encoder.layer1[0].bn2.weight.detach().min()) == 1
    assert torch.equal(plain.encoder.conv1.weight, model.encoder.conv1.weight)
    assert "start as the identity" in describe_init(cfg, SHAPES)
    with pytest.raises(ValueError, match="needs a ResNet encoder"):
        initial_model(
            ModelConfig(arch="unet", encoder=TINY_ENCODER, height=64, width=64, zero_init_residual=True), SHAPES
        )
    with pytest.raises(ValueError, match="model.zero_init_residual is for training from scratch"):
        load_config(None, ["model.zero_init_residual=true", "model.encoder_weights=enc.safetensors"])


@pytest.mark.parametrize("value", ["2", "flip", "[true]"])
def test_recipe_refuses_a_flip_averaging_that_is_not_a_flag(value: str) -> None:
    with pytest.raises(ValueError, match="model.hflip_average must be true or false"):
        load_config(None, [f"model.hflip_average={value}"])


def test_init_from_encoder_file_and_from_artifact_with_new_classes(tmp_path: Path, tiny_model: str) -> None:
    # Encoder weights in a safetensors file (as a user would convert ImageNet weights).
    src = initial_model(ModelConfig(arch="unet", encoder=TINY_ENCODER, height=64, width=64), SHAPES, seed=5)
    enc_file = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.encoder.state_dict().items()}, str(enc_file))
    cfg = ModelConfig(arch="unet", encoder=TINY_ENCODER, height=64, width=64, encoder_weights=str(enc_file))
    m = initial_model(cfg, SHAPES, seed=6)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(m.encoder.state_dict()[k], v)
    assert "encoder weights from" in describe_init(cfg, SHAPES)
    # Fine-tuning the CamVid tiny UNet on 3-class data: encoder and decoder kept, head re-initialised.
    from segray.models.artifact import ModelArtifact

    cfg = ModelConfig(arch="unet", encoder=TINY_ENCODER, height=64, width=64, init_artifact=tiny_model)
    assert "differ" in describe_init(cfg, SHAPES) and "re-initialised" in describe_init(cfg, SHAPES)
    assert "head kept" in describe_init(cfg, CAMVID)
    art = ModelArtifact.load(tiny_model)
    tuned = initial_model(cfg, SHAPES)
    old, new = art.model.state_dict(), tuned.state_dict()
    assert new["segmentation_head.0.weight"].shape[0] == 3
    assert all(torch.equal(new[k], v) for k, v in old.items() if not k.startswith("segmentation_head."))
    same = initial_model(cfg, CAMVID).state_dict()
    assert all(torch.equal(same[k], v) for k, v in old.items())
    with pytest.raises(ValueError, match="is a unet but model.arch is 'pspnet'"):
        initial_model(ModelConfig(arch="pspnet", encoder=TINY_ENCODER, init_artifact=tiny_model), SHAPES)


def test_checkpoint_round_trip_is_exact_and_pickle_free(tmp_path: Path) -> None:
    cfg = load_config(None, [f"model.encoder={TINY_ENCODER}", "model.arch=pspnet", "run.epochs=3"])
    model = initial_model(cfg.model, SHAPES)
    unused = freeze_unused(model, 64, 64, torch.device("cpu"))
    assert unused and all(n.startswith("encoder.") for n in unused)  # PSPNet's unused encoder stages
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=4)
    loss_fn = SegLoss(cfg, SHAPES)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    y[:, :4] = 255
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    ckpt_io.save_checkpoint(tmp_path, model, opt, {"epoch": 1, "scheduler": sched.state_dict()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    model2 = initial_model(cfg.model, SHAPES, seed=9)
    freeze_unused(model2, 64, 64, torch.device("cpu"))
    model2.load_state_dict(ckpt_io.load_model_weights(tmp_path))
    # The order train_loop uses: building a scheduler rewrites the groups' lr, so the optimizer's
    # saved param groups (lr included) are restored after it.
    opt2 = make_optimizer(model2, cfg)
    sched2 = make_scheduler(opt2, cfg, steps_per_epoch=4)
    state = ckpt_io.load_state(tmp_path)
    ckpt_io.restore_optimizer(tmp_path, opt2, state)
    sched2.load_state_dict(state["scheduler"])
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    restored = opt2.state_dict()["state"]
    assert sorted(restored) == sorted(opt.state_dict()["state"])
    for i, slots in opt.state_dict()["state"].items():
        for k, v in slots.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(restored[i][k])), (i, k)
    # One more identical step on both keeps them identical: the resumed run continues exactly.
    for m, o in ((model, opt), (model2, opt2)):
        m.eval()
        o.zero_grad()
        loss_fn(m(x), y).backward()
        o.step()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="loss.class_weights has 2 values for 3 classes"):
        SegLoss(load_config(None, ["loss.class_weights=[1, 2]"]), SHAPES)


def test_train_cli_refuses_a_bad_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from segray.cli import main

    recipe = Path(__file__).resolve().parents[1] / "configs" / "camvid-unet-cpu.yaml"
    assert main(["train", "--config", str(recipe), "optim.lrr=1"]) == 2
    assert "unknown config key(s) ['optim.lrr']" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_a_rerun_with_another_model_is_refused(shapes: str, tmp_path: Path) -> None:
    from segray.training.job import plan

    base = [f"data.root={shapes}", f"run.storage={tmp_path}", f"model.encoder={TINY_ENCODER}", "name=r"]
    plan(load_config(None, base))
    plan(load_config(None, [*base, "run.epochs=20"]))  # more epochs: the same run, continued
    with pytest.raises(ValueError, match=r"holds a run of another model \(arch: 'unet' -> 'pspnet'\)"):
        plan(load_config(None, [*base, "model.arch=pspnet"]))
    with pytest.raises(ValueError, match=r"input_size: \[352, 480\] -> \[64, 64\]"):
        plan(load_config(None, [*base, "model.height=64", "model.width=64"]))


def test_lovasz_term_joins_from_its_epoch_and_samples_pixels() -> None:
    from segmentation_models_pytorch.losses import LovaszLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[0, :2] = 255  # ignored rows
    on = ["loss.lovasz_weight=0.5", "loss.lovasz_from_epoch=3"]
    ce = SegLoss(load_config(None, []), SHAPES)(logits, target)
    loss = SegLoss(load_config(None, on), SHAPES)
    assert loss(logits, target).item() == pytest.approx(ce.item())  # epoch 1: not yet
    loss.epoch = 3
    lovasz = LovaszLoss("multiclass", ignore_index=255)(logits, target)
    assert lovasz.item() > 0 and loss(logits, target).item() == pytest.approx((ce + 0.5 * lovasz).item(), rel=1e-6)
    half = SegLoss(load_config(None, [*on, "loss.lovasz_pixels=0.5"]), SHAPES)
    half.epoch = 3
    sampled, labels = half._sample(logits, target)
    assert sampled.shape == (1, 3, 64, 1) and labels.shape == (1, 64, 1)
    picked = {(float(v), int(t)) for v, t in zip(sampled[0, 0, :, 0].tolist(), labels.view(-1).tolist(), strict=True)}
    every = set(zip(logits[:, 0].reshape(-1).tolist(), target.reshape(-1).tolist(), strict=True))
    assert picked <= every  # (logit, label) pairs stay together
    half(logits, target).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    for bad in ("loss.lovasz_weight=-1", "loss.lovasz_from_epoch=0", "loss.lovasz_pixels=0", "loss.lovasz_pixels=1.5"):
        with pytest.raises(ValueError, match="loss.lovasz_weight must be >= 0"):
            load_config(None, [bad])


def test_ohem_keeps_only_the_hard_pixels() -> None:
    """Hand-built: 4 labelled pixels, true-class probabilities 0.9, 0.6, 0.3 and 0.1, one ignored."""
    p_true = torch.tensor([0.9, 0.6, 0.3, 0.1, 0.5])
    target = torch.tensor([0, 1, 2, 0, 255]).view(1, 1, 5)
    # Logits = log-probabilities: p on the true class (class 0 for the ignored pixel), the rest split evenly.
    probs = ((1 - p_true) / 2).repeat(3, 1)
    probs[target.view(-1)[:4], torch.arange(4)] = p_true[:4]
    probs[0, 4] = p_true[4]
    logits = probs.log().view(1, 3, 1, 5)
    logits.requires_grad_(True)
    weights = "loss.class_weights=[1.0, 2.0, 4.0]"
    hard = SegLoss(load_config(None, [weights, "loss.ohem_thresh=0.7", "loss.ohem_min_kept=0.25"]), SHAPES)(
        logits, target
    )
    ce = -p_true[:4].log()
    w = torch.tensor([1.0, 2.0, 4.0, 1.0])
    # Kept: 0.6, 0.3 and 0.1 (below 0.7); normalised by their class weights as F.cross_entropy does.
    assert hard.item() == pytest.approx(float((w[1:] * ce[1:]).sum() / w[1:].sum()), rel=1e-5)
    hard.backward()
    assert logits.grad is not None and float(logits.grad[0, :, 0, 0].abs().sum()) == 0  # the easy pixel
    # Too few hard pixels (threshold 0.2 keeps one, min_kept 0.75 asks for 3): the 3 hardest.
    few = SegLoss(load_config(None, [weights, "loss.ohem_thresh=0.2", "loss.ohem_min_kept=0.75"]), SHAPES)
    assert few(logits, target).item() == pytest.approx(float((w[1:] * ce[1:]).sum() / w[1:].sum()), rel=1e-5)
    # A threshold of 1 keeps every labelled pixel: plain weighted cross-entropy.
    plain = SegLoss(load_config(None, [weights]), SHAPES)(logits, target)
    every = SegLoss(load_config(None, [weights, "loss.ohem_thresh=1.0"]), SHAPES)(logits, target)
    assert every.item() == pytest.approx(plain.item(), rel=1e-6)
    # A batch with nothing labelled is a zero, not a NaN, and backpropagates.
    void = SegLoss(load_config(None, ["loss.ohem_thresh=0.7"]), SHAPES)(logits, torch.full_like(target, 255))
    assert void.item() == 0.0
    void.backward()
    with pytest.raises(ValueError, match="loss.ohem_thresh"):
        load_config(None, ["loss.ohem_thresh=1.5"])


@pytest.mark.parametrize("arch", ["unet", "pspnet"])
def test_logit_adjustment_folds_into_the_head(arch: str) -> None:
    """The export's folded head predicts exactly what validation scored: logits - alpha * log(w)."""
    from segray.models import build_model
    from segray.training.logit_adjust import fold_offsets, logit_offsets

    torch.manual_seed(0)
    model = build_model(arch, TINY_ENCODER, 3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    offsets = logit_offsets([0.5, 1.0, 4.0], 0.5)
    assert offsets is not None
    assert offsets.tolist() == pytest.approx([-0.5 * np.log(0.5), 0.0, -0.5 * np.log(4.0)])
    fold_offsets(model, offsets)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before + offsets.view(1, 3, 1, 1), rtol=1e-5, atol=1e-5)
    assert logit_offsets([0.5, 1.0, 4.0], 0.0) is None and logit_offsets(None, 0.5) is None
    with pytest.raises(ValueError, match="needs loss.class_weights"):
        load_config(None, ["loss.logit_adjustment=0.5"])
    with pytest.raises(ValueError, match="no final 5-class convolution"):
        fold_offsets(model, torch.zeros(5))


def test_deep_supervision_heads_train_beside_the_model_and_stay_out_of_it() -> None:
    import copy

    from segmentation_models_pytorch.losses import DiceLoss

    from segray.models import build_model
    from segray.training.deep_supervision import DeepSupervision

    torch.manual_seed(0)
    model = build_model("unet", TINY_ENCODER, 3, decoder_channels=[32, 24, 16, 12, 8]).eval()
    bare = copy.deepcopy(model)
    ds = DeepSupervision(model, 3, [0.4, 0.1], (64, 64))
    x, y = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    logits, aux = ds(x)
    assert torch.equal(logits, bare(x))  # the model's own output, untouched
    # The two stages before the output, deepest first: 12 channels at stride 2, 16 at stride 4.
    assert [tuple(a.shape) for a in aux] == [(2, 3, 16, 16), (2, 3, 32, 32)]
    assert [h.in_channels for h in ds.heads] == [16, 12] and ds.weights == [0.1, 0.4]
    assert set(model.state_dict()) == set(bare.state_dict())  # no head inside the model: the export never sees them
    loss_fn = DiceLoss("multiclass")  # any loss; each stage against the mask shrunk to its size
    expect = 0.1 * loss_fn(aux[0], y[:, ::4, ::4]) + 0.4 * loss_fn(aux[1], y[:, ::2, ::2])
    assert torch.allclose(ds.loss(aux, y, loss_fn), expect)
    ds.loss(aux, y, loss_fn).backward()  # the aux loss alone reaches the heads and the stages below them
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ds.heads.parameters())
    assert model.decoder.blocks[2].conv1[0].weight.grad is not None
    assert model.decoder.blocks[4].conv1[0].weight.grad is None  # the last stage is after both heads
    # The optimizer takes the heads with the decoder, after the model's own parameters.
    cfg = load_config(None, ["optim.encoder_lr_factor=0.5"])
    opt = make_optimizer(model, cfg, extra=list(ds.heads.parameters()))
    assert opt.param_groups[0]["params"][-2:] == list(ds.heads.parameters())[-2:]
    with pytest.raises(ValueError, match="4 stages before its output"):
        DeepSupervision(bare, 3, [0.1] * 5, (64, 64))
    with pytest.raises(ValueError, match="needs a UNet decoder"):
        DeepSupervision(build_model("pspnet", TINY_ENCODER, 3), 3, [0.4], (64, 64))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.arch=pspnet", "loss.deep_supervision=[0.4]"], "needs model.arch unet, not 'pspnet'"),
        (["model.arch=unet", "loss.deep_supervision=[]"], "give positive weights"),
        (["model.arch=unet", "loss.deep_supervision=[0.4, -1]"], "give positive weights"),
        (["model.arch=unet", "loss.deep_supervision=0.4"], "give positive weights"),
    ],
)
def test_recipe_refuses_a_bad_deep_supervision(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_weight_average_warms_up_then_keeps_its_decay() -> None:
    """``optim.ema_decay``: the first update copies, update n keeps ``min(decay, (1+n)/(10+n))``
    of the average; BatchNorm's running statistics are averaged too and its batch count copied."""
    from torch import nn

    from segray.training.ema import ema_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    ema = ema_model(model, 0.5)
    expected: dict[str, torch.Tensor] = {}
    for n in range(12):  # (1+n)/(10+n) passes 0.5 at n = 8
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 1, 3, 3) * (n + 1))  # training mode: moves the running statistics
        ema.update_parameters(model)
        d = min(0.5, (1 + n) / (10 + n))
        now = {k: v.clone() for k, v in model.state_dict().items()}
        expected = {
            k: v if n == 0 or not v.is_floating_point() else d * expected[k] + (1 - d) * v for k, v in now.items()
        }
    got = ema.module.state_dict()
    assert sorted(got) == sorted(expected) and int(got["1.num_batches_tracked"]) == 12
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert not torch.allclose(got["1.running_mean"], model.state_dict()["1.running_mean"])


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_recipe_refuses_a_weight_average_decay_outside_0_1(value: str) -> None:
    with pytest.raises(ValueError, match=rf"optim.ema_decay {value}: give a decay in \[0, 1\)"):
        load_config(None, [f"optim.ema_decay={value}"])


def test_fit_offsets_undoes_a_bias_and_never_lowers_the_miou() -> None:
    from segray.training.logit_adjust import fit_offsets
    from segray.training.metrics import confusion_matrix, scores

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (20000,), generator=g)
    logits = 2.0 * torch.nn.functional.one_hot(target, 4).float() + torch.randn(20000, 4, generator=g)
    biased = logits.clone()
    biased[:, 2] -= 1.5  # class 2 under-predicted, as a thin class is
    offsets, before, after = fit_offsets(biased, target)
    assert 1.0 <= float(offsets[2] - offsets[[0, 1, 3]].mean()) <= 2.0  # most of the 1.5 given back
    assert before < after
    # The returned figures are validation's own: one confusion matrix, scores() over it.
    for off, figure in ((torch.zeros(4), before), (offsets, after)):
        cm = confusion_matrix((biased + off).argmax(1), target, 4)
        assert scores(cm.numpy())["miou"] == pytest.approx(figure, abs=1e-12)
    # Unbiased logits: nothing to gain, so nothing is moved far and the mIoU never falls.
    offsets, before, after = fit_offsets(logits, target)
    assert after >= before and float(offsets.abs().max()) <= 0.2 + 1e-6
