"""segray: semantic-segmentation labelling and training for large image archives, on Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "read_instances", "read_stats"]

if TYPE_CHECKING:
    from segray.outputs.read import read_instances, read_stats


def __getattr__(name: str) -> Any:
    # Lazy, so that ``import segray`` stays cheap (pyarrow only when a reader is used).
    if name in ("read_stats", "read_instances"):
        from segray.outputs import read

        return getattr(read, name)
    raise AttributeError(f"module 'segray' has no attribute {name!r}")
