"""``segray serve``: argument parsing and the foreground run; the app is ``segray.serving.app``."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import threading
from collections.abc import Callable

from segray.exit_codes import SERVE_EXIT_CODES
from segray.options import duration_arg, size_arg
from segray.serving.inputs import SERVE_MAX_PIXELS
from segray.tasks.batch import DEFAULT_TILE_ABOVE


def add_parser(sub: argparse._SubParsersAction, window_type: Callable[[str], tuple[int, int]]) -> None:
    p = sub.add_parser(
        "serve",
        epilog=SERVE_EXIT_CODES,
        help="answer single frames over HTTP with the labelling job's model and code (Ray Serve), with a page at /",
        description="Deploys a Ray Serve application on the local Ray (or --address): POST /v1/segment with "
        "an image gets the same mask `segray label` writes for it, as JSON or PNG; GET / is a page to try it. "
        "Runs until Ctrl-C. For a long-lived cluster deployment, see configs/serve.yaml and docs/serving.md.",
    )
    p.add_argument("--model", required=True, help="model artifact folder or s3:// URI")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--min-replicas", type=int, default=1, help="fewest replicas; 0 lets it scale to zero (default 1)")
    p.add_argument(
        "--max-replicas", type=int, default=None, help="most replicas; above --min-replicas autoscales (default: =min)"
    )
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica (default 1)")
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs per replica (default: 1 when the cluster has or can add GPUs, else 0)",
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch CPU threads per replica (default: as many as its Ray CPUs, at least 1)",
    )
    p.add_argument("--max-batch-size", type=int, default=8, help="frames per model call at most (default 8)")
    p.add_argument(
        "--batch-wait",
        type=duration_arg,
        default=0.01,
        help="longest a request waits for others to fill a batch: seconds, or with a unit (default 10ms)",
    )
    add_limit_args(p)
    p.add_argument(
        "--tile-above",
        type=float,
        default=DEFAULT_TILE_ABOVE,
        help="label a frame in windows when a side is above this many times the training frame size, as "
        f"`segray label` does (default {DEFAULT_TILE_ABOVE:g})",
    )
    p.add_argument(
        "--window", type=window_type, default=None, help="window HxW for large frames (default: model input)"
    )
    p.add_argument("--overlap", type=int, default=None, help="window overlap in pixels (default: window / 4)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if torch sees one), cpu, cuda")
    p.add_argument(
        "--no-api-key",
        action="store_true",
        help="listen on a non-loopback --host without SEGRAY_API_KEY set (only behind a gateway that authenticates)",
    )
    p.set_defaults(func=cmd_serve)


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """What bounds one request: its frame's pixels and body size, its deadline, and the health limits.
    Durations are seconds and sizes bytes, here as in a Serve config file, each optionally with a unit."""
    p.add_argument(
        "--max-pixels",
        type=int,
        default=SERVE_MAX_PIXELS,
        help=f"answer 413 to frames whose header declares more pixels, checked before decoding "
        f"(default {SERVE_MAX_PIXELS:,} = 4096x4096)",
    )
    p.add_argument(
        "--max-body",
        type=size_arg,
        default=64 * 2**20,
        help="answer 413 to larger request bodies: bytes, or with a unit such as 64MiB or 50MB (default 64MiB)",
    )
    p.add_argument(
        "--deadline-s",
        type=duration_arg,
        default=30.0,
        help="answer 504 to a request not answered within this time, and stop its frame's work: seconds, or with "
        "a unit such as 500ms (default 30)",
    )
    p.add_argument(
        "--stuck-margin-s",
        type=duration_arg,
        default=30.0,
        help="/healthz answers 503, and Serve replaces the replica, when a model call runs longer than the "
        "deadline plus this: seconds, or with a unit (default 30)",
    )
    p.add_argument(
        "--max-loop-lag-s",
        type=duration_arg,
        default=5.0,
        help="/healthz answers 503 for a minute after the replica's event loop fell this far behind: seconds, "
        "or with a unit (default 5)",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, key_set: bool, no_api_key: bool) -> None:
    """A service reachable from other machines needs an API key, unless the user says why not."""
    if not is_loopback(host) and not key_set and not no_api_key:
        raise ValueError(
            f"--host {host} is reachable from other machines: set SEGRAY_API_KEY to require a key, "
            "or pass --no-api-key when a gateway in front authenticates"
        )


def cmd_serve(a: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from segray.models.artifact import read_info
    from segray.ray_runtime import cluster_capacity
    from segray.serving.app import APP_NAME, deploy
    from segray.serving.auth import digest_from_env
    from segray.serving.labeller import ServeOptions

    key = digest_from_env()
    check_exposure(a.host, key is not None, a.no_api_key)
    max_replicas = a.min_replicas if a.max_replicas is None else a.max_replicas
    threads = a.torch_threads or max(1, int(a.cpus_per_replica))
    opts = ServeOptions(
        model=a.model,
        max_batch_size=a.max_batch_size,
        batch_wait_s=a.batch_wait,
        max_pixels=a.max_pixels,
        max_body_bytes=a.max_body,
        deadline_s=a.deadline_s,
        stuck_margin_s=a.stuck_margin_s,
        max_loop_lag_s=a.max_loop_lag_s,
        tile_above=a.tile_above,
        tile_window=a.window,
        tile_overlap=a.overlap,
        torch_threads=threads,
        device=a.device,
        api_key_sha256=key,
    )
    info = read_info(opts.model)  # a bad model fails here, before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=a.address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)
    gpus = a.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_capacity().gpus > 0 else 0.0
    elif gpus > 0 and cluster_capacity().gpus == 0:
        raise ValueError(f"--gpus-per-replica {gpus}: the cluster has no GPUs and its autoscaler cannot add any")
    url = deploy(opts, a.host, a.port, a.cpus_per_replica, gpus, a.min_replicas, max_replicas)
    print(
        f"serving {info.model_id} at {url} (page at /, POST /v1/segment); "
        f"API key {'required' if key else 'not required'}; Ctrl-C stops",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    serve.delete(APP_NAME)
    if started_ray:
        serve.shutdown()
    return 0
