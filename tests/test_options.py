"""Shared option parsing: a misspelt recipe key, override, flag or subcommand gets a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from segray.cli import main
from segray.training.config import load_config


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
