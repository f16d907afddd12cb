"""The labelling job: frames -> Ray Data (read -> predict -> write) -> masks, stats, errors, summary.

Output layout under ``output``::

    masks/<relative_path>.png        palette PNG per frame (class index per pixel); for an instance
                                     model, a 16-bit PNG of instance ids (segray.tasks.instance.predict)
    instances/part-<run>-<id>.parquet  instance models: one row per instance (segray.outputs.schema)
    stats/part-<run>-<id>.parquet    one row per labelled frame (schema: segray.outputs.schema)
    errors/part-<run>-<id>.parquet   one row per frame that could not be labelled, with the reason
    _runs/<run_id>.json              counts, timing, model id, options (written last)
    _lease.json                      which run writes the output now (segray.outputs.lease)

One run at a time: a run takes the output's lease before it lists anything and holds it to the end,
so a second run on the same output exits with LeaseHeld instead of labelling frames twice.

Reruns: frames that already have a ``stats/`` row from the same model id are skipped, so rerunning
a finished job labels nothing and rerunning an interrupted one finishes the rest (for instance
models the model id carries ``--min-score``, which changes what is written: ``+min0.5``); ``errors/``
describes the latest completed run (earlier runs' error parts are removed when a run completes,
since every frame without a stats row was retried; a run cut short by ``limit`` keeps them).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from segray import storage
from segray.frames.decode import DEFAULT_MAX_PIXELS
from segray.frames.listing import is_manifest, list_folder, relative_paths_from_uris, resolve_manifest_uris
from segray.labelling.resources import PoolLayout, cores_per_actor, gpus_per_actor, pool_layout
from segray.options import check_bounds, key_values, opt, parse_window
from segray.outputs.lease import OutputLease
from segray.progress import Progress
from segray.ray_runtime import cluster_capacity
from segray.tasks import task_named
from segray.tasks.batch import DEFAULT_TILE_ABOVE
from segray.tiles.pixel_size import WORLD_FILE_COLUMN
from segray.tiles.windows import TileSpec
from segray.tiles.worldfile import world_file_candidates

if TYPE_CHECKING:  # the artifact module brings torch: not loaded to parse a command line
    from segray.models.artifact import ArtifactInfo

log = logging.getLogger("segray.label")

#: Rows per block when a folder listing becomes a dataset: small enough to spread reads.
LISTING_BLOCK_ROWS = 64
#: The smallest block the end of a job is cut into, unless the read step's batch is set otherwise
#: (a block smaller than that batch would be bundled with the next one anyway).
TAIL_BLOCK_ROWS = 16
#: Stats parts read at once by the done-check (object stores are latency-bound).
DONE_READ_THREADS = 16
#: The done-check lists ``stats/`` again when a part is gone before it is read, this many times at most.
DONE_READ_ATTEMPTS = 3
#: The --help section of the options for large frames and areas in m2.
TILES = "large tiles and physical units"


@dataclass
class LabelOptions:
    """What a labelling run does. Each field is also a flag of ``segray label`` / ``segray nightly``
    (segray.options: its flag, help, unit and bounds are declared here and nowhere else)."""

    model: str = opt(help="model artifact folder or s3:// URI", flag="--model")
    input: str = opt(help="folder/S3 prefix of PNG/JPEG frames, or a manifest (.parquet/.csv)", flag="--input")
    output: str = opt(help="output folder or s3:// prefix", flag="--output")
    batch_size: int = opt(8, help="frames per model call", flag="--batch-size", min=1)
    #: None: one actor with a GPU, else one single-threaded actor per core (resources.pool_layout)
    min_actors: int | None = opt(
        None,
        help="inference actor pool minimum",
        flag="--min-actors",
        default_help="1 with GPUs; without, one actor per core, at most 4",
        min=1,
    )
    max_actors: int | None = opt(
        None,
        help="inference actor pool maximum; > min autoscales; 0 = as many as the cluster can hold",
        flag="--max-actors",
        default_help="= min",
        min=0,
    )
    #: None: 1 with a GPU, else resources.CPU_ACTOR_CPUS
    cpus_per_actor: float | None = opt(
        None,
        help="Ray CPUs reserved per inference actor",
        flag="--cpus-per-actor",
        default_help="1 with GPUs, 0.5 without",
        above=0,
    )
    gpus_per_actor: float | None = opt(
        None, help="GPUs per actor", flag="--gpus-per-actor", default_help="1 if the cluster has GPUs"
    )
    torch_threads: int = opt(
        0,
        help="torch CPU threads per actor",
        flag="--torch-threads",
        default_help="node cores / max actors, at least 1",  # 0: the actor's share of the node's cores
    )
    read_cpus: float = opt(0.5, help="Ray CPUs per read/decode task", flag="--read-cpus")
    write_cpus: float = opt(0.5, help="Ray CPUs per write task", flag="--write-cpus")
    #: Frames per read/decode task's batch (no flag: the tail blocks are cut to this size).
    read_batch_size: int = opt(TAIL_BLOCK_ROWS, help="frames per read/decode batch", min=1)
    write_batch_size: int = opt(128, help="frames per stats/errors Parquet part", flag="--write-batch-size", min=1)
    max_pixels: int = opt(
        DEFAULT_MAX_PIXELS,
        help="refuse frames whose header declares more pixels, before decoding",
        flag="--max-pixels",
    )
    uri_column: str = opt("uri", help="manifest column holding frame URIs", flag="--uri-column")
    device: str = opt("auto", help="torch device: auto (cuda if torch sees one), cpu, cuda", flag="--device")
    #: Set for each run (new_run_id), so no flag.
    run_id: str = opt("", help="the run's id in its rows and its _runs/ record")
    #: Constant columns added to every stats/errors row (e.g. the nightly job's ``date``).
    tags: dict[str, str] = opt(
        help="constant column added to every stats/errors row (repeatable), e.g. --tag region=north",
        flag="--tag",
        default_factory=dict,
        default_help="none",
        action="append",
        convert=key_values,
        metavar="KEY=VALUE",
    )
    #: End the run with :class:`FailureBudgetExceeded` (after writing everything) above this share.
    max_failed_fraction: float | None = opt(
        None,
        help="exit non-zero (3) when more than this share of frames fails, after writing all outputs",
        flag="--max-failed-fraction",
        default_help="any share",
        min=0.0,
        max=1.0,
    )
    #: Frames with a side above this many times the reference size (the training frames' size the
    #: artifact records, else the model input) are labelled in windows; the others are resized.
    tile_above: float = opt(
        DEFAULT_TILE_ABOVE,
        help="label a frame in windows at its own resolution when a side is above this many times the size the "
        "model was trained on (recorded by segray train; else its input size); others are resized",
        flag="--tile-above",
        min=0,
        group=TILES,
    )
    #: Window (height, width) for large frames; None: the model's input size.
    tile_window: tuple[int, int] | None = opt(
        None,
        help="window HxW for large frames; one number is a square (512 = 512x512)",
        flag="--window",
        default_help="the model input",
        parse=parse_window,
        group=TILES,
    )
    #: Window overlap in pixels; None: a quarter of the window's short side.
    tile_overlap: int | None = opt(
        None, help="window overlap in pixels", flag="--overlap", default_help="window / 4", min=0, group=TILES
    )
    #: Metres per pixel when neither the manifest (pixel_size_m) nor a world file gives one.
    pixel_size: float | None = opt(
        None,
        help="metres per pixel when neither the manifest (pixel_size_m) nor a world file gives one",
        flag="--pixel-size",
        default_help="none; frames without one get no areas in m2",
        unit="metres",
        above=0,
        group=TILES,
    )
    #: Use world files (.pgw/.jgw/.tfw...) beside the frames: a listed folder's listing finds them; a
    #: manifest's frames are looked up one by one (an existence check per candidate name).
    world_files: bool = opt(
        True,
        help="ignore .pgw/.jgw/.tfw world files beside frames (a manifest's frames are otherwise looked up one by one)",
        flag="--no-world-files",
        group=TILES,
    )
    #: GeoTIFF scenes: also write each scene's per-pixel confidence as a COG (confidence/<path>.tif).
    #: PNG/JPEG frames have no such map: a run that lists one is refused (check_confidence_inputs).
    write_confidence: bool = opt(
        False,
        help="GeoTIFF scenes: also write each scene's confidence map, the winning class's probability in whole "
        "percent (255 = nodata), as a COG at confidence/<path>.tif; refused when the input lists PNG/JPEG frames",
        flag="--write-confidence",
        group=TILES,
    )
    #: Label at most this many of the frames not yet labelled (in listing order); the next run goes on.
    limit: int | None = opt(
        None,
        help="label at most N of the frames not yet labelled, in listing order; a rerun goes on with the rest",
        flag="--limit",
        default_help="every frame",
        min=1,
        metavar="N",
    )
    #: Where JPEG frames are decoded: ``cpu`` (the read tasks) or ``gpu`` (nvJPEG in the inference
    #: actors; the read tasks only fetch and check them). Other formats are always decoded on CPUs.
    decode: str = opt(
        "cpu",
        help="where JPEG frames are decoded: cpu (the read tasks) or gpu (nvJPEG in the inference actors, which "
        "then need GPUs; other formats stay on CPUs)",
        flag="--decode",
        choices=("cpu", "gpu"),
    )
    #: Instance models: detections scoring below are dropped (None: DEFAULT_MIN_SCORE). Part of the
    #: rows' model id, so a run with another threshold labels the frames again.
    min_score: float | None = opt(
        None,
        help="instance models: keep objects scoring at least this (0-1; part of the rows' model id)",
        flag="--min-score",
        default_help="0.5",  # segray.tasks.instance.predict.DEFAULT_MIN_SCORE (brings torch: not imported here)
        min=0.0,
        max=1.0,
    )

    def __post_init__(self) -> None:
        # Workers resolve these paths, and they may run in another working directory.
        self.model, self.input, self.output = (storage.absolute(u) for u in (self.model, self.input, self.output))
        check_bounds(self)  # every bound declared above
        lo, hi = self.min_actors, self.max_actors
        if lo and hi and hi < lo:
            raise ValueError(f"need min_actors ({lo}) <= max_actors ({hi}) (--min-actors, --max-actors); 0 = auto")
        reserved = {"uri", "relative_path"}
        for key in self.tags:
            if not key.isidentifier() or key in reserved:
                raise ValueError(f"tag {key!r}: a tag name must be an identifier other than {sorted(reserved)}")


@dataclass
class RunSummary:
    run_id: str
    model_id: str
    input: str
    output: str
    frames_in: int
    skipped_done: int
    labelled: int
    failed: int
    seconds: float
    frames_per_s: float
    #: Seconds until the first batch was written (model loading, actor start-up): paid once per run.
    first_output_s: float | None
    started_at: str
    options: dict[str, Any] = field(default_factory=dict)
    #: failed / (labelled + failed) of this run; 0 when nothing was attempted.
    failed_fraction: float = 0.0
    #: Frames still to label that ``limit`` left for a later run.
    left_by_limit: int = 0
    #: Labelled frames that were labelled in windows at their own resolution (the rest were resized).
    windowed: int = 0
    #: ``complete`` (every frame labelled or recorded as failed), ``limited`` (--limit left frames
    #: for a later run) or ``over failure budget`` (exit 3).
    status: str = "complete"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class FailureBudgetExceeded(RuntimeError):
    """More frames failed than ``max_failed_fraction`` allows; everything labelled was written."""

    def __init__(self, summary: RunSummary, limit: float) -> None:
        super().__init__(
            f"run {summary.run_id}: {summary.failed} of {summary.labelled + summary.failed} frames failed "
            f"({summary.failed_fraction:.1%}), above the allowed {limit:.1%}; see {summary.output}/errors"
        )
        self.summary = summary


@dataclass
class LabelPlan:
    """What a run would do now (``segray label --dry-run``): nothing is started or written."""

    model_id: str
    frames_in: int
    done: int
    to_label: int
    left_by_limit: int
    first: list[str]
    lease: str


def label_model_id(info: ArtifactInfo, opts: LabelOptions) -> str:
    """The model id the run's rows carry: the artifact's, or what the task makes of it (an instance
    model's adds ``+min<score>``: rows of two thresholds are two models' rows)."""
    return task_named(info.task).labelled_by(info.model_id, vars(opts))


def plan_run(opts: LabelOptions, info: ArtifactInfo, show: int = 5) -> LabelPlan:
    """Lists the input and the output's stats as a run would, and reads who holds the output."""
    from segray.outputs.lease import read_lease

    mid = label_model_id(info, opts)
    table, total, skipped = _frames_table(opts, mid)
    check_scene_bands(table, info)
    check_confidence_inputs(table, info, opts)
    todo = 0 if table is None else table.num_rows
    n = todo if opts.limit is None else min(todo, opts.limit)
    first = [] if table is None else table.column("relative_path").slice(0, min(n, show)).to_pylist()
    held = read_lease(opts.output)
    if held is None or held.released or held.is_free():
        lease = "free: a run now would take it"
    else:
        lease = f"held by {held.describe()}: a run now would exit 2"
    return LabelPlan(mid, total, skipped, n, todo - n, first, lease)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def _done_paths(output: str, model_id: str) -> pa.Array | None:
    """The ``relative_path`` of every stats row from this model, as one Arrow column: the done-check
    is a columnar anti-join (:func:`_frames_table`), with no Python string per frame. None when
    ``stats/`` holds no row from this model.

    Each part is read on its own and let go (a dataset over ``stats/`` keeps every part's footer
    for as long as it lives: about 150 KB per part of a few hundred rows), several at a time since
    object stores are latency-bound. A part that is gone between listing and reading (replaced by a
    ``segray compact`` during a dry run) makes it list again.
    """
    stats_uri = storage.join(output, "stats")
    fs = storage.resolve(stats_uri)[0]

    def done_in(parts: list[str]) -> pa.Array | None:
        if not parts:
            return None
        with ThreadPoolExecutor(min(DONE_READ_THREADS, len(parts))) as pool:
            done = list(pool.map(lambda path: _done_in_part(fs, path, model_id), parts))
        # One array for the lookup; large_string so that more than 2 GiB of paths still fit in one.
        done_paths = pa.concat_arrays(done)
        return done_paths if len(done_paths) else None

    return storage.read_listed(lambda: storage.list_files(stats_uri, (".parquet",)), done_in, DONE_READ_ATTEMPTS)


def _done_in_part(fs: pafs.FileSystem, path: str, model_id: str) -> pa.Array:
    """The relative paths of one stats part's rows from ``model_id`` (two columns read)."""
    with fs.open_input_file(path) as f:
        t = pq.ParquetFile(f).read(columns=["relative_path", "model_id"])
    rels = t.column("relative_path").filter(pc.equal(t.column("model_id"), model_id))
    return rels.cast(pa.large_string()).combine_chunks()


def _manifest_table(opts: LabelOptions) -> pa.Table:
    """A manifest's rows as (extra columns..., uri, relative_path). The ``uri`` column holds the
    URIs as written: :func:`_frames_table` resolves them for the frames still to label only."""
    import pyarrow.dataset as pads  # brings pandas: loaded when a manifest is read, not to parse a command line

    fs, path = storage.resolve(opts.input)
    fmt = "csv" if opts.input.lower().endswith(".csv") else "parquet"
    table = pads.dataset(path, filesystem=fs, format=fmt).to_table()
    if opts.uri_column not in table.column_names:
        raise ValueError(
            f"{opts.input}: manifest has no {opts.uri_column!r} column (columns: {table.column_names}); "
            "name it with --uri-column"
        )

    def as_text(column: str) -> pa.ChunkedArray:  # what str() of each value gave, None included
        return pc.fill_null(table.column(column).cast(pa.string()), "None")

    uris = as_text(opts.uri_column)
    if "relative_path" in table.column_names:
        rels = as_text("relative_path")
    else:
        rels = relative_paths_from_uris(resolve_manifest_uris(opts.input, uris))
    table = table.drop_columns([c for c in (opts.uri_column, "relative_path") if c in table.column_names])
    return table.append_column("uri", uris).append_column("relative_path", rels)


def _frames_table(opts: LabelOptions, model_id: str) -> tuple[pa.Table | None, int, int]:
    """The frames still to label, in listing order, as a table of (uri, relative_path, extra
    manifest columns..., tags...), with the number of frames listed and of those already done."""
    manifest = is_manifest(opts.input)
    sidecars: dict[str, Callable[[str], list[str]]] | None = (
        {WORLD_FILE_COLUMN: world_file_candidates} if opts.world_files else None
    )
    table = _manifest_table(opts) if manifest else list_folder(opts.input, sidecars)
    for key in opts.tags:
        if key in table.column_names:
            raise ValueError(f"{opts.input}: tag {key!r} clashes with an input column of the same name")
    rels = table.column("relative_path")
    if pc.count_distinct(rels).as_py() != table.num_rows:
        # A manifest that names a frame twice: label it once (the first row's columns are kept).
        indexed = pa.table({"relative_path": rels, "_i": np.arange(table.num_rows, dtype=np.int64)})
        first = indexed.group_by(["relative_path"], use_threads=False).aggregate([("_i", "min")])
        log.warning(
            "%s: %d rows repeat a relative_path already listed; each frame is labelled once",
            opts.input,
            table.num_rows - first.num_rows,
        )
        table = table.take(np.sort(first.column("_i_min").to_numpy()))
    del rels
    total = table.num_rows
    done = _done_paths(opts.output, model_id)
    if done is not None:  # anti-join on relative_path; a filter keeps the listing order
        table = table.filter(pc.invert(pc.is_in(table.column("relative_path"), value_set=done)))
        del done
    skipped = total - table.num_rows
    if table.num_rows == 0:
        return None, total, skipped
    # Row by row, so the same whether before or after the done-check; after it, only for what is left.
    if manifest:
        uris = resolve_manifest_uris(opts.input, table.column("uri"))
        table = table.set_column(table.column_names.index("uri"), "uri", uris)
    for key, value in opts.tags.items():
        table = table.append_column(key, pa.repeat(pa.scalar(value, pa.string()), table.num_rows))
    return table, total, skipped


def check_scene_bands(table: pa.Table | None, info: ArtifactInfo) -> None:
    """A model of named bands refuses the run before any work when the first scene to label lacks one of
    them: the scenes of one input come from one sensor, so one header tells (each scene is checked again
    when it is read)."""
    bands = info.preprocessing.bands
    if not bands or table is None:
        return
    uris = table.column("uri")
    tiffs = pc.match_substring_regex(pc.utf8_lower(uris.cast(pa.string())), r"\.tiff?(\?.*)?$")
    first = pc.index(tiffs, True).as_py()
    if first < 0:
        return
    from segray.geo.scene import read_info, select_bands  # GDAL: only for a model of bands with scenes to label

    uri = str(uris[first].as_py())
    try:
        scene = read_info(uri)
    except Exception as e:  # noqa: BLE001 - an unreadable scene fails as its own row, not the run
        log.warning("%s: cannot read its header to check the model's bands (%s)", uri, e)
        return
    missing = []
    for band in bands:
        try:
            select_bands(scene, [band])
        except ValueError:
            missing.append(band)
    if missing:
        raise ValueError(
            f"scene {uri} has bands {','.join(scene.band_names)}; the model needs {','.join(missing)} "
            f"(its bands: {','.join(bands)})"
        )


def check_confidence_inputs(table: pa.Table | None, info: ArtifactInfo, opts: LabelOptions) -> None:
    """``--write-confidence`` writes confidence maps of GeoTIFF scenes only: a run with it is refused
    before any work when the model is not semantic or the frames to label include a PNG or JPEG, so no
    frame ends up without the map the run was asked for."""
    if not opts.write_confidence:
        return
    if info.task != "semantic":
        raise ValueError(f"--write-confidence: confidence maps come from semantic models; this is an {info.task} model")
    if table is None:
        return
    uris = table.column("uri").cast(pa.string())
    tiffs = pc.match_substring_regex(pc.utf8_lower(uris), r"\.tiff?(\?.*)?$")
    first = pc.index(tiffs, False).as_py()
    if first >= 0:
        raise ValueError(
            "--write-confidence writes confidence maps of GeoTIFF scenes (.tif, .tiff) only, and "
            f"{uris[first].as_py()} is not one; label PNG/JPEG frames without it (their rows keep mean_confidence)"
        )


def block_sizes(n: int, actors: int, largest: int = LISTING_BLOCK_ROWS, smallest: int = TAIL_BLOCK_ROWS) -> list[int]:
    """Rows per block, shrinking towards the end of the job (guided self-scheduling).

    An actor takes whole blocks, so the job ends when the last actor finishes its last block. With
    equal 64-row blocks the others sat idle meanwhile (measured: one of two cores idle for the last
    28 s of a 141 s CPU run). Each block here is about a 2 x actors-th of what is left, so the last
    blocks are short, and never more than a 1/actors-th of the job, so every actor gets one.
    """
    if n <= 0:
        return []
    actors = max(1, actors)
    hi = min(largest, math.ceil(n / actors))
    lo = min(smallest, hi)
    sizes: list[int] = []
    left = n
    while left > 0:
        rows = min(left, max(lo, min(hi, math.ceil(left / (2 * actors)))))
        sizes.append(rows)
        left -= rows
    return sizes


def _spread(
    table: pa.Table, pool: PoolLayout, threads_given: bool, cores: int, smallest: int = TAIL_BLOCK_ROWS
) -> tuple[Any, PoolLayout]:
    """The table as a Ray dataset in blocks that every actor can get one of (:func:`block_sizes`),
    and the pool trimmed to the number of blocks (an actor task takes whole blocks: more actors
    would only start idle, as they would in a small job), with the cores shared among the actors left."""
    import ray.data

    blocks, start = [], 0
    for rows in block_sizes(table.num_rows, pool.max_actors, smallest=smallest):
        blocks.append(table.slice(start, rows))
        start += rows
    lo = min(pool.min_actors, len(blocks))
    hi = max(lo, min(pool.max_actors, len(blocks)))
    if hi < pool.max_actors and not threads_given:
        pool = replace(pool, torch_threads=cores_per_actor(pool.cpus_per_actor, cores, hi))
    return ray.data.from_arrow(blocks), replace(pool, min_actors=lo, max_actors=hi)


def preflight(opts: LabelOptions, dry_run: bool = False) -> ArtifactInfo:
    """Everything that can fail before any frame is read: model, input, output, credentials. A dry
    run writes nothing, not even the probe that shows the output writable."""
    from segray.models.artifact import read_info

    info = read_info(opts.model)
    check_task_options(opts, info)
    # Window and overlap against the model's input size (the defaults come from it).
    TileSpec.for_model(info.preprocessing.height, info.preprocessing.width, opts.tile_window, opts.tile_overlap)
    storage.check_readable(opts.input)
    storage.check_writable(opts.output, probe=not dry_run)
    return info


def check_task_options(opts: LabelOptions, info: ArtifactInfo) -> LabelOptions:
    """Refuse options that do not apply to the model's task, naming them; returns the options with
    what the task fills in when left unset (an instance model's ``min_score``), as the run records them."""
    return replace(opts, **task_named(info.task).check_label_options(opts.model, vars(opts)))


def run_label_job(opts: LabelOptions, info: ArtifactInfo | None = None, lease: OutputLease | None = None) -> RunSummary:
    """Label every frame of ``opts.input`` not yet labelled by this model.

    ``info`` is the result of an earlier :func:`preflight` of the same options (the CLI runs it
    before starting Ray); without it the checks run here. ``lease`` is the output's lease, already
    taken for ``opts.run_id`` (the CLI takes it before starting Ray, so a refused run costs
    nothing); without it the run takes it here and raises :class:`~segray.outputs.lease.LeaseHeld`
    if another run holds the output. Either way it is released when the run ends.
    """
    started = time.time()
    run_id = opts.run_id or new_run_id()
    if info is None:
        info = preflight(opts)
    if lease is None:
        lease = OutputLease(opts.output, run_id).acquire()
    elif lease.run_id != run_id:
        raise ValueError(f"the lease was taken for run {lease.run_id}, not {run_id}")
    try:
        return _label(opts, info, run_id, started, lease)
    finally:
        lease.release()


def _label(opts: LabelOptions, info: ArtifactInfo, run_id: str, started: float, lease: OutputLease) -> RunSummary:
    """The run's steps: plan, size the inference pool, build the pipeline, consume it, summarise."""
    run = _plan(opts, info, run_id, started)
    counts = _Counts()
    if run.table is not None:
        ds, pool, gpus = _size_pool(run, run.table)
        ds = _build_pipeline(run, ds, pool, gpus)
        counts = _consume(run, ds, run.table.num_rows, lease)
    lease.check()
    if not run.left_by_limit:  # every frame without a stats row was tried again in this run
        _drop_old_error_parts(run.opts.output, run_id)
    return _summarise(run, counts)


@dataclass
class _Run:
    """What a run works on, decided before anything starts; passed between the steps of :func:`_label`."""

    #: The options as used (an instance model's ``min_score`` filled in, so the run records it).
    opts: LabelOptions
    info: ArtifactInfo
    run_id: str
    started: float
    model_id: str
    #: The frames to label in this run (``limit`` applied); None when there are none.
    table: pa.Table | None
    total: int
    skipped: int
    left_by_limit: int


@dataclass
class _Counts:
    """What the written batches reported, summed over the run."""

    labelled: int = 0
    failed: int = 0
    windowed: int = 0
    #: Seconds from the run's start to the first written batch.
    first_output: float | None = None


def _plan(opts: LabelOptions, info: ArtifactInfo, run_id: str, started: float) -> _Run:
    """The frames this run labels: those without a stats row from this model, cut to ``limit``."""
    opts = check_task_options(opts, info)
    mid = label_model_id(info, opts)
    table, total, skipped = _frames_table(opts, mid)
    check_scene_bands(table, info)
    check_confidence_inputs(table, info, opts)
    left_by_limit = 0
    if table is not None and opts.limit is not None and table.num_rows > opts.limit:
        left_by_limit = table.num_rows - opts.limit
        table = table.slice(0, opts.limit)
    log.info(
        "run %s: %d frames under %s, %d already labelled by %s, %d to do%s",
        run_id,
        total,
        opts.input,
        skipped,
        mid,
        total - skipped - left_by_limit,
        f" (--limit {opts.limit}: {left_by_limit} left for a later run)" if left_by_limit else "",
    )
    return _Run(opts, info, run_id, started, mid, table, total, skipped, left_by_limit)


def _size_pool(run: _Run, table: pa.Table) -> tuple[Any, PoolLayout, float]:
    """The frames as a Ray dataset, the inference pool sized for them and the cluster, and the
    GPUs each inference actor gets."""
    opts = run.opts
    cap = cluster_capacity()
    gpus = gpus_per_actor(opts.gpus_per_actor, cap)
    if opts.decode == "gpu" and not gpus:
        raise ValueError(
            "--decode gpu: the inference actors get no GPU (the cluster has none, and no node type with "
            "GPUs to add); use --decode cpu"
        )
    # The node's cores are shared among the actors that may run on it; the Ray CPU reservation
    # stays small so that reads and writes still get scheduled (an actor pool that reserved
    # every CPU of a 2-CPU node left none for them, and the job stalled).
    cores = os.cpu_count() or 1
    pool = pool_layout(opts.min_actors, opts.max_actors, opts.cpus_per_actor, opts.torch_threads, gpus, cap, cores)
    ds, pool = _spread(table, pool, opts.torch_threads > 0, cores, opts.read_batch_size)
    log.info(
        "run %s: inference pool %d-%d actors, %g GPU, %g CPU and %d torch threads each "
        "(cluster: %g GPUs now, %s at most)",
        run.run_id,
        pool.min_actors,
        pool.max_actors,
        gpus,
        pool.cpus_per_actor,
        pool.torch_threads,
        cap.gpus_now,
        "unknown" if cap.gpus_max is None else f"{cap.gpus_max:g}",
    )
    return ds, pool, gpus


def _build_pipeline(run: _Run, ds: Any, pool: PoolLayout, gpus: float) -> Any:
    """read -> predict -> write on ``ds``; nothing runs until the result is consumed."""
    from ray.data import ActorPoolStrategy

    from segray.labelling.read import read_frames
    from segray.labelling.write import write_outputs

    opts, info = run.opts, run.info
    pre = info.preprocessing
    reference = info.train_frame_size or (pre.height, pre.width)
    log.info(
        "run %s: frames up to %gx %dx%d (%s) are resized to the model input %dx%d; larger ones are labelled "
        "in %s windows at their own resolution (--tile-above)",
        run.run_id,
        opts.tile_above,
        *reference,
        "the frames the model was trained on" if info.train_frame_size else "the model input",
        pre.height,
        pre.width,
        "x".join(str(v) for v in (opts.tile_window or (pre.height, pre.width))),
    )
    ds = ds.map_batches(
        read_frames,
        batch_size=opts.read_batch_size,
        num_cpus=opts.read_cpus,
        fn_kwargs={
            "preprocessing": info.preprocessing.to_dict(),
            "max_pixels": opts.max_pixels,
            "tile_above": opts.tile_above,
            "pixel_size": opts.pixel_size,
            "world_files": opts.world_files,
            "tile_reference": reference,
            "decode": opts.decode,
        },
    )
    ds = ds.map_batches(
        task_named(info.task).predictor(),
        batch_size=opts.batch_size,
        compute=ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=gpus,
        fn_constructor_kwargs=_predictor_kwargs(opts, info, pool),
    )
    return ds.map_batches(
        write_outputs,
        batch_size=opts.write_batch_size,
        num_cpus=opts.write_cpus,
        fn_kwargs={
            "output": opts.output,
            "run_id": run.run_id,
            "model_id": run.model_id,
            "label_map": info.label_map.to_dict(),
            "task": info.task,
        },
    )


def _predictor_kwargs(opts: LabelOptions, info: ArtifactInfo, pool: PoolLayout) -> dict[str, Any]:
    """The inference actor's constructor arguments: the shared ones, then those of the model's task."""
    shared = {"model_uri": opts.model, "torch_threads": pool.torch_threads, "device": opts.device}
    return shared | task_named(info.task).predictor_kwargs(vars(opts))


def _consume(run: _Run, ds: Any, todo: int, lease: OutputLease) -> _Counts:
    """Runs the pipeline to its end, summing what the written batches report and showing progress
    (:class:`segray.progress.Progress`); stops at once if another run took the output over."""
    counts = _Counts()
    with Progress(f"labelling run {run.run_id}", todo, "frames") as shown:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            lease.check()  # taken over: stop writing at once (what was written stays, once per frame)
            if counts.first_output is None:
                counts.first_output = time.time() - run.started
            counts.labelled += int(b["labelled"].sum())
            counts.failed += int(b["failed"].sum())
            counts.windowed += int(b["windowed"].sum())
            shown.update(counts.labelled + counts.failed, text=f"{counts.failed} failed")
    if counts.labelled + counts.failed != todo:
        raise RuntimeError(
            f"run {run.run_id}: {todo} frames went in but {counts.labelled} were labelled and {counts.failed} "
            "failed; outputs are incomplete, rerun the same command to finish"
        )
    return counts


def _summarise(run: _Run, counts: _Counts) -> RunSummary:
    """Writes ``_runs/<run_id>.json`` and logs the totals; raises :class:`FailureBudgetExceeded`
    (after writing) when more frames failed than ``max_failed_fraction`` allows."""
    opts, labelled, failed = run.opts, counts.labelled, counts.failed
    seconds = time.time() - run.started
    failed_fraction = round(failed / (labelled + failed), 6) if labelled + failed else 0.0
    over = opts.max_failed_fraction is not None and failed_fraction > opts.max_failed_fraction
    summary = RunSummary(
        run_id=run.run_id,
        model_id=run.model_id,
        input=opts.input,
        output=opts.output,
        frames_in=run.total,
        skipped_done=run.skipped,
        labelled=labelled,
        failed=failed,
        seconds=round(seconds, 3),
        frames_per_s=round((labelled + failed) / seconds, 3) if seconds > 0 else 0.0,
        first_output_s=None if counts.first_output is None else round(counts.first_output, 3),
        started_at=datetime.fromtimestamp(run.started, timezone.utc).isoformat(),
        options={k: v for k, v in asdict(opts).items() if k not in {"run_id"}},
        failed_fraction=failed_fraction,
        left_by_limit=run.left_by_limit,
        windowed=counts.windowed,
        status="over failure budget" if over else "limited" if run.left_by_limit else "complete",
    )
    storage.write_bytes(storage.join(opts.output, "_runs", f"{run.run_id}.json"), summary.to_json().encode())
    log.info(
        "run %s: %d labelled, %d failed, %d skipped (already done) in %.1f s (%.2f frames/s)",
        run.run_id,
        labelled,
        failed,
        run.skipped,
        seconds,
        summary.frames_per_s,
    )
    if over:
        raise FailureBudgetExceeded(summary, float(opts.max_failed_fraction or 0.0))
    return summary


def _drop_old_error_parts(output: str, run_id: str) -> None:
    """Error parts of earlier runs are superseded: every frame they name was retried in this run."""
    err_uri = storage.join(output, "errors")
    for path in storage.list_files(err_uri, (".parquet",)):
        if f"part-{run_id}-" not in path.rsplit("/", 1)[-1]:
            storage.resolve(err_uri)[0].delete_file(path)
