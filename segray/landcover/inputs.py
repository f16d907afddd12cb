"""Where the export reads from: labelling outputs (or their ``stats/`` folders), and what they hold."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from segray import storage
from segray.labels import LabelMap


@dataclass(frozen=True)
class StatsInputs:
    stats_files: list[str]  # filesystem paths of stats parts, across every input
    errors_files: list[str]
    filesystem: object  # one pyarrow filesystem for all of them
    schema: pa.Schema  # of the first stats part
    label_map: LabelMap | None  # from the schema metadata (segray.label_map)

    @property
    def classes(self) -> list[str]:
        return [n.removeprefix("px_") for n in self.schema.names if n.startswith("px_")]


def _parts(uri: str) -> tuple[list[str], list[str]]:
    """Stats and errors parts under ``uri``: a labelling output, a prefix holding several (one per
    date or block: every ``stats/`` and ``errors/`` folder beneath counts), or a ``stats/`` folder."""
    base = uri.rstrip("/")
    if base.rsplit("/", 1)[-1] == "stats":
        errors = base[: -len("stats")] + "errors"
        return storage.list_files(base, (".parquet",)), storage.list_files(errors, (".parquet",))
    files = storage.list_files(base, (".parquet",))
    folder = [f.rsplit("/", 2)[-2] if f.count("/") >= 1 else "" for f in files]
    return [f for f, d in zip(files, folder, strict=True) if d == "stats"], [
        f for f, d in zip(files, folder, strict=True) if d == "errors"
    ]


def find_inputs(uris: list[str]) -> StatsInputs:
    """List stats and errors parts under each input; refuse an input with no stats at all."""
    if not uris:
        raise ValueError("no --stats input given")
    kinds = {storage.is_s3(u) for u in uris}
    if len(kinds) > 1:
        raise ValueError(f"--stats inputs mix S3 and local paths ({uris}); export them separately")
    stats: list[str] = []
    errors: list[str] = []
    for uri in uris:
        s_found, e_found = _parts(uri)
        if not s_found:
            raise ValueError(f"{uri}: no stats/*.parquet parts under it (is this a labelling job's output?)")
        stats += s_found
        errors += e_found
    fs = storage.resolve(uris[0])[0]
    with fs.open_input_file(stats[0]) as f:
        schema = pq.read_schema(io.BytesIO(f.read()))
    meta = (schema.metadata or {}).get(b"segray.label_map")
    label_map = LabelMap.from_json(meta.decode(), stats[0]) if meta else None
    return StatsInputs(stats, errors, fs, schema, label_map)
