"""``segray train``: argument parsing only; the work is in :mod:`segray.training.job`."""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass

from segray.exit_codes import EXIT_CODES
from segray.options import add_dataclass_arguments, opt


@dataclass
class TrainCommand:
    """``segray train``'s options."""

    config: str = opt(
        help="recipe YAML (local or s3://), e.g. configs/camvid-unet-cpu.yaml",
        flag="--config",
        when_missing="training and --print-config both need a recipe: configs/template.yaml in segray's repository "
        "is the one to start from, docs/training.md describes every key",
    )
    overrides: list[str] = opt(
        help="recipe overrides, e.g. run.epochs=5 optim.lr=3e-4",
        default_factory=list,
        positional=True,
        nargs="*",
        metavar="KEY=VALUE",
    )
    address: str | None = opt(None, help="Ray address", flag="--address", default_help="$RAY_ADDRESS, else a local Ray")
    no_ray: bool = opt(
        False,
        help="run the per-worker training function as one worker in this process, without Ray "
        "(a lone GPU machine without Ray installed); same checkpoints, resume and export",
        flag="--no-ray",
    )
    print_config: bool = opt(
        False,
        help="print the resolved recipe (overrides applied, defaults filled in: what recipe.yaml will hold) and exit",
        flag="--print-config",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train", help="train a UNet/PSPNet on Ray Train from a YAML recipe; exports an artifact", epilog=EXIT_CODES
    )
    add_dataclass_arguments(tr, TrainCommand)
    tr.set_defaults(func=cmd_train)


def cmd_train(a: argparse.Namespace) -> int:
    from segray.recipe import load_config
    from segray.training.job import run_training

    cfg = load_config(a.config, a.overrides)
    if a.print_config:
        from segray.tasks import task_of_arch
        from segray.training.job import absolutise

        absolutise(cfg)  # as the run folder's recipe.yaml has it
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the recipe alone
            task_of_arch(cfg.model.arch).resolve(cfg)
        sys.stdout.write(cfg.to_yaml())
        return 0
    if not a.no_ray:
        from segray.ray_runtime import init_ray

        init_ray(a.address)
    s = run_training(cfg, with_ray=not a.no_ray)
    if s.completed:
        print(
            f"trained {cfg.name}: {s.epochs_done} epochs, best {s.score_label} {s.best_score:.4f} at epoch "
            f"{s.best_epoch}; artifact {s.model_id} -> {s.artifact}; curves {s.run_uri}/curves.png"
        )
    else:
        print(f"stopped after epoch {s.epochs_done} of {s.epochs}; rerun the same command to continue ({s.run_uri})")
    return 0
