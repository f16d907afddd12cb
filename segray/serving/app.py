"""The Ray Serve application: one deployment whose replicas each hold the model and answer HTTP.

Routes: ``GET /`` (the page), ``GET /healthz`` (200 when the replica can answer, 503 with the reason
when it is stuck or its event loop lags; with the requests and model calls it has served),
``GET /v1/model`` (what ``segray model info --json`` prints without the artifact's location, plus the
serving limits), ``POST /v1/segment`` (one frame -> JSON, or the PNG itself with ``Accept: image/png``).

Concurrent requests to a replica are labelled together (``serve.batch``): up to ``max_batch_size``
frames per model call, waiting at most ``batch_wait_s`` for a batch to fill. Body reading, form
parsing, header checks and decoding run per request before the batch, off the event loop; PNG
encoding after it, also off the event loop. Every request has a deadline (``deadline_s``): past it
the request is answered 504 and its frame's work is cancelled, as it is when the client disconnects.
Every bad input is answered with its status and reason; nothing a client sends stops a replica.

``build`` is the application builder named by a Serve config file (``configs/serve.yaml``);
``build_app`` is what ``segray serve`` deploys.
"""

# No "from __future__ import annotations": FastAPI reads the route handlers' annotations as types.

import asyncio
import logging
import threading
import time
from importlib.resources import files
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application, Deployment
from starlette.exceptions import HTTPException as StarletteHTTPException

from segray.serving.auth import check_key, digest_from_env
from segray.serving.health import Watchdog
from segray.serving.inputs import MAX_FORM_PARTS, PartCounter, RequestError, form_boundary, image_bytes, read_body
from segray.serving.labeller import TRIM_ABOVE_PIXELS, Labeller, ServeOptions, release_memory

log = logging.getLogger("segray.serve")

ROUTES = "GET /, GET /healthz, GET /v1/model, POST /v1/segment"
TRUE = ("1", "true", "yes", "on")
#: The environment of every replica's process: how glibc's allocator keeps freed memory. By default
#: each thread that allocates concurrently gets an arena of its own (up to 8 per core), and after a
#: large buffer is freed, buffers up to 32 MiB come from the arenas instead of being mapped and
#: unmapped, so the decode, model and PNG threads each keep the peak of the largest frames they
#: handled. Two arenas, and buffers of 4 MiB and more (a frame's pixels, masks, PNGs) always mapped
#: and unmapped, keep a replica's memory near its idle size between large requests.
REPLICA_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(4 * 2**20)}

api = FastAPI(title="segray", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _route_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 and 405 name the routes there are, in the same JSON shape as every other error."""
    if exc.status_code == 404:
        message = f"no route {request.url.path}; this service answers {ROUTES}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; this service answers {ROUTES}"
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def _error(e: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)


@serve.deployment(name="Segmenter", ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}})
@serve.ingress(api)
class Segmenter:
    """A replica: the artifact loaded once, requests batched into Predictor calls."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.opts = ServeOptions(**options)
        self.labeller = Labeller(self.opts)
        self.key_sha256 = self.opts.api_key_sha256 or digest_from_env()
        # serve.batch gives the method these setters at run time; its type hints leave them out.
        self.label_batch.set_max_batch_size(self.opts.max_batch_size)  # type: ignore[attr-defined]
        self.label_batch.set_batch_wait_timeout_s(self.opts.batch_wait_s)  # type: ignore[attr-defined]
        self.page_html = files("segray.serving").joinpath("page.html").read_text()
        self.watchdog = Watchdog(self.opts.deadline_s, self.opts.stuck_margin_s, self.opts.max_loop_lag_s)
        self.in_flight = 0
        self.timed_out = 0
        log.info(
            "serving %s: up to %d frames per model call, %.0f ms batch wait, %g s deadline, API key %s",
            self.labeller.info.model_id,
            self.opts.max_batch_size,
            self.opts.batch_wait_s * 1000,
            self.opts.deadline_s,
            "required" if self.key_sha256 else "not required",
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def label_batch(self, frames: list) -> list:
        # The model runs in a thread, so the replica keeps accepting (and checking) requests meanwhile.
        return await asyncio.to_thread(self.labeller.label, frames)

    async def check_health(self) -> None:
        """Serve's periodic health check: fails while a model call is stuck, so Serve replaces the replica."""
        self.watchdog.watch()
        stuck = self.watchdog.stuck(self.labeller.model_call_s())
        if stuck:
            raise RuntimeError(stuck)

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page_html)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the replica can answer, else 503 with the reason (``error``); both with what this
        replica has done: ``requests`` frames answered in ``batches`` model calls, and so on."""
        self.watchdog.watch()
        now = time.monotonic()
        call = self.labeller.model_call_s(now)
        reason = self.watchdog.reason(now, call)
        body: dict[str, Any] = {
            "status": "ok" if reason is None else "unhealthy",
            "model_id": self.labeller.info.model_id,
            **self.labeller.counters(),
            "timed_out": self.timed_out,
            "in_flight": self.in_flight,
            "model_call_s": None if call is None else round(call, 3),
            "loop_lag_s": round(self.watchdog.loop_lag(now), 3),
        }
        if reason is not None:
            body["error"] = reason
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @api.get("/v1/model")
    async def model(self, request: Request) -> JSONResponse:
        try:
            check_key(self.key_sha256, request.headers.get("authorization"), request.headers.get("x-api-key"))
        except RequestError as e:
            return _error(e)
        limits = {k: v for k, v in self.opts.to_dict().items() if k not in ("model", "api_key_sha256")}
        limits["max_form_parts"] = MAX_FORM_PARTS
        return JSONResponse({**self.labeller.model_info, "serving": limits})

    @api.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        """One frame, answered within ``deadline_s`` or with 504; a request that ends early (deadline,
        client gone) cancels its frame's work."""
        self.watchdog.watch()
        cancel = threading.Event()
        self.in_flight += 1
        try:
            response, pixels = await asyncio.wait_for(self._segment(request, cancel), self.opts.deadline_s)
        except asyncio.TimeoutError:
            cancel.set()
            self.timed_out += 1
            return JSONResponse(
                {
                    "error": f"no answer within this endpoint's {self.opts.deadline_s:g} s deadline (--deadline-s): "
                    "the frame's work was stopped; send a smaller frame, or raise the deadline"
                },
                status_code=504,
            )
        except asyncio.CancelledError:
            cancel.set()  # the client went away: stop the frame's work too
            raise
        finally:
            self.in_flight -= 1
        if pixels >= TRIM_ABOVE_PIXELS:  # the frame's buffers are freed by now: give their pages back
            await asyncio.to_thread(release_memory)
        return response

    async def _segment(self, request: Request, cancel: threading.Event) -> tuple[Response, int]:
        """The answer and the frame's pixel count (0 when there is no frame)."""
        h = request.headers
        try:
            check_key(self.key_sha256, h.get("authorization"), h.get("x-api-key"))
            content_type = h.get("content-type", "")
            boundary = form_boundary(content_type)
            parts = None if boundary is None else PartCounter(boundary, MAX_FORM_PARTS)
            body = await read_body(h.get("content-length"), request.stream(), self.opts.max_body_bytes, parts)
            data, frame = await asyncio.to_thread(self._prepare, body, content_type, cancel)
            del body
            result = await self.label_batch(frame)
            pixels = frame.width * frame.height
            overlay = request.query_params.get("overlay", "0").lower() in TRUE
            accept = h.get("accept", "")
            if "image/png" in accept and "application/json" not in accept:
                if result.error:
                    raise RequestError(400, result.error)
                png = await asyncio.to_thread(self.labeller.png, data, result.mask, overlay)
                headers = {"X-Segray-Model-Id": self.labeller.info.model_id}
                return Response(png, media_type="image/png", headers=headers), pixels
            answer = await asyncio.to_thread(self.labeller.answer, data, frame, result, overlay)
            return JSONResponse(answer), pixels
        except RequestError as e:
            return _error(e), 0
        except Exception as e:  # noqa: BLE001 - answered as 500 with the reason; the replica keeps serving
            log.exception("segment request failed")
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500), 0

    def _prepare(self, body: bytes, content_type: str, cancel: threading.Event) -> tuple[bytes, Any]:
        """The image in the body, and its frame (run in a thread: the form and the decode are CPU work)."""
        data = image_bytes(body, content_type, MAX_FORM_PARTS)
        return data, self.labeller.prepare(data, cancel)


def deployment_options(
    num_cpus: float, num_gpus: float, min_replicas: int, max_replicas: int, max_batch_size: int
) -> dict[str, Any]:
    """Resources and replica count: fixed when min == max, else Serve autoscaling between them,
    aiming at about one full batch queued per replica."""
    if min_replicas < 0 or max_replicas < 1 or max_replicas < min_replicas:
        raise ValueError(f"need 0 <= min_replicas ({min_replicas}) <= max_replicas ({max_replicas}), max >= 1")
    out: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus, "runtime_env": {"env_vars": REPLICA_ENV}},
        # A replica takes this many requests at once: enough to fill two batches.
        "max_ongoing_requests": 2 * max_batch_size,
    }
    if min_replicas == max_replicas:
        out["num_replicas"] = max_replicas
    else:
        out["autoscaling_config"] = {
            "min_replicas": min_replicas,
            "initial_replicas": max(1, min_replicas),
            "max_replicas": max_replicas,
            "target_ongoing_requests": max_batch_size,
        }
    return out


def build_app(
    opts: ServeOptions, num_cpus: float = 1.0, num_gpus: float = 0.0, min_replicas: int = 1, max_replicas: int = 1
) -> Application:
    """The application ``segray serve`` runs."""
    # serve.deployment made the class a Deployment; mypy keeps a decorated class's own type.
    deployment = cast(Deployment, Segmenter)
    return deployment.options(
        **deployment_options(num_cpus, num_gpus, min_replicas, max_replicas, opts.max_batch_size)
    ).bind(opts.to_dict())


def build(args: dict[str, Any]) -> Application:
    """Application builder for a Serve config file (``import_path: segray.serving.app:build``):
    ``args`` are :class:`ServeOptions` fields (``model`` at least); resources and replica counts
    come from the file's ``deployments`` section. The API key is read by each replica from its
    environment (``SEGRAY_API_KEY``), never from the file."""
    args = dict(args)
    if "api_key" in args or "api_key_sha256" in args:
        raise ValueError("the API key does not belong in the config file: set SEGRAY_API_KEY in the replicas' env")
    try:
        opts = ServeOptions(**args)
    except TypeError as e:
        known = ", ".join(k for k in ServeOptions.__dataclass_fields__ if k != "api_key_sha256")
        raise ValueError(f"serve config args: {e}; known args: {known}") from e
    return cast(Deployment, Segmenter).bind(opts.to_dict())


APP_NAME = "segray"


def deploy(
    opts: ServeOptions,
    host: str = "127.0.0.1",
    port: int = 8000,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    min_replicas: int = 1,
    max_replicas: int = 1,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (if Serve is not running yet) and deploy the app
    on the connected Ray cluster; returns its URL once a replica answers."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(opts, num_cpus, num_gpus, min_replicas, max_replicas), name=name, route_prefix=route_prefix)
    return f"http://{host}:{port}{route_prefix}"
