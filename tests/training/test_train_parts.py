"""Training's parts without Ray: recipes, pair listing, masks, augmentation, weight init, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.common import ROOT, TINY_ENCODER
from helpers.train_data import SHAPES, png, write_shapes_dataset
from safetensors.torch import save_file

from segray import storage
from segray.datasets.pairs import PairSource, dataset_label_map, list_pairs, read_pair
from segray.labels import CAMVID
from segray.losses import SegLoss
from segray.recipe import AugmentConfig, ModelConfig, load_config
from segray.tasks.augment import CentredRandomResize, train_transform
from segray.tasks.semantic.data import PairDataset
from segray.tasks.semantic.init import describe_init, freeze_unused, initial_model
from segray.training import checkpoint as ckpt_io
from segray.training.optim import make_optimizer, make_scheduler


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), {"train": 6, "val": 2})


def test_auto_class_weights_are_median_frequency_of_the_training_masks(
    shapes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from segray.datasets.eda import compute_stats
    from segray.tasks.semantic.weights import resolve_auto_weights

    template = ROOT / "configs" / "template.yaml"
    cfg = load_config(str(template), [f"data.root={shapes}"])
    assert cfg.loss[0].class_weights == "auto"
    resolve_auto_weights(cfg, SHAPES)
    stats, _ = compute_stats(shapes, SHAPES, ["train"])  # `segray data stats` on the same masks
    expected = [round(r["median_freq_weight"], 4) for r in stats.class_rows()[: SHAPES.num_classes]]
    assert cfg.loss[0].class_weights == cfg.class_weights == expected and 1.0 in expected
    assert (
        "loss[0].class_weights: auto -> median frequency over 6 training masks: background" in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match=r"loss\[0\]\.class_weights 'median': give a list"):
        load_config(None, ["loss.0.class_weights=median"])
    with pytest.raises(ValueError, match=r"loss\[1\]\.class_weights: only a ce term"):
        load_config(None, ["loss=[{type: ce}, {type: dice, class_weights: auto}]"])


def test_recipes_load_and_bad_keys_are_named() -> None:
    root = ROOT / "configs"
    recipes = sorted(root.glob("camvid-*.yaml"))
    assert {p.stem for p in recipes} == {
        *(f"camvid-{arch}-{kind}" for arch in ("unet", "pspnet", "segnet") for kind in ("cpu", "gpu")),
        "camvid-vgg-unet-gpu",
    }
    for p in recipes:
        cfg = load_config(str(p))
        assert cfg.model.arch in p.stem and cfg.model.height % 32 == 0
        assert len(cfg.class_weights or []) in (0, CAMVID.num_classes)
        assert cfg.loss[0].type == "ce" and all(t.type in ("ce", "dice") for t in cfg.loss)
    cfg = load_config(str(recipes[0]), ["optim.lr=3e-4", "run.epochs=2", "data.train={split: train, limit: 4}"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.run.epochs == 2 and cfg.data.source("train").limit == 4
    with pytest.raises(ValueError, match=r"unknown key optim.lrr in override 'optim.lrr=1': did you mean optim.lr\?"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"^unknown key data.train.splt: did you mean split\?$"):
        load_config(None, ["data.train={splt: train}"])
    with pytest.raises(ValueError, match=r"^unknown key data.val.zzzz: known keys: exclude_prefixes, image_column, "):
        load_config(None, ["data.val={zzzz: 1}"])
    with pytest.raises(ValueError, match="config key run.epochs: 'many' is not a int"):
        load_config(None, ["run.epochs=many"])
    with pytest.raises(ValueError, match="multiples of 32"):
        load_config(None, ["model.height=100"])
    with pytest.raises(ValueError, match="expected key=value"):
        load_config(None, ["run.epochs"])
    # The loss is a list of typed terms; each error names its key.
    with pytest.raises(ValueError, match=r"loss\[1\]\.type 'focal': choose from \['ce', 'dice'\]"):
        load_config(None, ["loss=[{type: ce}, {type: focal}]"])
    with pytest.raises(ValueError, match=r"loss: give a list of terms"):
        load_config(None, ["loss={class_weights: [1, 2]}"])
    with pytest.raises(ValueError, match=r"loss\[0\]\.class_weights: give one positive weight per class"):
        load_config(None, ["loss=[{type: ce, class_weights: [1, 0]}]"])
    with pytest.raises(ValueError, match=r"loss\[0\]\.class_weights: only a ce term takes class weights"):
        load_config(None, ["loss=[{type: dice, class_weights: [1, 2]}]"])
    with pytest.raises(ValueError, match=r"unknown key loss\[0\]\.dice_weight in override"):
        load_config(None, ["loss=[{type: ce, dice_weight: 1}]"])
    with pytest.raises(ValueError, match=r"export.logit_adjustment needs class weights"):
        load_config(None, ["export.logit_adjustment=0.5"])
    with pytest.raises(ValueError, match=r"'3' is not an index of a 1-item list"):
        load_config(None, ["loss.3.weight=2"])
    with pytest.raises(ValueError, match=r"augment.crop_height 100: give a multiple of 32"):
        load_config(None, ["augment.crop_height=100"])
    with pytest.raises(ValueError, match=r"augment.hflip 1.5: a probability"):
        load_config(None, ["augment.hflip=1.5"])
    with pytest.raises(ValueError, match=r"optim.lr must be > 0"):
        load_config(None, ["optim.lr=0"])
    two = load_config(None, ["loss=[{type: ce}, {type: dice}]", "loss.1.weight=0.25"])
    assert [(t.type, t.weight) for t in two.loss] == [("ce", 1.0), ("dice", 0.25)]


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


def test_progressive_resizing_shrinks_scene_and_crop_together(shapes: str) -> None:
    pairs = list_pairs(PairSource(root=shapes, split="train"))
    plain = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0, scale_min=1.0, scale_max=1.0)
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
    opt = make_optimizer(model, cfg.optim)
    sched = make_scheduler(opt, cfg.optim, cfg.run.epochs, steps_per_epoch=4)
    loss_fn = SegLoss(cfg.loss, SHAPES)
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
    opt2 = make_optimizer(model2, cfg.optim)
    sched2 = make_scheduler(opt2, cfg.optim, cfg.run.epochs, steps_per_epoch=4)
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


def test_train_cli_refuses_a_bad_recipe(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from segray.cli import main

    recipe = ROOT / "configs" / "camvid-unet-cpu.yaml"
    assert main(["train", "--config", str(recipe), "optim.lrr=1"]) == 2
    assert "unknown key optim.lrr in override 'optim.lrr=1': did you mean optim.lr?" in capsys.readouterr().err
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
    with pytest.raises(ValueError, match=r"holds a run started on Ray \(without --no-ray\)"):
        plan(load_config(None, base), runner="local")


@pytest.mark.parametrize("arch", ["unet", "pspnet"])
def test_logit_adjustment_folds_into_the_head(arch: str) -> None:
    """The export's folded head predicts exactly what validation scored: logits - alpha * log(w)."""
    from segray.models import build_model
    from segray.tasks.semantic.logit_adjust import fold_offsets, logit_offsets

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
    with pytest.raises(ValueError, match="export.logit_adjustment needs class weights on the loss's ce term"):
        load_config(None, ["export.logit_adjustment=0.5"])
    with pytest.raises(ValueError, match="no final 5-class convolution"):
        fold_offsets(model, torch.zeros(5))


def test_fit_offsets_undoes_a_bias_and_never_lowers_the_miou() -> None:
    from segray.metrics import confusion_matrix, scores
    from segray.tasks.semantic.logit_adjust import fit_offsets

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
