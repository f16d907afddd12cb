"""The Ray Serve application: one deployment whose replicas each hold the model and answer HTTP.

Routes: ``GET /`` (the page), ``GET /healthz`` (liveness, and the requests and model calls this
replica has served), ``GET /v1/model`` (what ``segray model info --json`` prints, plus the serving
limits), ``POST /v1/segment`` (one frame -> JSON, or the PNG itself with ``Accept: image/png``).

Concurrent requests to a replica are labelled together (``serve.batch``): up to ``max_batch_size``
frames per model call, waiting at most ``batch_wait_s`` for a batch to fill. Body reading, header
checks and decoding run per request before the batch; PNG encoding after it, off the event loop.
Every bad input is answered with its status and reason; nothing a client sends stops a replica.

``build`` is the application builder named by a Serve config file (``configs/serve.yaml``);
``build_app`` is what ``segray serve`` deploys.
"""

# No "from __future__ import annotations": FastAPI reads the route handlers' annotations as types.

import asyncio
import logging
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from segray.serving.auth import check_key, digest_from_env
from segray.serving.inputs import RequestError, image_bytes, read_body
from segray.serving.labeller import Labeller, ServeOptions

log = logging.getLogger("segray.serve")

ROUTES = "GET /, GET /healthz, GET /v1/model, POST /v1/segment"
TRUE = ("1", "true", "yes", "on")

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


@serve.deployment(name="Segmenter", ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class Segmenter:
    """A replica: the artifact loaded once, requests batched into Predictor calls."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.opts = ServeOptions(**options)
        self.labeller = Labeller(self.opts)
        self.key_sha256 = self.opts.api_key_sha256 or digest_from_env()
        self.label_batch.set_max_batch_size(self.opts.max_batch_size)
        self.label_batch.set_batch_wait_timeout_s(self.opts.batch_wait_s)
        self.page_html = files("segray.serving").joinpath("page.html").read_text()
        log.info(
            "serving %s: up to %d frames per model call, %.0f ms batch wait, API key %s",
            self.labeller.info.model_id,
            self.opts.max_batch_size,
            self.opts.batch_wait_s * 1000,
            "required" if self.key_sha256 else "not required",
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def label_batch(self, frames: list) -> list:
        # The model runs in a thread, so the replica keeps accepting (and checking) requests meanwhile.
        return await asyncio.to_thread(self.labeller.label, frames)

    @api.get("/")
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page_html)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Also what this replica has done: ``requests`` frames answered in ``batches`` model calls."""
        return {"status": "ok", "model_id": self.labeller.info.model_id, **self.labeller.counters()}

    @api.get("/v1/model")
    async def model(self, request: Request) -> JSONResponse:
        try:
            check_key(self.key_sha256, request.headers.get("authorization"), request.headers.get("x-api-key"))
        except RequestError as e:
            return _error(e)
        limits = {k: v for k, v in self.opts.to_dict().items() if k not in ("model", "api_key_sha256")}
        return JSONResponse({**self.labeller.model_info, "serving": limits})

    @api.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        h = request.headers
        try:
            check_key(self.key_sha256, h.get("authorization"), h.get("x-api-key"))
            body = await read_body(h.get("content-length"), request.stream(), self.opts.max_body_bytes)
            data = image_bytes(body, h.get("content-type", ""))
            frame = await asyncio.to_thread(self.labeller.prepare, data)
            result = await self.label_batch(frame)
            overlay = request.query_params.get("overlay", "0").lower() in TRUE
            accept = h.get("accept", "")
            if "image/png" in accept and "application/json" not in accept:
                if result.error:
                    raise RequestError(400, result.error)
                png = await asyncio.to_thread(self.labeller.png, data, result.mask, overlay)
                return Response(png, media_type="image/png", headers={"X-Segray-Model-Id": self.labeller.info.model_id})
            answer = await asyncio.to_thread(self.labeller.answer, data, frame, result, overlay)
            return JSONResponse(answer)
        except RequestError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 - answered as 500 with the reason; the replica keeps serving
            log.exception("segment request failed")
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, status_code=500)


def deployment_options(
    num_cpus: float, num_gpus: float, min_replicas: int, max_replicas: int, max_batch_size: int
) -> dict[str, Any]:
    """Resources and replica count: fixed when min == max, else Serve autoscaling between them,
    aiming at about one full batch queued per replica."""
    if min_replicas < 0 or max_replicas < 1 or max_replicas < min_replicas:
        raise ValueError(f"need 0 <= min_replicas ({min_replicas}) <= max_replicas ({max_replicas}), max >= 1")
    out: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
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
    return Segmenter.options(
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
    return Segmenter.bind(opts.to_dict())


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
