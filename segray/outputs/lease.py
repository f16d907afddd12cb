"""One writer per output: a lease object taken with an atomic create and kept alive by heartbeats.

Two runs on one output (cron firing twice, a retried ``ray job submit``, a rerun by hand during the
nightly job) would both see no stats rows and label every frame twice. So a run first takes the
output's lease, ``<output>/_lease.json``, and a second run that finds it held exits with
:class:`LeaseHeld` (exit 2), naming the holder and since when.

- **Take**: create the object only if absent (S3 ``PUT`` with ``If-None-Match: *``; on a disk, a
  create under an exclusive ``flock``). Exactly one of several runs started together wins.
- **Hold**: the holder rewrites the record every ``ttl / 6`` seconds, conditionally on the version
  it last wrote (S3 ``If-Match: <etag>``; on a disk, the content hash checked under the lock), so a
  holder that was taken over finds out at its next heartbeat and stops (:class:`LeaseLost`).
- **Take over**: a record whose last heartbeat is older than the TTL (its run died: SIGKILL, a lost
  node) or that is marked released is replaced, again conditionally: of two runs taking over at
  once, one wins. A crashed run therefore blocks its output for at most the TTL
  (``SEGRAY_LEASE_TTL_S``, default 60 s). Heartbeat times are wall-clock: the machines of one
  cluster must agree on the time within a small part of the TTL (NTP does).

The lease is what keeps writers apart; readers do not take it (see :mod:`segray.outputs.read`,
which counts each frame once whatever ``stats/`` holds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Protocol

from segray import storage

log = logging.getLogger("segray.lease")

LEASE_NAME = "_lease.json"
#: Seconds without a heartbeat after which a lease counts as abandoned and may be taken over.
DEFAULT_TTL_S = 60.0


def lease_ttl() -> float:
    value = os.environ.get("SEGRAY_LEASE_TTL_S", "")
    try:
        ttl = float(value) if value else DEFAULT_TTL_S
    except ValueError as e:
        raise ValueError(f"SEGRAY_LEASE_TTL_S={value!r}: expected a number of seconds") from e
    if ttl <= 0:
        raise ValueError(f"SEGRAY_LEASE_TTL_S={value!r}: must be > 0")
    return ttl


class LeaseHeld(RuntimeError):
    """Another live run holds the output: this run did nothing."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeats stopped for longer than the TTL)."""


@dataclass(frozen=True)
class LeaseRecord:
    run_id: str
    purpose: str  # "label" or "compact"
    host: str
    pid: int
    started_at: float  # unix seconds
    heartbeat_at: float
    ttl_s: float
    released: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        d = json.loads(data)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.heartbeat_at

    def is_free(self, now: float | None = None) -> bool:
        return self.released or self.age(now) > self.ttl_s

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"run {self.run_id} ({self.purpose}, host {self.host}, pid {self.pid}) since {since}"


class LeaseStore(Protocol):
    """Three operations, each atomic: read with a version tag, create if absent, replace if unchanged."""

    def read(self) -> tuple[bytes, str] | None: ...
    def create(self, data: bytes) -> str | None: ...
    def replace(self, tag: str, data: bytes) -> str | None: ...


class LocalLeaseStore:
    """A lease file on a disk; every operation runs under an exclusive ``flock`` of a sidecar file.

    The version tag is the content's SHA-256. ``flock`` is released by the kernel when its process
    dies, so a killed run never leaves the lock (only the lease record, which then goes stale).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = os.path.join(os.path.dirname(path), "_lease.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def _write(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return hashlib.sha256(data).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        if not os.path.exists(self.lock_path):
            return None  # never taken (taking it makes the lock file first); reading creates nothing
        with self._locked():
            return self._read()

    def create(self, data: bytes) -> str | None:
        with self._locked():
            return None if self._read() is not None else self._write(data)

    def replace(self, tag: str, data: bytes) -> str | None:
        with self._locked():
            cur = self._read()
            return self._write(data) if cur is not None and cur[1] == tag else None


class S3LeaseStore:
    """A lease object on S3, written with conditional PUTs (``If-None-Match: *``, ``If-Match``).

    AWS S3, MinIO and SeaweedFS honour both. pyarrow's and s3fs's file interfaces do not pass the
    conditions, so the calls go through :func:`segray.storage.s3_client` (same AWS_* environment).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.key = storage.split_s3(uri)
        self._client = storage.s3_client()

    def read(self) -> tuple[bytes, str] | None:
        try:
            r = self._client.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as e:
            code = storage.s3_error_code(e)
            if code is None:
                raise
            if code in {"NoSuchKey", "404"}:
                return None
            raise storage.StorageError(f"{self.uri}: reading the lease: {e}") from e
        return r["Body"].read(), r["ETag"]

    def _put(self, data: bytes, **cond: str) -> str | None:
        try:
            r = self._client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **cond)
        except Exception as e:
            code = storage.s3_error_code(e)
            if code is None:
                raise
            # 412: the condition failed; 409: a concurrent conditional write won; 404: gone.
            if code in {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"}:
                return None
            raise storage.StorageError(f"{self.uri}: writing the lease: {e}") from e
        return r["ETag"]

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, tag: str, data: bytes) -> str | None:
        return self._put(data, IfMatch=tag)


def lease_store(output: str) -> LeaseStore:
    uri = storage.join(output, LEASE_NAME)
    if storage.is_s3(uri):
        return S3LeaseStore(uri)
    return LocalLeaseStore(storage.resolve(uri)[1])


def read_lease(output: str) -> LeaseRecord | None:
    """The output's lease record as it stands (held, released or stale), or None if never taken."""
    found = lease_store(output).read()
    return None if found is None else LeaseRecord.from_bytes(found[0])


class OutputLease:
    """The right to write ``output``, held from :meth:`acquire` to :meth:`release` (or ``with``)."""

    def __init__(self, output: str, run_id: str, purpose: str = "label", ttl: float | None = None) -> None:
        self.output, self.run_id, self.purpose = output, run_id, purpose
        self.ttl = lease_ttl() if ttl is None else ttl
        self._store = lease_store(output)
        self._tag: str | None = None
        self._record: LeaseRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost_reason = ""

    @property
    def lost(self) -> bool:
        return bool(self.lost_reason)

    def _new_record(self, started: float | None = None, released: bool = False) -> LeaseRecord:
        now = time.time()
        return LeaseRecord(
            self.run_id, self.purpose, socket.gethostname(), os.getpid(), started or now, now, self.ttl, released
        )

    def acquire(self) -> OutputLease:
        """Take the lease or raise :class:`LeaseHeld` naming the live holder."""
        for _ in range(5):  # a holder may release or a record vanish between our read and write
            record = self._new_record()
            tag = self._store.create(record.to_bytes())
            if tag is None:
                found = self._store.read()
                if found is None:
                    continue
                held = LeaseRecord.from_bytes(found[0])
                if not held.is_free():
                    raise LeaseHeld(self._held_message(held))
                tag = self._store.replace(found[1], record.to_bytes())
                if tag is None:
                    continue  # another run took it over first: look again
                if not held.released:
                    log.warning(
                        "%s: took over the lease of %s: no heartbeat for %.0f s (more than %.0f s)",
                        self.output,
                        held.describe(),
                        held.age(),
                        held.ttl_s,
                    )
            self._tag, self._record = tag, record
            self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
            self._thread.start()
            log.info("%s: lease taken by %s (ttl %.0f s)", self.output, record.describe(), self.ttl)
            return self
        raise LeaseHeld(f"{self.output}: the lease kept changing hands while this run tried to take it; try again")

    def _held_message(self, held: LeaseRecord) -> str:
        expires = datetime.fromtimestamp(held.heartbeat_at + held.ttl_s, timezone.utc).strftime("%H:%M:%S UTC")
        return (
            f"{self.output} is being written by {held.describe()}, last heartbeat {held.age():.0f} s ago. "
            f"Two runs on one output would label frames twice, so this one stops here. Rerun once it ends; "
            f"if that run is dead, its lease lapses {held.ttl_s:.0f} s after its last heartbeat ({expires})."
        )

    def _beat(self) -> None:
        interval = self.ttl / 6
        last_ok = time.monotonic()
        while not self._stop.wait(interval):
            assert self._record is not None and self._tag is not None
            record = self._new_record(self._record.started_at)
            try:
                tag = self._store.replace(self._tag, record.to_bytes())
            except Exception as e:  # noqa: BLE001 - storage outage: retried until the TTL would lapse
                if time.monotonic() - last_ok > self.ttl * 0.8:
                    self.lost_reason = f"no heartbeat could be written for {self.ttl * 0.8:.0f} s ({e})"
                    log.error("%s: lease of run %s lost: %s", self.output, self.run_id, self.lost_reason)
                    return
                log.warning("%s: lease heartbeat failed, retrying: %s", self.output, e)
                continue
            if tag is None:
                found = self._store.read()
                other = LeaseRecord.from_bytes(found[0]).describe() if found else "nobody (the record is gone)"
                self.lost_reason = f"the lease now belongs to {other}"
                log.error("%s: lease of run %s lost: %s", self.output, self.run_id, self.lost_reason)
                return
            self._tag, self._record, last_ok = tag, record, time.monotonic()

    def check(self) -> None:
        """Raise :class:`LeaseLost` if another run has taken the output over."""
        if self.lost:
            raise LeaseLost(
                f"run {self.run_id} stopped: it no longer holds {self.output} ({self.lost_reason}); "
                "what it wrote is kept, and a rerun finishes the rest"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost or self._tag is None or self._record is None:
            return
        try:
            done = self._new_record(self._record.started_at, released=True)
            if self._store.replace(self._tag, done.to_bytes()) is None:
                log.warning("%s: lease was taken over before run %s released it", self.output, self.run_id)
        except Exception as e:  # noqa: BLE001 - an unreleased lease only lapses after its TTL
            log.warning("%s: could not release the lease (it lapses in %.0f s): %s", self.output, self.ttl, e)
        self._tag = None

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
