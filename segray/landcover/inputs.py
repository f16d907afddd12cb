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


def _roots(uri: str) -> tuple[str, str]:
    """A labelling output root, or its stats/ folder -> (stats uri, errors uri)."""
    base = uri.rstrip("/")
    if base.rsplit("/", 1)[-1] == "stats":
        return base, base[: -len("stats")] + "errors"
    return storage.join(base, "stats"), storage.join(base, "errors")


def find_inputs(uris: list[str]) -> StatsInputs:
    """List stats and errors parts under each labelling output; refuse inputs with no stats at all."""
    if not uris:
        raise ValueError("no --stats input given")
    kinds = {storage.is_s3(u) for u in uris}
    if len(kinds) > 1:
        raise ValueError(f"--stats inputs mix S3 and local paths ({uris}); export them separately")
    stats: list[str] = []
    errors: list[str] = []
    for uri in uris:
        s_uri, e_uri = _roots(uri)
        found = storage.list_files(s_uri, (".parquet",))
        if not found:
            raise ValueError(f"{uri}: no stats Parquet parts under {s_uri} (is this a labelling job's output?)")
        stats += found
        errors += storage.list_files(e_uri, (".parquet",))
    fs = storage.resolve(uris[0])[0]
    with fs.open_input_file(stats[0]) as f:
        schema = pq.read_schema(io.BytesIO(f.read()))
    meta = (schema.metadata or {}).get(b"segray.label_map")
    label_map = LabelMap.from_json(meta.decode(), stats[0]) if meta else None
    return StatsInputs(stats, errors, fs, schema, label_map)
