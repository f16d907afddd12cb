"""The online endpoint against a real Ray Serve app on the suite's Ray: HTTP on loopback, a real
client, the labelling job's own output to compare with, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import io
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from helpers.frames import png_declaring, write_frames
from PIL import Image

from segray.labelling.job import LabelOptions, run_label_job
from segray.labels import CAMVID
from segray.models.artifact import read_info
from segray.serving.app import deploy
from segray.serving.auth import ENV, digest_from_env, key_digest
from segray.serving.labeller import ServeOptions

pytestmark = pytest.mark.usefixtures("ray_session")

#: A frame resized to the model input, and one above twice the 64x64 input: labelled in windows.
SMALL, LARGE = (48, 64), (150, 200)
MAX_BODY = 1_000_000
#: Replicas and the page's app take little of the suite's 2 CPUs, so nothing waits for resources.
REPLICA_CPUS = 0.25


@dataclass
class Served:
    url: str
    keyed_url: str
    key: str
    frames: dict[str, Path]
    model: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from ray import serve

    folder = tmp_path_factory.mktemp("serve-frames")
    small, large = write_frames(folder, [SMALL, LARGE], seed=3)
    port = free_port()
    opts = ServeOptions(model=tiny_model, max_body_bytes=MAX_BODY, batch_wait_s=0.05)
    url = deploy(opts, "127.0.0.1", port, num_cpus=REPLICA_CPUS, name="segray-test", route_prefix="/")
    # A second app, at /keyed, that requires the key set in the environment (as `segray serve` reads it).
    key = secrets.token_urlsafe(24)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(ENV, key)
        keyed = ServeOptions(model=tiny_model, api_key_sha256=digest_from_env())
    keyed_url = deploy(keyed, "127.0.0.1", port, num_cpus=REPLICA_CPUS, name="segray-keyed", route_prefix="/keyed")
    try:
        yield Served(url.rstrip("/"), keyed_url, key, {"small": small, "large": large}, tiny_model)
    finally:
        serve.delete("segray-test")
        serve.delete("segray-keyed")
        serve.shutdown()


def post(served: Served, data: bytes, query: str = "", **headers: str) -> requests.Response:
    return requests.post(f"{served.url}/v1/segment{query}", data=data, headers=headers, timeout=120)


def palette_mask(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "P" and im.getpalette()[: 3 * 11] == [v for c in CAMVID.classes for v in c.color]
        return np.asarray(im)


def counters(served: Served) -> dict[str, int]:
    r = requests.get(f"{served.url}/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    return r.json()


def test_json_answer(served: Served) -> None:
    r = post(served, served.frames["small"].read_bytes())
    assert r.status_code == 200, r.text
    j = r.json()
    h, w = SMALL
    assert (j["height"], j["width"], j["windowed"]) == (h, w, False)
    assert j["model_id"] == read_info(served.model).model_id and j["model_name"] == "tiny-unet"
    assert [c["name"] for c in j["classes"]] == CAMVID.names
    assert sum(c["pixels"] for c in j["classes"]) == w * h
    assert sum(c["fraction"] for c in j["classes"]) == pytest.approx(1.0)
    assert 0 < j["mean_confidence"] <= 1
    mask = palette_mask(base64.b64decode(j["mask_png"]))
    assert mask.shape == (h, w)
    assert np.bincount(mask.ravel(), minlength=11).tolist() == [c["pixels"] for c in j["classes"]]
    assert "overlay_png" not in j


def test_png_answers_overlay_and_multipart(served: Served) -> None:
    data = served.frames["small"].read_bytes()
    as_json = post(served, data).json()
    png = post(served, data, Accept="image/png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-segray-model-id"] == as_json["model_id"]
    assert png.content == base64.b64decode(as_json["mask_png"])  # the same PNG either way
    overlay = post(served, data, "?overlay=1", Accept="image/png")
    frame = cv2.cvtColor(cv2.imread(str(served.frames["small"])), cv2.COLOR_BGR2RGB)
    blended = cv2.cvtColor(cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    mask = palette_mask(png.content)
    colours = np.asarray(CAMVID.palette(), np.uint8).reshape(256, 3)[mask]
    expected = (frame.astype(np.float32) + colours) / 2
    assert blended.shape == frame.shape and np.abs(blended - expected).max() <= 1
    in_json = post(served, data, "?overlay=1").json()
    assert base64.b64decode(in_json["overlay_png"]) == overlay.content
    form = requests.post(f"{served.url}/v1/segment", files={"image": ("f.png", data, "image/png")}, timeout=60)
    assert form.status_code == 200 and form.json()["mask_png"] == as_json["mask_png"]


@pytest.mark.parametrize("ext", [".jpg", ".webp", ".tiff"])
def test_other_formats(served: Served, tmp_path: Path, ext: str) -> None:
    frame = cv2.imread(str(served.frames["small"]))
    ok, buf = cv2.imencode(ext, frame)
    assert ok
    r = post(served, buf.tobytes())
    assert r.status_code == 200, r.text
    assert (r.json()["height"], r.json()["width"]) == SMALL


def test_masks_equal_what_segray_label_writes(served: Served, tmp_path: Path) -> None:
    folder = served.frames["small"].parent.parent
    out = tmp_path / "out"
    s = run_label_job(LabelOptions(model=served.model, input=str(folder), output=str(out)))
    assert (s.labelled, s.failed, s.windowed) == (2, 0, 1)
    for name, size in (("small", SMALL), ("large", LARGE)):
        path = served.frames[name]
        written = palette_mask((out / "masks" / f"{path.relative_to(folder)}.png").read_bytes())
        r = post(served, path.read_bytes())
        assert r.status_code == 200, r.text
        online = palette_mask(base64.b64decode(r.json()["mask_png"]))
        assert online.shape == size and r.json()["windowed"] == (name == "large")
        assert np.array_equal(online, written), f"{name}: {(online != written).sum()} pixels differ"


def test_concurrent_requests_are_batched(served: Served) -> None:
    frames = [served.frames["small"].read_bytes(), served.frames["large"].read_bytes()]
    alone = [post(served, f).json()["mask_png"] for f in frames]
    before = counters(served)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: post(served, frames[i % 5 == 4]), range(16)))
    assert [a.status_code for a in answers] == [200] * 16
    assert [(a.json()["height"], a.json()["width"]) for a in answers] == [
        LARGE if i % 5 == 4 else SMALL for i in range(16)
    ]
    # Batch-mates do not change a frame's mask: each is the one the frame gets when sent alone.
    assert [a.json()["mask_png"] for a in answers] == [alone[i % 5 == 4] for i in range(16)]
    after = counters(served)
    assert after["requests"] - before["requests"] == 16
    calls = after["batches"] - before["batches"]
    assert 1 <= calls < 16, f"16 concurrent requests took {calls} model calls"
    assert after["largest_batch"] > 1


def test_a_sideways_jpeg_is_labelled_in_windows_as_displayed(served: Served) -> None:
    """Stored 480x360 with EXIF orientation 6 (a phone held upright): displayed 360 wide and 480
    high, above the window threshold of this app's 64x64 model, so labelled in windows as displayed."""
    rgb = np.random.default_rng(6).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, exif=exif)
    r = post(served, buf.getvalue(), "?overlay=1")
    assert r.status_code == 200, r.text
    j = r.json()
    assert (j["width"], j["height"], j["windowed"]) == (360, 480, True)
    assert palette_mask(base64.b64decode(j["mask_png"])).shape == (480, 360)
    with Image.open(io.BytesIO(base64.b64decode(j["overlay_png"]))) as im:
        assert im.size == (360, 480)


def truncated_jpeg(path: Path) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.imread(str(path)))
    return buf.tobytes()[: len(buf) // 2]


BAD = {
    "not an image": (lambda f: b"just some text, not an image", 400, "not a recognised image"),
    "empty": (lambda f: b"", 400, "empty file (0 bytes)"),
    "truncated PNG": (lambda f: f.read_bytes()[:200], 400, "truncated PNG"),
    "truncated JPEG": (truncated_jpeg, 400, "truncated JPEG"),
    "too many pixels": (lambda f: png_declaring(100_000, 100_000), 413, "declares 100000x100000"),
    "body too large": (lambda f: b"\0" * (MAX_BODY + 1), 413, f"above the limit of {MAX_BODY:,} bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_its_status_and_the_replica_still_answers(served: Served, case: str) -> None:
    make, status, message = BAD[case]
    before = counters(served)
    r = post(served, make(served.frames["small"]))
    assert r.status_code == status and message in r.json()["error"], (case, r.status_code, r.text)
    good = post(served, served.frames["small"].read_bytes())
    assert good.status_code == 200
    assert counters(served)["requests"] == before["requests"] + 1  # the same replica: its counts went on


def test_streamed_body_over_the_limit(served: Served) -> None:
    chunks = (b"\0" * 100_000 for _ in range(MAX_BODY // 100_000 + 2))  # no Content-Length: chunked
    r = requests.post(f"{served.url}/v1/segment", data=chunks, timeout=60)
    assert r.status_code == 413 and "above the limit" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/segment", 405), ("POST", "/healthz", 405), ("PUT", "/v1/model", 405), ("GET", "/v2/segment", 404)],
)
def test_wrong_method_or_path(served: Served, method: str, path: str, status: int) -> None:
    r = requests.request(method, served.url + path, timeout=30)
    assert r.status_code == status
    assert path in r.json()["error"] and "POST /v1/segment" in r.json()["error"]


def test_model_endpoint_is_model_info_without_the_artifacts_location(served: Served) -> None:
    from segray.models.info import model_info

    r = requests.get(f"{served.url}/v1/model", timeout=30)
    j = r.json()
    serving = j.pop("serving")
    info = model_info(served.model)
    assert j == {k: v for k, v in info.items() if k not in ("uri", "recipe")}
    assert served.model not in r.text and j["model_id"] == read_info(served.model).model_id
    assert serving["max_body_bytes"] == MAX_BODY and serving["max_batch_size"] == 8


def test_api_key_is_required_and_never_logged(served: Served) -> None:
    import ray

    wrong = secrets.token_urlsafe(24)
    frame = served.frames["small"].read_bytes()
    base = served.keyed_url.rstrip("/")
    missing = requests.post(f"{base}/v1/segment", data=frame, timeout=60)
    assert missing.status_code == 401 and "needs an API key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    bad = requests.post(f"{base}/v1/segment", data=frame, headers={"Authorization": f"Bearer {wrong}"}, timeout=60)
    assert bad.status_code == 401 and bad.json()["error"] == "wrong API key"
    assert requests.get(f"{base}/v1/model", timeout=30).status_code == 401
    bearer = requests.post(f"{base}/v1/segment", data=frame, headers={"Authorization": f"Bearer {served.key}"})
    assert bearer.status_code == 200
    x_key = requests.get(f"{base}/v1/model", headers={"X-API-Key": served.key}, timeout=30)
    assert x_key.status_code == 200 and "api_key_sha256" not in x_key.json()["serving"]
    assert requests.get(f"{base}/healthz", timeout=30).status_code == 200  # probes need no key
    # Serve's access logs recorded these requests; no key, nor the replica's digest, is in any log.
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    texts = [p.read_bytes() for p in logs.rglob("*") if p.is_file()]
    assert any(b"/keyed/v1/segment" in t for t in texts), "the access log of the keyed app was not found"
    for secret in (served.key, wrong, key_digest(served.key)):
        leaked = [str(p) for p, t in zip(logs.rglob("*"), texts, strict=False) if secret.encode() in t]
        assert not leaked, f"the API key appears in {leaked}"


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_page_in_a_headless_browser(served: Served, tmp_path: Path) -> None:
    found = chromium()
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium and chromedriver are needed for the page test (.ci/run installs them)")
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    frame = write_frames(tmp_path / "page", [(120, 160)], seed=5)[0]
    expected = post(served, frame.read_bytes()).json()
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.get(served.url + "/")
        WebDriverWait(driver, 60).until(lambda d: "tiny-unet@" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(frame))
        WebDriverWait(driver, 120).until(
            lambda d: (
                d.execute_script("return document.body.dataset.done === '1'")
                or d.find_element(By.ID, "status").get_attribute("class") == "error"
            )
        )
        assert driver.find_element(By.ID, "status").get_attribute("class") != "error", driver.find_element(
            By.ID, "status"
        ).text
        sizes = {
            name: driver.execute_script(
                f"const i = document.getElementById('{name}'); return [i.naturalWidth, i.naturalHeight];"
            )
            for name in ("frame", "mask", "overlay")
        }
        assert sizes == {name: [160, 120] for name in sizes}
        rows = driver.find_elements(By.CSS_SELECTOR, "#classes tbody tr")
        present = sorted((c for c in expected["classes"] if c["pixels"]), key=lambda c: -c["pixels"])
        assert [r.get_attribute("data-cls") for r in rows] == [c["name"] for c in present]
        assert expected["model_id"] in driver.find_element(By.ID, "model").text
        shot = tmp_path / "serve-page.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    with Image.open(shot) as im:
        assert im.format == "PNG" and im.width >= 800
    print(f"screenshot: {shot}")
