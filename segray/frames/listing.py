"""Which frames a job sees: a folder/prefix listed recursively, or a manifest (Parquet/CSV).

Each frame gets a ``relative_path``: its path under the input root (or the manifest's own
``relative_path`` column, else the URI's path). Output keys are derived from it, so it is checked
here to stay inside the output prefix: no ``..``, no absolute paths, no control characters.
"""

from __future__ import annotations

import posixpath
import re

import pyarrow as pa

from segray import storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST_SUFFIXES = (".parquet", ".csv")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def is_manifest(uri: str) -> bool:
    return uri.lower().endswith(MANIFEST_SUFFIXES)


def safe_relative_path(path: str) -> str:
    """Normalise a relative path, refusing anything that could escape the output prefix."""
    if _BAD_CHARS.search(path):
        raise ValueError(f"relative path {path!r} contains control characters or backslashes")
    if path.startswith("/"):
        raise ValueError(f"relative path {path!r} is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"relative path {path!r} is empty or climbs out of its root ('..')")
    return "/".join(parts)


def uri_of(input_uri: str, fs_path: str) -> str:
    return f"s3://{fs_path}" if storage.is_s3(input_uri) else fs_path


def list_folder(input_uri: str) -> pa.Table:
    """All image files under a folder or S3 prefix: columns ``uri``, ``relative_path``."""
    _, root = storage.resolve(input_uri)
    paths = storage.list_files(input_uri, IMAGE_SUFFIXES)
    rels = [posixpath.relpath(p, root) for p in paths]
    return pa.table({"uri": [uri_of(input_uri, p) for p in paths], "relative_path": rels})


def relative_path_from_uri(uri: str) -> str:
    """A manifest row without a relative_path: the URI's path (bucket included, scheme dropped)."""
    return uri.split("://", 1)[1] if "://" in uri else uri.lstrip("/")


def resolve_manifest_uri(manifest_uri: str, uri: str) -> str:
    """Relative URIs in a manifest are relative to the manifest's own folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return storage.join(base, uri)
