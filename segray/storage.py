"""One place that turns a URI (folder, ``file://``, ``s3://``) into a pyarrow filesystem, and the only
module that builds S3 clients.

Everything else (Ray Data reads and writes, Parquet, PNG masks, model artifacts) goes through the
filesystem this returns, so AWS, MinIO and SeaweedFS behave the same; the few calls a filesystem
cannot make (the lease's conditional PUTs) go through :func:`s3_client`, built from the same
settings with the same retry policy (:data:`S3_RETRIES`). S3 settings come from the
standard AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``) or the instance profile; they are
read in each process (driver and Ray workers alike) and never passed through task arguments, logs
or outputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

log = logging.getLogger("segray.storage")
T = TypeVar("T")
L = TypeVar("L")

#: botocore's retry policy for every S3 client segray builds (the filesystem's and :func:`s3_client`):
#: each request is tried up to 5 times, with jittered exponential backoff, when it is throttled, gets a
#: 5xx or transient error, or cannot connect. Access and not-found errors are not retried.
S3_RETRIES: dict[str, Any] = {"max_attempts": 5, "mode": "standard"}

#: Seconds a read, write or listing keeps retrying while the endpoint cannot be reached (an S3
#: outage or restart), on top of botocore's own retries. Access and not-found errors fail at once.
RETRY_SECONDS = float(os.environ.get("SEGRAY_STORAGE_RETRY_S", "90"))
_TRANSIENT_NAMES = (
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ServerDisconnectedError",
    "ClientConnectorError",
    "ClientOSError",
)


class StorageError(RuntimeError):
    """A URI cannot be read or written; the message names the URI and says why."""


def is_transient(e: BaseException) -> bool:
    """The endpoint could not be reached (as opposed to refusing or not having the object)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (ConnectionError, TimeoutError)) or type(cur).__name__ in _TRANSIENT_NAMES:
            return True
        if any(name in str(cur) for name in _TRANSIENT_NAMES):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _retrying(uri: str, call: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 1.0
    while True:
        try:
            return call()
        except StorageError as e:
            left = deadline - time.monotonic()
            if not is_transient(e) or left <= 0:
                raise
            log.warning("%s: storage unreachable; retrying for up to %.0f s more (%s)", uri, left, e)
            time.sleep(min(delay, max(left, 0.1)))
            delay = min(delay * 2, 10.0)


def read_listed(listing: Callable[[], L], read: Callable[[L], T], attempts: int = 3) -> T:
    """``read(listing())``, listed and read again when a listed file is gone before it is read (a
    compaction replaced it): up to ``attempts`` times, after which the ``FileNotFoundError`` is raised.
    An error of the listing itself is raised at once."""
    for attempt in range(attempts):
        listed = listing()
        try:
            return read(listed)
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("attempts must be at least 1")


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``, for calls that name the two apart."""
    if not is_s3(uri):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket named")
    return bucket, key


def _s3_env() -> tuple[str | None, str | None, str]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # A digest of the identity keys the client cache, so changed credentials build a new client;
    # the secret itself is read by botocore from the environment and never held here.
    ident = "\0".join(
        os.environ.get(k, "") for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    )
    return endpoint, region, hashlib.sha256(ident.encode()).hexdigest()


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None, identity: str) -> pafs.FileSystem:
    import s3fs

    client_kwargs: dict[str, str] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    fs = s3fs.S3FileSystem(
        client_kwargs=client_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
        config_kwargs={"retries": dict(S3_RETRIES)},
    )
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def s3_client() -> Any:  # botocore's client class is generated at run time
    """A botocore S3 client for what the filesystem cannot do (conditional writes: ``If-None-Match``,
    ``If-Match``). It reads the same AWS_* environment as :func:`resolve`, is cached on the same key
    (endpoint, region, a digest of the credentials: changed credentials build a new client) and
    retries as :data:`S3_RETRIES` says."""
    return _s3_client(*_s3_env())


@lru_cache(maxsize=8)
def _s3_client(endpoint: str | None, region: str | None, identity: str) -> Any:
    import botocore.config
    import botocore.session

    cfg = botocore.config.Config(
        retries=dict(S3_RETRIES),
        s3={"addressing_style": "path"} if endpoint else {},
    )
    return botocore.session.get_session().create_client("s3", endpoint_url=endpoint, region_name=region, config=cfg)


def s3_error_code(e: BaseException) -> str | None:
    """The S3 error code of a request the server refused (``NoSuchKey``, ``PreconditionFailed``, ``412``,
    ...), or None when ``e`` is not such a refusal (the endpoint could not be reached, a bug)."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return None
    return str(e.response.get("Error", {}).get("Code", ""))


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """URI -> (filesystem, path inside it). Local paths become absolute."""
    if is_s3(uri):
        path = uri.split("://", 1)[1].rstrip("/")
        if not path:
            raise StorageError(f"{uri}: no bucket named")
        return _s3_filesystem(*_s3_env()), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported scheme (use a folder, file:// or s3://)")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().absolute())


def absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded); a URI with a scheme unchanged. For paths that
    travel to Ray workers, which may run in another working directory than the driver."""
    return uri if "://" in uri else str(Path(uri).expanduser().absolute())


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/' (works for s3:// and local folders alike)."""
    base = uri.rstrip("/")
    rest = "/".join(p.strip("/") for p in parts if p)
    return f"{base}/{rest}" if rest else base


def _explain(uri: str, e: BaseException) -> StorageError:
    msg = str(e) or type(e).__name__
    if isinstance(e, PermissionError) or "AccessDenied" in msg or "Signature" in msg or "InvalidAccessKeyId" in msg:
        return StorageError(
            f"{uri}: access denied ({msg}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "(or the instance profile) for this bucket."
        )
    if "NoSuchBucket" in msg or "bucket does not exist" in msg.lower():
        return StorageError(f"{uri}: the bucket does not exist ({msg})")
    if isinstance(e, FileNotFoundError):
        return StorageError(f"{uri}: no such file or folder")
    return StorageError(f"{uri}: {type(e).__name__}: {msg}")


def info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except Exception as e:  # noqa: BLE001 - every backend error becomes one clear message
        raise _explain(uri, e) from e


def exists(uri: str) -> bool:
    return info(uri).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    return _retrying(uri, lambda: _read_bytes(uri))


def _read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.PyFileSystem):
            # S3: one GET. Opening a stream HEADs the key twice first, and s3fs's concurrent
            # ranged read HEADs it once for its size: a frame would cost three requests.
            return bytes(fs.handler.fs.cat_file(path, max_concurrency=1))
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        # pyarrow's fsspec handler reports every failed isfile() as not found, a 403 included:
        # info() raises the real reason (access denied) if there is one.
        info(uri)
        raise _explain(uri, e) from e
    except Exception as e:  # noqa: BLE001
        raise _explain(uri, e) from e


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object so that a reader never sees it half-written (retried through outages).

    S3 PUTs (single or multipart) become visible only once complete; on a local disk the bytes go to
    a hidden temporary name in the same folder (starting with '.', ending in '.tmp', so neither a
    reader that skips hidden files nor a '*.parquet' glob picks it up) and are renamed into place.
    """
    _retrying(uri, lambda: _write_bytes(uri, data))


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    try:
        parent = posixpath.dirname(path)
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(parent, recursive=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)
    except Exception as e:  # noqa: BLE001
        raise _explain(uri, e) from e


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        raise _explain(uri, e) from e


def list_files(uri: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Paths (inside the filesystem) of all files under a folder/prefix, recursively, sorted, with names
    starting with ``.`` or ``_`` skipped. Symbolic links are followed; :func:`list_tree` lists a folder
    of frames without following them."""
    return _retrying(uri, lambda: _list_files(uri, suffixes))


def _list_files(uri: str, suffixes: tuple[str, ...] | None) -> list[str]:
    fs, path = resolve(uri)
    infos = _select(uri, fs, path)
    out = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not any(part.startswith((".", "_")) for part in posixpath.relpath(i.path, path).split("/"))
        and (suffixes is None or i.path.lower().endswith(suffixes))
    ]
    return sorted(out)


def _select(uri: str, fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    # On S3 a prefix has no object of its own: pyarrow's fsspec bridge asks "is it a folder?" and then
    # "does it exist?", and a writer adding the prefix's first object between the two questions makes
    # the answer "not a folder". The listing is asked again; a key that is an object stays an error.
    for attempt in range(_SELECT_TRIES):
        try:
            return fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        except NotADirectoryError as e:
            if not is_s3(uri) or fs.get_file_info(path).type == pafs.FileType.File:
                raise StorageError(f"{uri}: is a file, not a folder") from e
            if attempt == _SELECT_TRIES - 1:
                raise _explain(uri, e) from e
            time.sleep(0.1 * (attempt + 1))
        except Exception as e:  # noqa: BLE001
            raise _explain(uri, e) from e
    raise AssertionError("unreachable")


_SELECT_TRIES = 5


@dataclass(frozen=True)
class SkippedLink:
    """A symbolic link that :func:`list_tree` did not follow."""

    path: str  #: the link's own path inside the filesystem
    target: str  #: where it points, as written in the link
    folder: bool  #: it leads to a folder (or loops back to one)


@dataclass(frozen=True)
class Listing:
    """The files under a folder or prefix (sorted), and the symbolic links that were not followed."""

    paths: list[str]
    links: list[SkippedLink] = field(default_factory=list)


def list_tree(uri: str, suffixes: tuple[str, ...] | None = None) -> Listing:
    """The files under a folder/prefix, recursively, sorted, with ``.``/``_`` names skipped (as
    :func:`list_files`), without following symbolic links.

    A link under a local folder is neither listed nor entered, whether it leads to a file or a
    folder: each file is listed once, under its own path, nothing outside the folder is reached, and
    a link that loops back (``self -> .``) cannot repeat files. The folder itself may be a link.
    S3 has no links: a prefix lists as :func:`list_files` does.
    """
    if is_s3(uri):
        return Listing(list_files(uri, suffixes))
    return _retrying(uri, lambda: _walk_local(uri, suffixes))


def _walk_local(uri: str, suffixes: tuple[str, ...] | None) -> Listing:
    _, root = resolve(uri)
    if not os.path.lexists(root):
        return Listing([])
    files: list[str] = []
    links: list[SkippedLink] = []
    folders = [root]  # the root is opened through its link, if it is one
    try:
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    name = entry.name
                    if name.startswith((".", "_")):
                        continue
                    if entry.is_symlink():
                        links.append(SkippedLink(entry.path, os.readlink(entry.path), _leads_to_folder(entry)))
                    elif entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and (suffixes is None or name.lower().endswith(suffixes)):
                        files.append(entry.path)
    except Exception as e:  # noqa: BLE001 - an unreadable folder fails the listing, named
        raise _explain(uri, e) from e
    return Listing(sorted(files), sorted(links, key=lambda link: link.path))


def _leads_to_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a chain of links that loops on itself leads nowhere
        return False


def _check_bucket(uri: str) -> None:
    if not is_s3(uri):
        return
    fs, path = resolve(uri)
    bucket = path.split("/", 1)[0]
    try:
        found = fs.get_file_info(bucket).type
    except Exception as e:  # noqa: BLE001
        raise _explain(uri, e) from e
    if found == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: the bucket {bucket!r} does not exist")


def check_readable(uri: str) -> pafs.FileInfo:
    """Fail before any work if the input is missing or the credentials are refused."""
    _check_bucket(uri)
    i = info(uri)
    if i.type == pafs.FileType.NotFound:
        if is_s3(uri):
            # An S3 "folder" exists only through its keys: look for any key under the prefix.
            fs, path = resolve(uri)
            try:
                found = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
            except Exception as e:  # noqa: BLE001
                raise _explain(uri, e) from e
            if found:
                return pafs.FileInfo(path, pafs.FileType.Directory)
        raise StorageError(f"{uri}: no such file or folder")
    return i


def check_writable(uri: str, probe: bool = True) -> None:
    """Write and delete a small probe object under ``uri`` so that bad credentials, a missing
    bucket or a read-only folder fail before any frame is processed. ``probe=False`` writes nothing
    (a dry run): the bucket must exist, and a local path's nearest existing folder be writable."""
    _check_bucket(uri)
    if not probe:
        if not is_s3(uri):
            near = resolve(uri)[1]
            while not os.path.exists(near) and os.path.dirname(near) != near:
                near = os.path.dirname(near)
            if not os.path.isdir(near) or not os.access(near, os.W_OK | os.X_OK):
                raise StorageError(f"{uri}: {near} is not a writable folder")
        return
    probe_uri = join(uri, f"_probe-{uuid.uuid4().hex}")
    write_bytes(probe_uri, b"segray write probe")
    delete(probe_uri)
