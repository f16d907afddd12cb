"""The synthetic instance set (:mod:`segray.datasets.synthetic_instances`) written and converted for tests."""

from __future__ import annotations

from segray import storage
from segray.datasets.formats import ConvertOptions, convert
from segray.datasets.synthetic_instances import ATTRIBUTE, CLASSES, write_synthetic_instances

__all__ = ["ATTRIBUTE", "CLASSES", "write_instance_dataset", "write_synthetic_instances"]


def write_instance_dataset(
    root: str, splits: dict[str, int], size: tuple[int, int] = (64, 64), seed: int = 0, fmt: str = "coco"
) -> str:
    """Sources under ``<root>/src``, converted from ``fmt`` into the canonical layout at ``<root>/data``."""
    src = write_synthetic_instances(storage.join(root, "src"), splits, size, seed)
    options = ConvertOptions(attribute=ATTRIBUTE) if fmt == "via-instances" else ConvertOptions()
    dst = storage.join(root, "data")
    convert(fmt, src["via" if fmt == "via-instances" else "coco"], dst, options)
    return dst
