"""What a hostile or careless client cannot do to the online endpoint, against real Ray Serve apps on
the suite's Ray over HTTP: frames above the pixel budget, requests past their deadline or abandoned
by their client, forms of thousands of parts, memory kept after large frames, the artifact's
location in /v1/model; and the replica's health as /healthz reports it.

Two apps: ``quick`` answers within a 1 s deadline (every request to it is refused early, or runs
past its deadline); ``roomy`` has a long deadline for the requests that do real work."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import pytest
import requests
from helpers.common import TINY_ENCODER
from helpers.frames import png_declaring, write_frames
from PIL import Image

from segray.labels import CAMVID
from segray.models.artifact import init_artifact, read_info
from segray.models.info import model_info
from segray.serving.app import REPLICA_ENV, deploy
from segray.serving.health import LAG_MEMORY_S, Watchdog
from segray.serving.inputs import MAX_FORM_PARTS, SERVE_MAX_PIXELS, PartCounter, RequestError, image_bytes
from segray.serving.labeller import ServeOptions, public_model_info
from segray.tiles.windows import TileSpec, window_starts

pytestmark = pytest.mark.usefixtures("ray_session")

REPLICA_CPUS = 0.25
#: Windows of 32x32 (the tiny model's input is 64x64): a 2048x2048 frame is about 7,000 windows,
#: far more work than a 1 s deadline allows, whatever the machine.
WINDOW, OVERLAP = (32, 32), 8
QUICK_DEADLINE_S = 1.0
#: Where the artifact's training ran and its encoder came from: no client may see them.
RUN_URI = "s3://private-bucket/runs/camvid-unet-7"
ENCODER_PATH = "/srv/private/encoders/mobilenet.safetensors"
#: A replica's resident memory after large frames stays within this of where it was before them.
MEMORY_BOUND = 128 * 2**20


@dataclass
class Apps:
    quick: str
    roomy: str
    model: str
    small: bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    from ray import serve

    model = tmp_path_factory.mktemp("models") / "private-unet"
    art = init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64)
    art.metrics = {"source": "segray train", "run": RUN_URI, "val_miou": 0.5, "data_dir": "/srv/private/camvid"}
    art.encoder_weights = ENCODER_PATH
    art.save(str(model))
    (small,) = write_frames(tmp_path_factory.mktemp("limit-frames"), [(48, 64)], seed=4)
    port = free_port()
    quick = ServeOptions(model=str(model), deadline_s=QUICK_DEADLINE_S, tile_window=WINDOW, tile_overlap=OVERLAP)
    quick_url = deploy(quick, "127.0.0.1", port, num_cpus=REPLICA_CPUS, name="segray-quick", route_prefix="/quick")
    # Frames up to 2560 pixels a side are resized (40 x 64); larger ones are labelled in windows.
    roomy = ServeOptions(
        model=str(model), deadline_s=600, tile_above=40, tile_window=WINDOW, tile_overlap=OVERLAP, torch_threads=1
    )
    roomy_url = deploy(roomy, "127.0.0.1", port, num_cpus=REPLICA_CPUS, name="segray-roomy", route_prefix="/roomy")
    try:
        yield Apps(quick_url.rstrip("/"), roomy_url.rstrip("/"), str(model), small.read_bytes())
    finally:
        serve.delete("segray-quick")
        serve.delete("segray-roomy")
        serve.shutdown()


def health(url: str) -> dict[str, Any]:
    r = requests.get(f"{url}/healthz", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(check: Callable[[], Any], what: str, limit_s: float = 300) -> Any:
    """Poll ``check`` until it returns something true (a wait for an event, not a timed assertion)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def gradient_png(height: int, width: int) -> bytes:
    """A frame that compresses well (a few MB at 2048x2048) but is costly to label in windows."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def windows_of(height: int, width: int) -> int:
    spec = TileSpec.for_model(64, 64, WINDOW, OVERLAP)
    return len(window_starts(height, spec.height, spec.overlap)) * len(window_starts(width, spec.width, spec.overlap))


def idle(url: str) -> dict[str, Any] | None:
    h = health(url)
    return h if h["model_call_s"] is None and h["in_flight"] == 0 else None


# --- the pixel budget ---------------------------------------------------------------------------------


def test_serving_budget_defaults_to_4096_squared() -> None:
    from segray.cli import build_parser

    assert SERVE_MAX_PIXELS == 4096 * 4096 == ServeOptions(model="m").max_pixels
    assert build_parser().parse_args(["serve", "--model", "m"]).max_pixels == SERVE_MAX_PIXELS


def test_a_small_file_declaring_a_huge_frame_is_refused_before_decoding(apps: Apps) -> None:
    """A 10,000 x 10,000 PNG of a few dozen bytes: under the labelling job's ceiling, over serving's budget."""
    before = health(apps.quick)
    data = png_declaring(10_000, 10_000)
    assert len(data) < 200
    r = requests.post(f"{apps.quick}/v1/segment", data=data, timeout=60)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert "10000x10000 = 100,000,000 pixels" in error and f"limit of {SERVE_MAX_PIXELS:,} pixels" in error
    after = health(apps.quick)
    assert (after["batches"], after["windows"]) == (before["batches"], before["windows"])  # nothing was labelled


# --- the deadline and cancellation ----------------------------------------------------------------------


def test_a_request_past_its_deadline_gets_504_and_its_windows_stop(apps: Apps) -> None:
    before = health(apps.quick)
    r = requests.post(f"{apps.quick}/v1/segment", data=gradient_png(2048, 2048), timeout=300)
    assert r.status_code == 504, r.text
    assert f"{QUICK_DEADLINE_S:g} s deadline" in r.json()["error"]
    after = wait_for(lambda: idle(apps.quick), "the model call to end after the deadline")
    assert after["timed_out"] == before["timed_out"] + 1
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["requests"] == before["requests"]  # no answer was made
    # The frame's windows stopped partway: the model was given back, not run to the end for nobody.
    assert after["windows"] - before["windows"] < windows_of(2048, 2048)


def test_a_client_that_disconnects_cancels_its_frames_work(apps: Apps) -> None:
    data = gradient_png(1024, 4096)  # 4 megapixels, above 2560 wide: windowed
    total = windows_of(1024, 4096)
    before = wait_for(lambda: idle(apps.roomy), "the replica to be idle")
    port = int(apps.roomy.split(":")[2].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        head = f"POST /roomy/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n"
        sock.sendall(head.encode() + data)
        # /healthz answers while the frame is being labelled, and says so.
        busy = wait_for(
            lambda: (h := health(apps.roomy))["model_call_s"] is not None and h["in_flight"] == 1 and h,
            "the frame's model call to start",
        )
        assert busy["status"] == "ok" and busy["windows"] - before["windows"] < total
    finally:
        sock.close()
    after = wait_for(lambda: idle(apps.roomy), "the model call to end once the client left")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["requests"] == before["requests"]
    assert after["windows"] - before["windows"] < total


# --- forms ------------------------------------------------------------------------------------------


def many_parts(n: int, boundary: str = "b0undary") -> bytes:
    return b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n'.encode() for i in range(n)
    )


def test_a_form_of_many_parts_is_refused_while_it_streams_and_healthz_answers(apps: Apps) -> None:
    """60,000 parts (about 3.5 MB): refused from the parts counted so far, while the client is still
    sending, and /healthz answers while that request is in flight."""
    parts = many_parts(60_000)
    port = int(apps.quick.split(":")[2].split("/")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(120)
    try:
        head = (
            "POST /quick/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\nContent-Length: {len(parts) + 100_000}\r\n\r\n"
        )
        sock.sendall(head.encode() + parts)  # the rest of the body (and its closing boundary) never comes
        assert requests.get(f"{apps.quick}/healthz", timeout=60).status_code == 200
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    finally:
        sock.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert f"more than {MAX_FORM_PARTS} parts" in error


def test_a_complete_form_of_many_parts_is_refused_and_a_small_form_works(apps: Apps) -> None:
    boundary = "b0undary"
    body = many_parts(60_000) + f"--{boundary}--\r\n".encode()
    r = requests.post(
        f"{apps.quick}/v1/segment",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert r.status_code == 413 and f"more than {MAX_FORM_PARTS} parts" in r.json()["error"], r.text
    fields = {"note": (None, "hello"), "camera": (None, "front-left")}
    form = requests.post(
        f"{apps.roomy}/v1/segment", files={**fields, "image": ("f.png", apps.small, "image/png")}, timeout=300
    )
    alone = requests.post(f"{apps.roomy}/v1/segment", data=apps.small, timeout=300)
    assert form.status_code == alone.status_code == 200, form.text
    assert form.json()["mask_png"] == alone.json()["mask_png"]


def test_part_counting_across_chunks() -> None:
    body = many_parts(MAX_FORM_PARTS) + b"--b0undary--\r\n"
    for size in (1, 5, 64, len(body)):
        counter = PartCounter(b"b0undary")
        for i in range(0, len(body), size):
            counter.feed(body[i : i + size])
        assert counter.seen == MAX_FORM_PARTS + 1  # one line per part and the closing one
    assert len(image_bytes(body, "multipart/form-data; boundary=b0undary")) == 1  # the first part's "v"
    counter = PartCounter(b"b0undary")
    with pytest.raises(RequestError, match=f"more than {MAX_FORM_PARTS} parts"):
        counter.feed(many_parts(MAX_FORM_PARTS + 1) + b"--b0undary--\r\n")
    with pytest.raises(RequestError, match="cut short"):
        image_bytes(many_parts(2), "multipart/form-data; boundary=b0undary")


# --- memory -----------------------------------------------------------------------------------------


def replica_process(app: str) -> psutil.Process:
    title = f"ServeReplica:{app}:Segmenter"
    found = [p for p in psutil.process_iter(["cmdline"]) if any(title in c for c in p.info["cmdline"] or [])]
    assert len(found) == 1, f"{len(found)} processes named {title}"
    return found[0]


def noise_png(side: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8), (side, side))
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_replica_memory_returns_after_large_frames(apps: Apps) -> None:
    """Eight frames of about 4 megapixels, four at a time, with overlays: the replica's resident memory
    comes back to within ``MEMORY_BOUND`` of where it was before them."""
    proc = replica_process("segray-roomy")
    env = proc.environ()
    assert {k: env.get(k) for k in REPLICA_ENV} == REPLICA_ENV

    def segment(data: bytes) -> requests.Response:
        return requests.post(
            f"{apps.roomy}/v1/segment?overlay=1", data=data, headers={"Accept": "image/png"}, timeout=600
        )

    for _ in range(3):
        assert segment(apps.small).status_code == 200
    before = proc.memory_info().rss
    frames = [noise_png(2048 - 64 * i, i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            assert [r.status_code for r in pool.map(segment, frames)] == [200] * 4
    for _ in range(3):
        assert segment(apps.small).status_code == 200
    grown = proc.memory_info().rss - before
    assert grown < MEMORY_BOUND, f"the replica kept {grown / 2**20:.0f} MiB after the large frames"


# --- what clients see of the model --------------------------------------------------------------------


def test_model_endpoint_names_the_model_by_id_and_not_where_it_lives(apps: Apps) -> None:
    r = requests.get(f"{apps.quick}/v1/model", timeout=60)
    assert r.status_code == 200
    j = r.json()
    assert j["model_id"] == read_info(apps.model).model_id and j["arch"] == "unet"
    assert j["preprocessing"]["height"] == 64 and j["label_map"] == model_info(apps.model)["label_map"]
    assert j["metrics"] == {"source": "segray train", "val_miou": 0.5}
    for secret in (apps.model, Path(apps.model).name, RUN_URI, "private-bucket", ENCODER_PATH, "/srv/private"):
        assert secret not in r.text, secret
    assert "uri" not in j and "recipe" not in j and "encoder_weights" not in j
    assert j["serving"]["max_form_parts"] == MAX_FORM_PARTS and "model" not in j["serving"]
    assert {k: v for k, v in j.items() if k != "serving"} == public_model_info(model_info(apps.model))


# --- health -----------------------------------------------------------------------------------------


def test_watchdog_reports_a_stuck_model_call() -> None:
    dog = Watchdog(deadline_s=30, stuck_margin_s=10, max_loop_lag_s=5)
    assert dog.reason(1000.0, None) is None
    assert dog.reason(1000.0, 39.0) is None  # past the deadline, but not yet past the margin
    reason = dog.reason(1000.0, 41.0)
    assert reason is not None and "run for 41 s" in reason and "30 s request deadline plus 10 s" in reason
    assert dog.stuck(41.0) == reason  # what Serve's health check raises


def test_watchdog_reports_a_lagging_event_loop_for_a_while() -> None:
    dog = Watchdog(deadline_s=30, stuck_margin_s=10, max_loop_lag_s=5)
    dog.note_lag(1000.0, 0.01)  # ordinary scheduling noise is not even recorded
    dog.note_lag(1001.0, 4.0)
    assert dog.reason(1001.0, None) is None and dog.loop_lag(1001.0) == 4.0
    dog.note_lag(1010.0, 9.3)
    reason = dog.reason(1010.0, None)
    assert reason is not None and "fell 9.3 s behind" in reason
    assert dog.reason(1010.0 + LAG_MEMORY_S + 1, None) is None  # it passed, and the replica answers again
    assert dog.stuck(None) is None  # a lag alone never asks Serve to replace the replica


def test_healthz_reports_in_flight_work(apps: Apps) -> None:
    h = wait_for(lambda: idle(apps.roomy), "the replica to be idle")
    assert h["status"] == "ok" and h["loop_lag_s"] >= 0 and "error" not in h
    assert {"requests", "batches", "windows", "cancelled", "timed_out"} <= h.keys()


# --- EXIF orientation ---------------------------------------------------------------------------------


def test_a_sideways_jpeg_is_labelled_as_displayed(apps: Apps) -> None:
    """Stored 480x360 with EXIF orientation 6: displayed 360 wide and 480 high, as the mask is."""
    rgb = np.random.default_rng(6).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, exif=exif)
    r = requests.post(f"{apps.roomy}/v1/segment?overlay=1", data=buf.getvalue(), timeout=300)
    assert r.status_code == 200, r.text
    j = r.json()
    assert (j["width"], j["height"], j["windowed"]) == (360, 480, False)
    for key in ("mask_png", "overlay_png"):
        with Image.open(io.BytesIO(base64.b64decode(j[key]))) as im:
            assert im.size == (360, 480), key
