"""The real-sized instance check: the synthetic instance set at 512x512, Mask R-CNN trained with
``configs/instances-synthetic-cpu.yaml`` within a wall-clock limit, scored on held-out frames.

    python bench/instance_check.py --out /tmp/instance-check            # 30-minute limit
    python bench/instance_check.py --out /tmp/ic --train 16 --minutes 5 run.epochs=1   # a quick look

Steps: write the set (train / val / test, COCO form) and convert it; ``segray train`` in child
processes on a local Ray, ``--chunk`` epochs each (``run.max_epochs_this_run``; each rerun
continues the run), until the run is done or the next chunk would pass ``--minutes``, in which
case the latest checkpoint is exported (what the run reached); ``segray evaluate`` of the model on
the test split (frames the run never saw). Prints the wall times, AP, AP50, AP75 and the share of
test frames whose counts are exact, and writes them to ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="working folder (data, run, evaluation)")
    p.add_argument("--config", default=str(ROOT / "configs" / "instances-synthetic-cpu.yaml"))
    p.add_argument("--size", type=int, default=512, help="frame side in pixels (default 512)")
    p.add_argument("--train", type=int, default=128, help="training frames (default 128)")
    p.add_argument("--val", type=int, default=16, help="validation frames (default 16)")
    p.add_argument("--test", type=int, default=60, help="held-out test frames (default 60)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock limit of the training (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=5, help="epochs per segray train invocation (default 5)")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. run.epochs=8")
    a = p.parse_args()

    from segray.datasets.formats import convert
    from segray.datasets.synthetic import write_synthetic_instances

    out = Path(a.out).resolve()
    t0 = time.monotonic()
    src = write_synthetic_instances(
        str(out / "src"), {"train": a.train, "val": a.val, "test": a.test}, (a.size, a.size), a.seed
    )
    print(convert("coco", src["coco"], str(out / "data")).summary(), flush=True)
    print(f"data: {time.monotonic() - t0:.0f} s", flush=True)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "segray.cli"]
    name = next((o.split("=", 1)[1] for o in a.overrides if o.startswith("name=")), None)
    if name is None:
        import yaml

        name = yaml.safe_load(Path(a.config).read_text())["name"]
    train = [*cli, "train", "--config", a.config, f"data.root={out / 'data'}", f"run.storage={out / 'runs'}",
             *a.overrides, f"run.max_epochs_this_run={a.chunk}"]  # fmt: skip
    print("$ " + " ".join(train[2:]) + "   (rerun until done or out of time)", flush=True)
    limit, t1, finished, chunks = a.minutes * 60, time.monotonic(), False, []
    while True:
        c0 = time.monotonic()
        proc = subprocess.run(train, env=env, capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stdout.write(proc.stderr[-5000:])
            raise SystemExit(f"segray train failed ({proc.returncode})")
        chunks.append(time.monotonic() - c0)
        finished = "trained " in proc.stdout
        elapsed = time.monotonic() - t1
        print(f"  {elapsed / 60:.1f} min so far", flush=True)
        if finished or elapsed + max(chunks) > limit:  # the next chunk would not fit
            break
    train_s = time.monotonic() - t1
    print(
        f"training: {train_s / 60:.1f} min, {'finished' if finished else 'stopped before the last epoch'}", flush=True
    )
    result: dict = {"train_minutes": round(train_s / 60, 1), "finished": finished, "args": vars(a)}
    model = out / "runs" / name / "model"
    if not finished:  # what it reached: the latest checkpoint, exported as the run's export would
        model = export_latest(a.config, [*train[4:-1]], out / "runs" / name, out / "partial-model")
        result["partial_model"] = str(model)
    if (model / "segray.json").exists():
        ev = [*cli, "evaluate", "--model", str(model), "--data", str(out / "data"), "--split", "test",
              "--output", str(out / "eval"), "--torch-threads", "2"]  # fmt: skip
        print("$ " + " ".join(ev[2:]), flush=True)
        subprocess.run(ev, env=env, check=True)
        m = json.loads((out / "eval" / "metrics.json").read_text())
        keys = ("frames", "ap", "ap50", "ap75", "exact_count_fraction", "count_mae", "per_class")
        result.update({k: m[k] for k in keys})
        print(
            f"test frames {m['frames']}: mask AP {m['ap']:.3f}, AP50 {m['ap50']:.3f}, AP75 {m['ap75']:.3f}; "
            f"exact counts on {100 * m['exact_count_fraction']:.1f}% of frames (count MAE {m['count_mae']:.3f})",
            flush=True,
        )
    (out / "result.json").write_text(json.dumps(result, indent=2))


def export_latest(config: str, overrides: list[str], run: Path, dest: Path) -> Path:
    """The run's latest checkpoint exported as an instance artifact at ``dest``."""
    from segray.datasets.instances import instance_label_map
    from segray.recipe import load_config
    from segray.tasks import TaskPlan, task_of_arch
    from segray.training.job import export
    from segray.training.session import StoredCheckpoint

    cfg = load_config(config, overrides)
    latest = max(run.glob("epoch-*"))
    p = TaskPlan(instance_label_map(cfg.data.root), [], [], "", {"partial": latest.name}, "frames")
    export(StoredCheckpoint(str(latest)), task_of_arch(cfg.model.arch), cfg, p, str(dest))
    print(f"exported {latest.name} (training stopped by the time limit) to {dest}", flush=True)
    return dest


if __name__ == "__main__":
    main()
