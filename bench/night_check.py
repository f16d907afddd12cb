"""Checks the request and byte model of docs/scale.md against the real labelling job, at small scale.

1. **Folder run**: writes ``--frames`` synthetic dash-camera JPEGs (``--size``, quality 90) laid out as
   ``<date>/<vehicle>/<camera>/<n>.jpg``, ``--bad`` of them truncated, makes the tests' tiny model
   (UNet with a mobilenetv3_small_050 encoder, 64x64 input: its own cost is negligible), runs
   ``segray label`` on a fresh local Ray into a local folder, then counts what the output holds (masks,
   stats parts, errors parts, ``_runs``, the lease) and its bytes, next to what the model predicts.
2. **S3 run** (``--s3-frames``, 0 to skip): the same job on a few hundred frames in a local SeaweedFS
   S3 server (the one the tests use), through a counting HTTP proxy, so every request the job makes
   is counted by kind (GET, HEAD, LIST, PUT, DELETE) and by what it touched; then a rerun on the same
   output (nothing left to label) to count what the done-check reads.
3. **Real masks** (``--real-masks DIR``): PNG size of real label masks (e.g. CamVid's annotations)
   upscaled to 1024x2048 with nearest neighbour and encoded as the job encodes masks.

    python bench/night_check.py --frames 5000 --real-masks ../shared/data/camvid/valannot

About 5-10 minutes on 2 cores. Everything is written under a temporary folder and removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segray.datasets.synthetic import street_frame  # noqa: E402
from segray.labelling.job import LabelOptions  # noqa: E402
from segray.labels import CAMVID  # noqa: E402
from segray.models.artifact import init_artifact  # noqa: E402
from segray.outputs.lease import DEFAULT_TTL_S  # noqa: E402
from segray.outputs.masks import encode_mask_png  # noqa: E402

WRITE_BATCH = LabelOptions.__dataclass_fields__["write_batch_size"].default
TINY_ENCODER = "tu-mobilenetv3_small_050"
#: Distinct synthetic scenes, and sensor-noise patterns laid over them: 64 x 16 distinct frames.
SCENES = 64
NOISES = 16
DATE = "2026-11-21"


# --- frames, model, run ------------------------------------------------------------------------


def write_frames(root: Path, n: int, size: tuple[int, int], bad: int, per_camera: int = 100) -> list[Path]:
    """``n`` JPEGs under ``root/<date>/v<vehicle>/cam<0|1>/``, ``per_camera`` to a camera folder;
    ``bad`` of them (spread evenly) cut to their first 100 bytes (a truncated upload)."""
    rng = np.random.default_rng(0)
    h, w = size
    scenes = [street_frame(rng, h, w)[0].astype(np.int16) for _ in range(min(SCENES, n))]
    noises = [rng.normal(0, 2, scenes[0].shape).astype(np.int16) for _ in range(NOISES)]
    bad_at = set(np.linspace(0, n - 1, bad, dtype=int).tolist()) if bad else set()
    paths = []
    for i in range(n):
        folder, k = divmod(i, per_camera)
        vehicle, camera = divmod(folder, 2)
        p = root / DATE / f"v{vehicle:03d}" / f"cam{camera}" / f"{k:06d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        lap, scene = divmod(i, len(scenes))
        img = (scenes[scene] + noises[lap % NOISES]).clip(0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        p.write_bytes(data.tobytes()[:100] if i in bad_at else data.tobytes())
        paths.append(p)
    return paths


def make_model(folder: Path) -> str:
    art = init_artifact("unet", TINY_ENCODER, CAMVID, name="tiny-unet", height=64, width=64)
    art.save(str(folder))
    return str(folder)


def segray_label(model: str, input_uri: str, output: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """``segray label`` in a child process (its own local Ray): wall seconds and its last lines."""
    exe = Path(sys.executable).parent / "segray"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "segray.cli"]
    # Frames are resized to the 64x64 input, as a 1024x2048 frame is to a 512x1024 model (not windowed).
    cmd += ["label", "--model", model, "--input", input_uri, "--output", output, "--tile-above", "100"]
    child_env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", **(env or {})}
    t = time.time()
    r = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
    seconds = time.time() - t
    if r.returncode != 0:
        sys.exit(f"segray label exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return seconds, r.stdout.strip().splitlines()[-1]


# --- what an output holds ----------------------------------------------------------------------


def survey(out: Path) -> dict[str, object]:
    files = [p for p in out.rglob("*") if p.is_file()]

    def under(top: str, suffix: str) -> list[Path]:
        return [p for p in files if p.relative_to(out).parts[0] == top and p.name.endswith(suffix)]

    masks, stats, errors, runs = (
        under("masks", ".png"),
        under("stats", ".parquet"),
        under("errors", ".parquet"),
        under("_runs", ".json"),
    )
    rows = [pq.ParquetFile(p).metadata.num_rows for p in stats]
    sizes = [p.stat().st_size for p in stats]
    # bytes of a part = fixed (schema, label map, footer) + per row: least squares over the parts
    per_row, fixed = np.polyfit(rows, sizes, 1) if len(set(rows)) > 1 else (sizes[0] / rows[0], 0.0)
    return {
        "masks": len(masks),
        "mask_bytes": sum(p.stat().st_size for p in masks),
        "stats_parts": len(stats),
        "stats_rows": sum(rows),
        "stats_bytes": sum(sizes),
        "rows_per_part": sorted(Counter(rows).items(), key=lambda kv: -kv[1]),
        "stats_per_row": float(per_row),
        "stats_fixed": float(fixed),
        "errors_parts": len(errors),
        "errors_rows": sum(pq.ParquetFile(p).metadata.num_rows for p in errors),
        "runs": len(runs),
        "lease": int((out / "_lease.json").exists()),
        "hidden": len([p for p in files if p.name.startswith(".")]),
        "folders": len({p.parent for p in masks}),
        "total_files": len(files),
        "total_bytes": sum(p.stat().st_size for p in files),
    }


def predicted(frames: int, bad: int) -> dict[str, str]:
    """What docs/scale.md's model says a run over ``frames`` frames (``bad`` unreadable) writes."""
    parts = math.ceil(frames / WRITE_BATCH)
    return {
        "masks": f"{frames - bad:,} (one per labelled frame)",
        "stats_parts": f"{parts:,} (ceil({frames:,} / {WRITE_BATCH}); a few more if the last blocks come apart)",
        "stats_rows": f"{frames - bad:,}",
        "errors_parts": f"1 to {min(bad, parts)} (one per write batch holding a bad frame)" if bad else "0",
        "errors_rows": f"{bad}",
        "runs": "1",
        "lease": "1",
        "hidden": "0 (every file published whole)",
    }


# --- counting S3 proxy -------------------------------------------------------------------------

HOP = {"connection", "keep-alive", "proxy-connection", "expect"}


class RequestLog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, str]] = []

    def add(self, op: str, area: str) -> None:
        with self.lock:
            self.rows.append((op, area))

    def take(self) -> Counter[tuple[str, str]]:
        with self.lock:
            rows, self.rows = self.rows, []
        return Counter(rows)


def classify(method: str, path: str, output_key: str, input_key: str, body: bytes = b"") -> tuple[str, str]:
    """(operation, what it touched) of one S3 request, path-style: ``/<bucket>/<key>?<query>``; a
    batch delete is put down to the first key its body names."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    bucket_and_key = unquote(parts.path).lstrip("/").split("/", 1)
    key = bucket_and_key[1] if len(bucket_and_key) > 1 else ""
    if not key:  # a request on the bucket: a listing, a batch delete, or a bucket check
        op = method
        if method == "GET" and ("list-type" in query or "prefix" in query):
            op, key = "LIST", query.get("prefix", [""])[0]
        elif method == "POST" and "delete" in query:
            m = re.search(rb"<Key>([^<]*)</Key>", body)
            op, key = "DELETE (batch)", m.group(1).decode() if m else ""
    else:
        op = {"GET": "GET", "HEAD": "HEAD", "PUT": "PUT", "DELETE": "DELETE"}.get(method, method)
        if "uploads" in query or "uploadId" in query:
            op = "multipart"
    if key.startswith(output_key):
        rest = key[len(output_key) :].lstrip("/")
        top = rest.split("/", 1)[0] if rest else "(output root)"
        area = "_probe" if top.startswith("_probe") else top
    elif key.startswith(input_key):
        area = "frames"
        if key.rstrip("/").endswith(("w", ".wld")):
            area = "world-file candidates"
    else:
        area = key or "(bucket)"
    return op, area


def start_proxy(upstream: str, log: RequestLog, output_key: str, input_key: str) -> tuple[ThreadingHTTPServer, str]:
    up = urlsplit(upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = b""
                while True:
                    line = self.rfile.readline()
                    raw += line
                    if int(line.split(b";")[0].strip() or b"0", 16) == 0:
                        while True:
                            trailer = self.rfile.readline()
                            raw += trailer
                            if trailer in (b"\r\n", b"\n", b""):
                                return raw
                    raw += self.rfile.read(int(line.split(b";")[0].strip(), 16) + 2)
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _relay(self) -> None:
            body = self._body()
            for attempt in range(2):
                if getattr(self, "_up", None) is None:
                    self._up = http.client.HTTPConnection(up.hostname, up.port, timeout=300)
                try:
                    self._up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in HOP:
                            self._up.putheader(k, v)
                    self._up.endheaders(body or None)
                    r = self._up.getresponse()
                    data = r.read()
                    break
                except (http.client.HTTPException, OSError):
                    self._up.close()
                    self._up = None
                    if attempt:
                        raise
            log.add(*classify(self.command, self.path, output_key, input_key, body))
            self.send_response_only(r.status, r.reason)
            for k, v in r.getheaders():
                lk = k.lower()
                if lk in HOP or lk == "transfer-encoding" or (lk == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def s3_check(tmp: Path, model: str, n: int, size: tuple[int, int]) -> tuple[dict[str, object], ...]:
    """The job on ``n`` frames in SeaweedFS through the counting proxy: requests of a first run and of
    a rerun (nothing left to label), and the first run's seconds."""
    import s3fs

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.seaweed import create_bucket, start_seaweed

    server = start_seaweed(tmp / "seaweed")
    try:
        create_bucket(server, "night")
        fs = s3fs.S3FileSystem(
            key=server.access_key, secret=server.secret_key, client_kwargs={"endpoint_url": server.endpoint}
        )
        frames = write_frames(tmp / "s3-frames", n, size, bad=0)
        for p in frames:
            fs.pipe(f"night/in/{p.relative_to(tmp / 's3-frames').as_posix()}", p.read_bytes())
        log = RequestLog()
        proxy, endpoint = start_proxy(server.endpoint, log, "out", "in")
        try:
            env = {**server.env(), "AWS_ENDPOINT_URL": endpoint}
            seconds, line = segray_label(model, f"s3://night/in/{DATE}/", "s3://night/out/", env)
            first = log.take()
            segray_label(model, f"s3://night/in/{DATE}/", "s3://night/out/", env)  # the rerun: 0 to label
            rerun = log.take()
        finally:
            proxy.shutdown()
        parts = len(fs.ls("night/out/stats"))
        return {"seconds": seconds, "line": line, "parts": parts}, dict(first), dict(rerun)
    finally:
        server.stop()


def print_requests(n: int, info: dict[str, object], first: dict, rerun: dict) -> None:
    ops = ["GET", "HEAD", "LIST", "PUT", "DELETE", "DELETE (batch)", "multipart"]
    areas = sorted({a for _, a in first} | {a for _, a in rerun})
    print(f"\nS3 requests, {n} frames through SeaweedFS ({info['seconds']:.0f} s; {info['parts']} stats parts)")
    print(f"  {info['line']}")
    print("\n| run | touched | " + " | ".join(ops) + " | per frame |")
    print("| --- | --- |" + " ---: |" * (len(ops) + 1))
    for name, counts in (("first run", first), ("rerun (0 to label)", rerun)):
        for area in areas:
            row = [counts.get((op, area), 0) for op in ops]
            other = sum(v for (op, a), v in counts.items() if a == area and op not in ops)
            if sum(row) + other == 0:
                continue
            cells = " | ".join(str(v) for v in row)
            print(f"| {name} | {area} | {cells} | {(sum(row) + other) / n:.2f} |")
        totals = " | ".join(str(sum(v for (o, _), v in counts.items() if o == op)) for op in ops)
        print(f"| {name} | **all** | {totals} | {sum(counts.values()) / n:.2f} |")
    want = predicted_requests(n, int(info["parts"]), float(info["seconds"]))
    print("\n| first run | predicted | measured |\n| --- | --- | ---: |")
    for op, text in want.items():
        print(f"| {op} | {text} | {sum(v for (o, _), v in first.items() if o == op):,} |")


def predicted_requests(n: int, parts: int, seconds: float) -> dict[str, str]:
    """docs/scale.md's request model for a first run over ``n`` frames of a listed S3 folder.

    Per frame: the frame's GET and one mask PUT; world files come from the folder's listing, so
    looking for them costs nothing per frame. Per write batch one stats part. Once: the listing
    (one LIST per 1,000 keys), the write probe, ``_runs``, the lease (taken, a heartbeat every
    TTL/6 s, released), and a few checks of the output's folders."""
    beats = int(seconds // (DEFAULT_TTL_S / 6))
    return {
        "GET": f"{n:,} (1 per frame)",
        "HEAD": "a few (none per frame)",
        "LIST": f"{math.ceil(n / 1000):,} + a few (1 per 1,000 listed)",
        "PUT": f"{n + parts + 4 + beats:,} (masks {n} + parts {parts} + _runs + probe + lease 2 + {beats} beats)",
    }


# --- real masks --------------------------------------------------------------------------------


def real_masks(folder: Path, size: tuple[int, int] = (1024, 2048)) -> None:
    palette = CAMVID.palette()
    sizes, ms = [], []
    for p in sorted(folder.glob("*.png")):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if m is None or m.ndim != 2:
            continue
        big = cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        t = time.process_time()
        sizes.append(len(encode_mask_png(big, palette)))
        ms.append((time.process_time() - t) * 1000)
    s = np.array(sizes) / 1e3
    print(f"\nReal masks: {len(s)} from {folder}, upscaled to {size[0]}x{size[1]} (nearest), encoded as the job does")
    print("| masks | KB per mask: mean | median | p95 | max | core-ms per mask |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {len(s)} | {s.mean():.1f} | {np.median(s):.1f} | {np.percentile(s, 95):.1f} | {s.max():.1f} | "
        f"{np.mean(ms):.1f} |"
    )


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=5000)
    ap.add_argument("--size", default="360x480", help="frame HxW")
    ap.add_argument("--bad", type=int, default=5, help="frames cut short (unreadable)")
    ap.add_argument("--s3-frames", type=int, default=256, help="frames for the S3 request count (0: skip)")
    ap.add_argument("--real-masks", type=Path, help="a folder of label-mask PNGs (class id per pixel)")
    a = ap.parse_args()
    size = tuple(int(v) for v in a.size.split("x"))
    if a.real_masks:
        real_masks(a.real_masks)
    with tempfile.TemporaryDirectory(prefix="segray-night-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_model(tmp / "model")
        if a.frames:
            t = time.time()
            write_frames(tmp / "frames", a.frames, size, a.bad)
            made = time.time() - t
            seconds, line = segray_label(model, str(tmp / "frames"), str(tmp / "out"))
            got = survey(tmp / "out")
            want = predicted(a.frames, a.bad)
            mb = sum(p.stat().st_size for p in (tmp / "frames").rglob("*.jpg")) / a.frames / 1e3
            print(
                f"\nFolder run: {a.frames:,} frames {size[0]}x{size[1]} JPEG ({mb:.0f} KB each, made in {made:.0f} s)"
            )
            print(f"  {line}")
            print(f"  segray label: {seconds:.0f} s wall, Ray start included")
            print("\n| output | predicted | measured |\n| --- | --- | ---: |")
            for key, value in want.items():
                print(f"| {key} | {value} | {got[key]:,} |")
            print(f"\nstats parts by rows: {got['rows_per_part'][:8]}")
            print(
                f"stats: {got['stats_bytes']:,} B for {got['stats_rows']:,} rows = "
                f"{got['stats_bytes'] / max(1, got['stats_rows']):.0f} B per row all in; fitted over the parts: "
                f"{got['stats_per_row']:.0f} B per row + {got['stats_fixed']:,.0f} B per part"
            )
            print(
                f"masks: {got['mask_bytes'] / max(1, got['masks']) / 1e3:.1f} KB each at {size[0]}x{size[1]}; "
                f"{got['folders']} mask folders; output {got['total_files']:,} files, {got['total_bytes'] / 1e6:.1f} MB"
            )
        if a.s3_frames:
            info, first, rerun = s3_check(tmp, model, a.s3_frames, size)
            print_requests(a.s3_frames, info, first, rerun)
            print(f"\n(lease TTL {DEFAULT_TTL_S:.0f} s: one heartbeat PUT every {DEFAULT_TTL_S / 6:.0f} s)")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
