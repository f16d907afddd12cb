"""Shared option parsing: a misspelt recipe key, override, flag or subcommand gets a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from segray.cli import build_parser, main
from segray.options import duration, size
from segray.recipe import load_config


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of an argparse usage error (exit 2) for ``segray <argv>``."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_misspelt_recipe_key_names_the_file_and_the_key_meant(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  encodr: resnet18\n")
    with pytest.raises(ValueError, match=rf"^unknown key model.encodr in {recipe}: did you mean model.encoder\?$"):
        load_config(str(recipe))
    recipe.write_text("optim:\n  lr: 1.0e-3\nmodle:\n  arch: unet\n")
    with pytest.raises(ValueError, match=rf"^unknown key modle in {recipe}: did you mean model\?$"):
        load_config(str(recipe))
    recipe.write_text("loss:\n  - {type: ce, wieght: 2}\n")
    with pytest.raises(
        ValueError, match=rf"^unknown key loss\[0\]\.wieght in {recipe}: did you mean loss\[0\]\.weight\?$"
    ):
        load_config(str(recipe))


def test_a_misspelt_override_names_the_override_and_the_key_meant(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"^unknown key run.epoch in override 'run.epoch=3': did you mean run.epochs\?"
    ):
        load_config(None, ["run.epoch=3"])
    # A misspelt section keeps the rest of the key in the suggestion.
    with pytest.raises(ValueError, match=r"^unknown key optm in override 'optm.lr=1': did you mean optim.lr\?$"):
        load_config(None, ["optm.lr=1"])
    # The right key in the wrong section.
    with pytest.raises(ValueError, match=r"did you mean augment.hflip\?$"):
        load_config(None, ["model.hflip=0"])
    with pytest.raises(ValueError, match=r"^unknown key loss.0.wieght in override 'loss.0.wieght=2': did you mean"):
        load_config(None, ["loss.0.wieght=2"])
    # Keys inside a mapping given as the value.
    with pytest.raises(ValueError, match=r"^unknown key loss\[1\]\.tpye in override 'loss=\[.*\]': did you mean"):
        load_config(None, ["loss=[{type: ce}, {tpye: dice}]"])
    # Free-form mappings take any key.
    assert load_config(None, ["model.kwargs.decoder_channels=[64, 32, 16, 16, 8]"]).model.kwargs


def test_an_unknown_key_with_nothing_close_lists_the_known_keys() -> None:
    with pytest.raises(ValueError) as e:
        load_config(None, ["export.zzz=1"])
    assert str(e.value) == "unknown key export.zzz in override 'export.zzz=1'; known keys in export: " + (
        "logit_adjustment, fit_offsets"
    )
    with pytest.raises(ValueError, match=r"; known keys: name, model, data, augment, optim, loss, export, run$"):
        load_config(None, ["qqq=1"])


def test_a_misspelt_subcommand_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error(["trian", "--config", "x.yaml"], capsys).endswith("invalid choice: 'trian' " + (
        "(choose from 'label', 'nightly', 'model', 'demo', 'runs', 'compact', 'train', 'evaluate', 'compare', "
        "'data', 'landcover', 'serve'); did you mean train?"
    ))  # fmt: skip
    assert usage_error(["model", "infoo", "m"], capsys).endswith("; did you mean info?")
    assert "did you mean" not in usage_error(["qqqqqq"], capsys)


def test_a_misspelt_flag_gets_a_suggestion_from_its_own_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(["serve", "--model", "m", "--devce", "cpu"], capsys)
    assert err == "segray: error: unrecognized arguments: --devce cpu; --devce: did you mean --device?"
    # A required flag that was misspelt.
    err = usage_error(["train", "--confg", "x.yaml"], capsys)
    assert err.endswith("required: --config; --confg: did you mean --config?")
    # --window belongs to label and serve, not to train: no suggestion from another subcommand.
    assert usage_error(["serve", "--model", "m", "--windw", "64x64"], capsys).endswith("did you mean --window?")
    assert "did you mean" not in usage_error(["train", "--config", "x.yaml", "--windw", "64x64"], capsys)


def test_durations_and_sizes_take_a_plain_number_or_a_unit() -> None:
    assert [duration(v) for v in ("500ms", "30s", "30", " 2 min", "1h", "1.5e1s", 0.25, 7)] == [
        0.5, 30.0, 30.0, 120.0, 3600.0, 15.0, 0.25, 7.0,
    ]  # fmt: skip
    assert [size(v) for v in ("64MiB", "64MB", "2GiB", "1kb", "512", 4096, "1.5KiB")] == [
        64 * 2**20, 64 * 10**6, 2 * 2**30, 1000, 512, 4096, 1536,
    ]  # fmt: skip
    for bad in ("10 parsecs", "ms", "", True, "1e"):
        with pytest.raises(ValueError, match="duration"):
            duration(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        size("1.5")


def test_serve_takes_seconds_and_bytes_on_the_command_line_as_in_its_config_file(
    capsys: pytest.CaptureFixture[str], tiny_model: str
) -> None:
    from segray.serving.app import build
    from segray.serving.labeller import ServeOptions

    a = build_parser().parse_args(["serve", "--model", "m"])
    defaults = ServeOptions(model="m")
    assert (a.batch_wait, a.max_body, a.deadline_s) == (
        defaults.batch_wait_s, defaults.max_body_bytes, defaults.deadline_s,
    )  # fmt: skip
    a = build_parser().parse_args(
        [
            "serve",
            "--model",
            "m",
            "--batch-wait",
            "50ms",
            "--max-body",
            "2MiB",
            "--deadline-s",
            "1.5",
            "--stuck-margin-s",
            "2min",
        ]
    )
    assert (a.batch_wait, a.max_body, a.deadline_s, a.stuck_margin_s) == (0.05, 2 * 2**20, 1.5, 120.0)
    assert usage_error(["serve", "--model", "m", "--max-body", "lots"], capsys).endswith(
        "argument --max-body: size 'lots': give a number, optionally with a unit "
        "(B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )
    # The old flags, with their old units, are refused, naming the new ones.
    assert usage_error(["serve", "--model", "m", "--batch-wait-ms", "10"], capsys).endswith(
        "--batch-wait-ms: did you mean --batch-wait?"
    )
    # A Serve config file's args take the same units, as numbers or with a unit.
    built = build({"model": tiny_model, "batch_wait_s": "50ms", "max_body_bytes": "2MiB", "deadline_s": 1.5})
    opts = ServeOptions(**built._bound_deployment.init_args[0])
    assert (opts.batch_wait_s, opts.max_body_bytes, opts.deadline_s) == (0.05, 2 * 2**20, 1.5)


#: What every resolved recipe held for the keys since removed, as recipes saved by older versions have them.
OLD_KEYS = {
    "model": {"name": None},
    "data": {"labels": None},
    "augment": {"enabled": True},
    "optim": {"poly_power": 0.9, "min_lr_factor": 0.0},
    "run": {"export_to": "s3://old-bucket/models/x"},
}


def test_a_removed_key_in_a_recipe_is_refused_saying_what_replaced_it(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  schedule: cosine\n  min_lr_factor: 0.1\n")
    with pytest.raises(ValueError, match=rf"^unknown key optim.min_lr_factor in {recipe}: it was removed; the cosine"):
        load_config(str(recipe))
    for section, keys in OLD_KEYS.items():
        for key, value in keys.items():
            with pytest.raises(ValueError, match=rf"^unknown key {section}.{key} in override .*: it was removed; "):
                load_config(None, [f"{section}.{key}={value}"])


def test_a_recipe_saved_by_an_older_version_still_loads(tmp_path: Path, tiny_model: str) -> None:
    import shutil

    import yaml

    from segray.models.artifact import RECIPE, ModelArtifact
    from segray.models.info import model_info

    current = load_config(None, ["name=tiny", "model.arch=pspnet", "optim.schedule=cosine"]).to_dict()
    old = {k: {**v, **OLD_KEYS.get(k, {})} if isinstance(v, dict) else v for k, v in current.items()}
    # An artifact exported by an older version: its recipe.yaml and segray.json's metrics.recipe hold the old keys.
    model = tmp_path / "old-model"
    shutil.copytree(tiny_model, model)
    art = ModelArtifact.load(str(model))
    art.metrics["recipe"] = old
    art.save(str(model))
    (model / RECIPE).write_text(yaml.safe_dump(old, sort_keys=False))
    loaded = ModelArtifact.load(str(model))
    assert loaded.metrics["recipe"] == old
    assert "export_to: s3://old-bucket/models/x" in model_info(str(model))["recipe"]
