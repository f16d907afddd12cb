"""Shared option parsing: a misspelt recipe key, override, flag or subcommand gets a suggestion."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.cli import run

from segray.cli import build_parser, main
from segray.options import (
    ArgumentParser,
    Option,
    add_dataclass_arguments,
    apply_units,
    check_bounds,
    declared_option,
    duration,
    from_namespace,
    opt,
    option_of,
    size,
)
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


@dataclass
class Fetch:
    """An options dataclass as a command declares one: every option once, with its flag and bounds."""

    url: str = opt(help="what to fetch", flag="--url")
    timeout_s: float = opt(30.0, help="give up after", flag="--timeout", unit="seconds", above=0)
    max_body: int = opt(2**20, help="largest body", flag="--max-body", unit="bytes", min=1)
    retries: int = opt(3, help="tries after the first", flag="--retries", min=0, max=10)
    mode: str = opt("fast", help="how to fetch", flag="--mode", choices=("fast", "safe"))
    verify: bool = opt(True, help="skip the certificate check", flag="--no-verify")
    agent: str = opt("segray", help="set by the program")  # no flag

    def __post_init__(self) -> None:
        check_bounds(self)


def fetch_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fetch")
    add_dataclass_arguments(parser, Fetch)
    return parser


def test_a_dataclass_declares_its_flags_units_defaults_and_bounds_once(capsys: pytest.CaptureFixture[str]) -> None:
    parser = fetch_parser()
    text = " ".join(parser.format_help().split())
    assert "--url URL what to fetch" in text and "--agent" not in text
    assert "give up after (default 30 seconds)" in text and "largest body (default 1,048,576 bytes)" in text
    assert "--mode {fast,safe} how to fetch (default fast)" in text and "--no-verify skip the certificate" in text
    assert from_namespace(Fetch, parser.parse_args(["--url", "u"])) == Fetch(url="u")
    got = from_namespace(
        Fetch, parser.parse_args(["--url", "u", "--timeout", "500ms", "--max-body", "64KiB", "--no-verify"])
    )
    assert (got.timeout_s, got.max_body, got.verify) == (0.5, 64 * 2**10, False)
    assert from_namespace(Fetch, parser.parse_args(["--url", "u"]), agent="x", retries=0).agent == "x"
    # Out of bounds: the command line names the flag, a program the field and its flag.
    for argv, message in (
        (["--retries", "11"], "--retries must be within [0, 10], got 11"),
        (["--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
        (["--max-body", "0"], "--max-body must be >= 1, got 0"),
    ):
        with pytest.raises(ValueError) as e:
            from_namespace(Fetch, parser.parse_args(["--url", "u", *argv]))
        assert str(e.value) == message
    with pytest.raises(ValueError, match=r"^mode must be one of fast, safe, got 'slow' \(--mode\)$"):
        Fetch(url="u", mode="slow")
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "slow", "--url", "u"])
    assert capsys.readouterr().err.strip().endswith("invalid choice: 'slow' (choose from 'fast', 'safe')")
    # A subset of the fields: the others keep their defaults.
    some = ArgumentParser(prog="fetch")
    add_dataclass_arguments(some, Fetch, only=["url", "retries", "mode"], skip=["mode"])
    assert [a.dest for a in some._actions if a.dest != "help"] == ["url", "retries"]
    assert from_namespace(Fetch, some.parse_args(["--url", "u", "--retries", "5"])) == Fetch(url="u", retries=5)


@dataclass
class Undocumented:
    wait_s: float | None = opt(None, help="how long to wait", flag="--wait")


def test_an_option_without_a_default_value_must_say_what_happens_without_it() -> None:
    with pytest.raises(TypeError, match=r"^Undocumented.wait_s: an option without a default value needs default_help"):
        add_dataclass_arguments(ArgumentParser(), Undocumented)


#: LabelOptions fields that are no flag of ``segray label``, and why.
LABEL_FIELDS_WITHOUT_A_FLAG = {
    "run_id": "a new one for each run",
    "read_batch_size": "the size the end of a job is cut into, set by programs",
}


def label_default_text(f: dataclasses.Field[Any], spec: Option) -> str:
    """What ``segray label --help`` should say of the field's default."""
    if spec.default_help is not None:
        return f"(default: {spec.default_help})"
    value = f.default
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}" if isinstance(value, float) else str(value)
    return f"(default {shown})"


def test_every_label_option_has_a_flag_with_help_that_shows_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from segray.cli import label_options
    from segray.labelling.job import LabelOptions

    code, text = run(capsys, "label", "--help")
    assert code == 0
    required = {"model", "input", "output"}  # --model, --input, --output: no default
    for f in dataclasses.fields(LabelOptions):
        spec = option_of(f)
        assert spec is not None and spec.help, f"LabelOptions.{f.name} is declared without opt(help=...)"
        if f.name in LABEL_FIELDS_WITHOUT_A_FLAG:
            assert spec.flag is None and spec.help not in text
            continue
        assert spec.flag is not None, f"LabelOptions.{f.name} has no flag"
        if f.name in required or isinstance(f.default, bool):  # a switch's default is its absence
            assert f"{spec.flag} " in text and spec.help in text, f.name
        else:
            assert f"{spec.help} {label_default_text(f, spec)}" in text, f.name
    # Without flags, a run has the dataclass's own defaults.
    base = ["label", "--model", "m", "--input", "i", "--output", "o"]
    assert label_options(build_parser().parse_args(base)) == LabelOptions(model="m", input="i", output="o")
    opts = label_options(build_parser().parse_args([*base, "--tag", "a=1", "--tag", "b=2", "--decode", "gpu"]))
    assert (opts.tags, opts.decode) == ({"a": "1", "b": "2"}, "gpu")


def test_a_label_option_out_of_bounds_names_its_flag_and_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segray.labelling.job import LabelOptions

    hints = typing.get_type_hints(LabelOptions)
    base = ["label", "--model", "m", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    checked = []
    for f in dataclasses.fields(LabelOptions):
        spec = option_of(f)
        if spec is None or spec.flag is None or spec.requirement() is None or spec.choices:
            continue
        number = int if int in typing.get_args(hints[f.name]) or hints[f.name] is int else float
        bad = number(spec.max + 1 if spec.max is not None else spec.min - 1 if spec.min is not None else spec.above)
        code, out = run(capsys, *base, spec.flag, str(bad))
        assert code == 2 and f"segray: error: {spec.flag} must be {spec.requirement()}, got {bad!r}" in out, out
        checked.append(spec.flag)
    assert {"--batch-size", "--limit", "--min-score", "--pixel-size", "--max-failed-fraction"} <= set(checked)
    code, out = run(capsys, *base, "--min-score", "1.5")
    assert "segray: error: --min-score must be within [0, 1], got 1.5" in out
    assert (
        "segray: error: --pixel-size must be a positive number of metres, got 0.0"
        in run(capsys, *base, "--pixel-size", "0")[1]
    )
    # A program that makes LabelOptions gets the field's name and the flag's.
    with pytest.raises(ValueError, match=r"^decode must be one of cpu, gpu, got 'npu' \(--decode\)$"):
        LabelOptions(model="m", input="i", output="o", decode="npu")
    with pytest.raises(ValueError, match=r"^read_batch_size must be >= 1, got 0$"):
        LabelOptions(model="m", input="i", output="o", read_batch_size=0)
    # The checks that relate two options stay.
    with pytest.raises(ValueError, match=r"need min_actors \(4\) <= max_actors \(2\)"):
        LabelOptions(model="m", input="i", output="o", min_actors=4, max_actors=2)


@dataclass
class Copy:
    """Positional arguments, a flag taking several values, a flag under another name and an earlier spelling."""

    src: str = opt(help="what to copy", positional=True)
    to: list[str] = opt(help="where to", flag="--to", nargs="+")
    extra: list[str] = opt(help="more to copy", default_factory=list, positional=True, nargs="*", metavar="MORE")
    wait_s: float = opt(0.25, help="pause", flag="--wait", dest="wait", unit="seconds", shown_default="250ms")
    log: str | None = opt(None, help="log file", flag="--log", default_help="none", former_flags=("--logfile",))

    def __post_init__(self) -> None:
        apply_units(self)


def test_positionals_lists_another_dest_and_an_earlier_spelling_come_from_the_declaration() -> None:
    parser = ArgumentParser(prog="copy")
    add_dataclass_arguments(parser, Copy)
    text = " ".join(parser.format_help().split())
    assert "usage: copy [-h] --to TO [TO ...] [--wait WAIT] [--log LOG] src [MORE ...]" in text
    assert "src what to copy MORE more to copy" in text and "pause (default 250ms)" in text
    assert "--logfile" not in text  # taken, not listed
    a = parser.parse_args(["a", "b", "c", "--to", "x", "y", "--wait", "2s", "--logfile", "l"])
    assert (a.src, a.extra, a.to, a.wait, a.log) == ("a", ["b", "c"], ["x", "y"], 2.0, "l")
    assert from_namespace(Copy, a) == Copy(src="a", extra=["b", "c"], to=["x", "y"], wait_s=2.0, log="l")
    assert from_namespace(Copy, parser.parse_args(["a", "--to", "x"])) == Copy(src="a", to=["x"])
    # Every argument made from the declaration carries its Option; one added by hand does not.
    hand = parser.add_argument("--by-hand")
    spec = {f.name: option_of(f) for f in dataclasses.fields(Copy)}
    assert [declared_option(x) for x in parser._actions if x.dest in ("src", "log")] == [
        spec["src"], spec["log"], spec["log"],  # --log and --logfile
    ]  # fmt: skip
    assert declared_option(hand) is None
    # A program (or a config file) gives the units the command line takes.
    assert Copy(src="a", to=["x"], wait_s="500ms").wait_s == 0.5  # type: ignore[arg-type]


#: Flags that are the command line's own plumbing, not an option of a command.
PLUMBING = {"--help", "--version"}


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, argparse.ArgumentParser]]:
    """``(name, parser)`` of every command ``segray`` runs (the leaves of its subcommand tree)."""
    subs = [x for x in parser._actions if isinstance(x, argparse._SubParsersAction)]
    if not subs:
        return [(" ".join(path), parser)]
    return [leaf for name, p in subs[0].choices.items() for leaf in subcommands(p, (*path, name))]


def test_every_flag_of_every_command_is_declared_once_and_its_help_shows_its_default() -> None:
    commands = subcommands(build_parser())
    assert {"label", "nightly", "model init", "model info", "model convert-weights", "demo", "runs", "compact",
            "train", "data convert", "data stats", "landcover", "serve", "evaluate",
            "compare"} <= {name for name, _ in commands}  # fmt: skip
    checked = 0
    for name, parser in commands:
        for action in parser._actions:
            if set(action.option_strings) & PLUMBING:
                continue
            spec = declared_option(action)
            assert spec is not None, f"segray {name} {action.option_strings or action.dest}: added by hand"
            checked += 1
            shows_default = not (
                action.required
                or spec.positional
                or action.help == argparse.SUPPRESS  # an earlier spelling of a listed flag
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))  # a switch
            )
            if shows_default:
                assert action.help and "(default" in action.help, f"segray {name} {action.option_strings}"
    assert checked > 100


def test_serve_options_are_declared_for_the_command_line_and_the_config_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from segray.serving.labeller import ServeOptions

    for f in dataclasses.fields(ServeOptions):
        spec = option_of(f)
        assert spec is not None and spec.help, f.name
        assert (spec.flag is None) == (f.name == "api_key_sha256"), f.name  # the key comes from the environment
        if f.name.endswith("_s"):
            assert spec.unit == "seconds", f.name
    # A config file's text takes the units the flags take, and both are checked against the same bounds.
    assert ServeOptions(model="m", max_loop_lag_s="2min", max_body_bytes="1kB").max_loop_lag_s == 120.0  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"^deadline_s must be a positive number of seconds, got 0.0 \(--deadline-s\)$"
    ):
        ServeOptions(model="m", deadline_s="0ms")  # type: ignore[arg-type]
    code, text = run(capsys, "serve", "--model", "m", "--max-batch-size", "0")
    assert code == 2 and "segray: error: --max-batch-size must be >= 1, got 0" in text
    code, text = run(capsys, "serve", "--model", "m", "--deadline-s", "0")
    assert code == 2 and "segray: error: --deadline-s must be a positive number of seconds, got 0.0" in text
