"""Reading an output's Parquet tables back, whole, without segray's own readers (which keep one row
per frame): the tests count exactly what was written."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads

from segray import storage


def read_table(output: str, sub: str) -> pa.Table:
    """Every row of ``output/sub`` (e.g. ``stats``, ``errors``); an empty table when it does not exist."""
    uri = storage.join(output, sub)
    if not storage.exists(uri):
        return pa.table({})
    fs, path = storage.resolve(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()
