"""``segray serve``: argument parsing and the foreground run; the app is ``segray.serving.app``."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import threading
from dataclasses import dataclass

from segray.exit_codes import SERVE_EXIT_CODES
from segray.options import add_dataclass_arguments, from_namespace, opt
from segray.serving.options import ServeOptions

#: The HTTP port ``segray serve`` listens on, as Serve's own default.
DEFAULT_PORT = 8000


@dataclass
class ServeCommand:
    """``segray serve``'s options besides the replica's (:class:`ServeOptions`): where it listens, the
    Ray it runs on, and the deployment's replicas and their resources."""

    host: str = opt("127.0.0.1", help="address the HTTP proxy listens on", flag="--host")
    port: int = opt(DEFAULT_PORT, help="HTTP port", flag="--port", shown_default=str(DEFAULT_PORT))  # not "8,000"
    address: str | None = opt(None, help="Ray address", flag="--address", default_help="$RAY_ADDRESS, else a local Ray")
    min_replicas: int = opt(1, help="fewest replicas; 0 lets it scale to zero", flag="--min-replicas")
    max_replicas: int | None = opt(
        None, help="most replicas; above --min-replicas autoscales", flag="--max-replicas", default_help="=min"
    )
    cpus_per_replica: float = opt(1.0, help="Ray CPUs per replica", flag="--cpus-per-replica")
    gpus_per_replica: float | None = opt(
        None,
        help="GPUs per replica",
        flag="--gpus-per-replica",
        default_help="1 when the cluster has or can add GPUs, else 0",
    )
    no_api_key: bool = opt(
        False,
        help="listen on a non-loopback --host without SEGRAY_API_KEY set (only behind a gateway that authenticates)",
        flag="--no-api-key",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``segray serve``: its flags made from :class:`ServeCommand` and :class:`ServeOptions`."""
    p = sub.add_parser(
        "serve",
        epilog=SERVE_EXIT_CODES,
        help="answer single frames over HTTP with the labelling job's model and code (Ray Serve), with a page at /",
        description="Deploys a Ray Serve application on the local Ray (or --address): POST /v1/segment with "
        "an image gets the same mask `segray label` writes for it, as JSON or PNG; GET / is a page to try it. "
        "Runs until Ctrl-C. For a long-lived cluster deployment, see configs/serve.yaml and docs/serving.md. "
        "Durations are seconds and sizes bytes, each optionally with a unit, here as in a Serve config file.",
    )
    add_dataclass_arguments(p, ServeOptions, only=["model"])
    add_dataclass_arguments(p, ServeCommand, skip=["no_api_key"])
    add_dataclass_arguments(p, ServeOptions, skip=["model"])
    add_dataclass_arguments(p, ServeCommand, only=["no_api_key"])
    p.set_defaults(func=cmd_serve)


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

    c = from_namespace(ServeCommand, a)
    key = digest_from_env()
    check_exposure(c.host, key is not None, c.no_api_key)
    max_replicas = c.min_replicas if c.max_replicas is None else c.max_replicas
    threads = a.torch_threads or max(1, int(c.cpus_per_replica))
    opts = from_namespace(ServeOptions, a, torch_threads=threads, api_key_sha256=key)
    info = read_info(opts.model)  # a bad model fails here, before Ray starts
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=c.address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=True)
    gpus = c.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster_capacity().gpus > 0 else 0.0
    elif gpus > 0 and cluster_capacity().gpus == 0:
        raise ValueError(f"--gpus-per-replica {gpus}: the cluster has no GPUs and its autoscaler cannot add any")
    url = deploy(opts, c.host, c.port, c.cpus_per_replica, gpus, c.min_replicas, max_replicas)
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
