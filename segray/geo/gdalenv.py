"""GDAL's view of segray's storage: a URI as a GDAL path, and an ``rasterio.Env`` whose S3 settings
come from the same AWS environment variables that :mod:`segray.storage` reads.

GDAL reads S3 through its own ``/vsis3/`` driver (ranged GETs of the blocks a window needs), not
through segray's s3fs filesystem: a window of a large COG costs a few requests instead of a download
of the whole object. Its settings differ in name from the AWS SDK's (``AWS_S3_ENDPOINT`` is a host,
not a URL; plain HTTP and path-style addressing are separate switches), so they are translated here.
Credentials reach GDAL through a rasterio session object and are never logged or put in a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import rasterio
from rasterio.session import Session

from segray.storage import StorageError, is_s3, split_s3

_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def gdal_path(uri: str) -> str:
    """``s3://bucket/key`` -> ``/vsis3/bucket/key``; ``file://`` and local paths -> an absolute path."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if not key:
            raise StorageError(f"{uri}: names a bucket, not a file")
        return f"/vsis3/{bucket}/{key}"
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported scheme for a raster (use a local path, file:// or s3://)")
    return str(Path(uri).expanduser().absolute())


def s3_options(environ: dict[str, str] | None = None) -> dict[str, str]:
    """GDAL configuration options for S3, without credentials: the endpoint of ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL`` (scheme stripped; ``http://`` turns HTTPS off; a custom endpoint is
    addressed path-style, as MinIO and SeaweedFS expect), and the region."""
    env = os.environ if environ is None else environ
    options: dict[str, str] = {
        # Opening a file must not list its folder looking for side-car files (one LIST per open on S3).
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parts.netloc + parts.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


class EnvironmentCredentials(Session):
    """The AWS credentials of the process environment, handed to GDAL when an Env is entered.

    rasterio refuses credentials as plain Env options and would otherwise need boto3; a session
    object is its supported way in. Its repr names no secret. Without credentials in the
    environment GDAL falls back to its own chain (instance profile, ``~/.aws``).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._credentials = {k: env[k] for k in _CREDENTIAL_VARS if env.get(k)}

    @classmethod
    def hascreds(cls, config: dict[str, Any]) -> bool:
        return "AWS_ACCESS_KEY_ID" in config and "AWS_SECRET_ACCESS_KEY" in config

    @property
    def credentials(self) -> dict[str, str]:
        return dict(self._credentials)

    def get_credential_options(self) -> dict[str, str]:
        return dict(self._credentials)

    def __repr__(self) -> str:
        return f"EnvironmentCredentials(keys={sorted(self._credentials)})"


def gdal_env(environ: dict[str, str] | None = None) -> Any:  # rasterio.Env (rasterio ships no types)
    """A ``rasterio.Env`` for reading and writing segray URIs: S3 settings and credentials from the
    environment (read now, in this process: a Ray worker builds its own from its own environment)."""
    return rasterio.Env(session=EnvironmentCredentials(environ), **s3_options(environ))
