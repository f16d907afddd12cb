"""``segray train``: argument parsing only; the work is in :mod:`segray.training.job`."""

from __future__ import annotations

import argparse
import contextlib
import sys

from segray.exit_codes import EXIT_CODES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train", help="train a UNet/PSPNet on Ray Train from a YAML recipe; exports an artifact", epilog=EXIT_CODES
    )
    tr.add_argument("--config", required=True, help="recipe YAML (local or s3://), e.g. configs/camvid-unet-cpu.yaml")
    tr.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. run.epochs=5 optim.lr=3e-4"
    )
    tr.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    tr.add_argument(
        "--no-ray",
        action="store_true",
        help="run the per-worker training function as one worker in this process, without Ray "
        "(a lone GPU machine without Ray installed); same checkpoints, resume and export",
    )
    tr.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe (overrides applied, defaults filled in: what recipe.yaml will hold) and exit",
    )
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
