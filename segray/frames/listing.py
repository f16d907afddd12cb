"""Which frames a job sees: a folder/prefix listed recursively (symbolic links under a folder are not
followed), or a manifest (Parquet/CSV).

Each frame gets a ``relative_path``: its path under the input root (or the manifest's own
``relative_path`` column, else the URI's path). Output keys are derived from it, so it is checked
here to stay inside the output prefix: no ``..``, no absolute paths, no control characters.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from segray import storage

log = logging.getLogger("segray.listing")

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


def list_folder(input_uri: str, sidecars: dict[str, Callable[[str], list[str]]] | None = None) -> pa.Table:
    """All image files under a folder or S3 prefix: columns ``uri``, ``relative_path``.

    Symbolic links under a local folder are not followed (:func:`segray.storage.list_tree`): each
    frame is listed once, under its own path, and nothing outside the folder is read. The links that
    would have led to frames are logged once, with the way to label what they point at.

    ``sidecars`` maps a column name to the names a frame's companion file may have, best first
    (e.g. world files): the column holds the URI of the first one the same listing holds, or null.
    One listing answers for every frame, where looking beside each frame costs a request per name.
    """
    _, root = storage.resolve(input_uri)
    listing = storage.list_tree(input_uri, None if sidecars else IMAGE_SUFFIXES)
    listed = listing.paths
    paths = [p for p in listed if p.lower().endswith(IMAGE_SUFFIXES)] if sidecars else listed
    rels = [posixpath.relpath(p, root) for p in paths]
    cols: dict[str, list[Any]] = {"uri": [uri_of(input_uri, p) for p in paths], "relative_path": rels}
    present = set(listed)
    for column, names in (sidecars or {}).items():
        firsts = (next((c for c in names(p) if c in present), None) for p in paths)
        cols[column] = [None if c is None else uri_of(input_uri, c) for c in firsts]
    if listing.links:
        _report_links(input_uri, root, listing.links, paths, sidecars)
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})


def _report_links(
    input_uri: str,
    root: str,
    links: list[storage.SkippedLink],
    frames: list[str],
    sidecars: dict[str, Callable[[str], list[str]]] | None,
) -> None:
    """One warning for the links that lead to frames, folders or a listed frame's companion file."""

    def leads_to_frames(link: storage.SkippedLink) -> bool:
        return link.folder or link.path.lower().endswith(IMAGE_SUFFIXES)

    companions: set[str] = set()
    if sidecars and not all(leads_to_frames(link) for link in links):
        # The names a listed frame's companion file (a world file, say) may have.
        companions = {c for names in sidecars.values() for p in frames for c in names(p)}
    skipped = [link for link in links if leads_to_frames(link) or link.path in companions]
    if not skipped:
        return
    examples = ", ".join(f"{posixpath.relpath(link.path, root)} -> {link.target}" for link in skipped[:2])
    log.warning(
        "%s: %d symbolic link%s not followed (%s%s): links under the input are skipped, so each frame is "
        "labelled once and nothing outside the input is read. To label what a link points at, point --input "
        "at its target or list the files in a manifest",
        input_uri,
        len(skipped),
        "" if len(skipped) == 1 else "s",
        examples,
        ", ..." if len(skipped) > 2 else "",
    )


def relative_path_from_uri(uri: str) -> str:
    """A manifest row without a relative_path: the URI's path (bucket included, scheme dropped)."""
    return uri.split("://", 1)[1] if "://" in uri else uri.lstrip("/")


def resolve_manifest_uri(manifest_uri: str, uri: str) -> str:
    """Relative URIs in a manifest are relative to the manifest's own folder."""
    if "://" in uri or uri.startswith("/"):
        return uri
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return storage.join(base, uri)


def relative_paths_from_uris(uris: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`relative_path_from_uri` over a string column, in Arrow (no Python string per row)."""
    with_scheme = pc.sum(pc.match_substring(uris, "://")).as_py() or 0
    if with_scheme == 0:
        return pc.utf8_ltrim(uris, "/")
    after_scheme = pc.replace_substring_regex(uris, r"^(?s:.*?)://", "", max_replacements=1)
    if with_scheme == len(uris):
        return after_scheme
    return pc.if_else(pc.match_substring(uris, "://"), after_scheme, pc.utf8_ltrim(uris, "/"))


def resolve_manifest_uris(manifest_uri: str, uris: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`resolve_manifest_uri` over a string column, in Arrow (no Python string per row). Each
    step that no row needs is skipped: a large manifest is one string copy, not several."""
    kept = pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "/"))
    n_kept = pc.sum(kept).as_py() or 0
    if n_kept == len(uris):
        return uris
    base = storage.join(manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else ".")
    rest = uris  # storage.join strips the part's slashes; a kept URI is not joined
    if pc.any(pc.ends_with(uris, "/")).as_py():
        rest = pc.utf8_rtrim(uris, "/")
    joined = pc.binary_join_element_wise(pa.scalar(base + "/"), rest, "")
    empty = pc.equal(rest, "")
    if pc.any(empty).as_py():
        joined = pc.if_else(empty, pa.scalar(base), joined)
    return joined if n_kept == 0 else pc.if_else(kept, uris, joined)
