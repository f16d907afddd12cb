"""A pickle that leaves a trace when unpickled: proof that a loader refused it rather than ran it."""

from __future__ import annotations

from pathlib import Path

import torch


class MarkerOnUnpickle:
    """Unpickling this creates ``path`` (via builtins.open): proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def write_booby_trapped_pickle(target: Path, marker: Path) -> None:
    """A torch checkpoint at ``target`` whose unpickling creates ``marker``."""
    torch.save({"state_dict": {"w": torch.zeros(2)}, "trap": MarkerOnUnpickle(marker)}, target)
