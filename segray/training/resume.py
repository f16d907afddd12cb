"""A run's identity: the one record every resume check reads.

Rerunning a recipe (same ``name`` and ``run.storage``) continues the run in ``<storage>/<name>``.
That is safe only while the checkpoints still fit: the same architecture, encoder, classes, input
size and builder arguments, and the same runner (Ray Train and ``--no-ray`` each keep their own
record of checkpoints, so the other would start again over the same epoch folders). The driver
writes that identity as ``segray-run.json`` when a run starts and compares it on every rerun,
before any worker starts; the resolved recipe is saved beside it as ``recipe.yaml``.
"""

from __future__ import annotations

import json
from typing import Any

from segray import storage
from segray.labels import LabelMap
from segray.recipe import TrainConfig

RUN_FILE = "segray-run.json"
#: Each runner's own record of checkpoints (Ray Train's snapshot, LocalSession's index), for runs
#: whose identity predates the runner field.
RUNNER_RECORDS = {"ray": "checkpoint_manager_snapshot.json", "local": "segray-checkpoints.json"}


def run_identity(cfg: TrainConfig, label_map: LabelMap, runner: str) -> dict[str, Any]:
    return {
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "classes": label_map.names,
        "input_size": [cfg.model.height, cfg.model.width],
        "model_kwargs": cfg.model.kwargs,
        "runner": runner,
    }


def check_or_record(cfg: TrainConfig, label_map: LabelMap, runner: str) -> None:
    """Refuse a rerun whose model or runner no longer matches the run it would continue; record a new run's."""
    identity = run_identity(cfg, label_map, runner)
    uri = storage.join(cfg.run_uri, RUN_FILE)
    if not storage.exists(uri):
        storage.write_bytes(uri, json.dumps(identity, indent=1).encode())
        return
    before = json.loads(storage.read_bytes(uri))
    if "runner" not in before:  # older record: the runner is told by its own checkpoint record
        for name, record in RUNNER_RECORDS.items():
            if storage.exists(storage.join(cfg.run_uri, record)):
                before["runner"] = name
        before.setdefault("runner", runner)
    if before["runner"] != runner:
        flag = "with --no-ray" if before["runner"] == "local" else "on Ray (without --no-ray)"
        raise ValueError(f"{cfg.run_uri} holds a run started {flag}: continue it so, or give this run a new name=")
    changed = {k: (before.get(k), v) for k, v in identity.items() if before.get(k) != v}
    if changed:
        detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"{cfg.run_uri} holds a run of another model ({detail}); rerunning continues a run, so give "
            "this recipe a new name= or run.storage="
        )
