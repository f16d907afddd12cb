"""storage: URI resolution, atomic local writes, listing, the S3 client, and real S3 (SeaweedFS) errors."""

from __future__ import annotations

import ast
import os
import threading
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from helpers.seaweed import SeaweedS3

from segray import storage
from segray.storage import StorageError

# --- resolve / join ------------------------------------------------------------------------------


def test_resolve_absolute_path(tmp_path: Path) -> None:
    fs, path = storage.resolve(str(tmp_path / "a" / "b.png"))
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "a" / "b.png")


def test_resolve_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fs, path = storage.resolve("frames/x.png")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "frames" / "x.png")


def test_resolve_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert storage.resolve("~/data")[1] == str(tmp_path / "data")


def test_resolve_file_uri(tmp_path: Path) -> None:
    fs, path = storage.resolve(f"file://{tmp_path}/x/y.json")
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == f"{tmp_path}/x/y.json"


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("s3://bucket/key/file.png", "bucket/key/file.png"),
        ("s3://bucket/prefix/", "bucket/prefix"),
        ("s3://bucket", "bucket"),
        ("s3a://bucket/k", "bucket/k"),
    ],
)
def test_resolve_s3(uri: str, path: str) -> None:
    fs, got = storage.resolve(uri)
    assert got == path
    assert not isinstance(fs, pafs.LocalFileSystem)
    assert storage.is_s3(uri)


@pytest.mark.parametrize("uri", ["s3://", "s3:///"])
def test_resolve_s3_without_bucket(uri: str) -> None:
    with pytest.raises(StorageError, match="no bucket named"):
        storage.resolve(uri)


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x.png", "hdfs://nn/x"])
def test_resolve_unsupported_scheme(uri: str) -> None:
    with pytest.raises(StorageError, match="unsupported scheme") as ei:
        storage.resolve(uri)
    assert str(ei.value).startswith(uri)


def test_is_s3() -> None:
    assert storage.is_s3("s3://b/k") and storage.is_s3("s3a://b/k")
    assert not storage.is_s3("/data/s3://x") and not storage.is_s3("file:///x")


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://b/p", ("a", "c.png"), "s3://b/p/a/c.png"),
        ("s3://b/p/", ("/a/", "/c.png"), "s3://b/p/a/c.png"),
        ("/data/out", ("masks/x.png",), "/data/out/masks/x.png"),
        ("/data/out/", (), "/data/out"),
        ("/data/out", ("", "x"), "/data/out/x"),
        ("file:///data", ("x",), "file:///data/x"),
    ],
)
def test_join(base: str, parts: tuple[str, ...], expected: str) -> None:
    assert storage.join(base, *parts) == expected


# --- local writes and listing ----------------------------------------------------------------


def test_write_bytes_local_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "x.bin"
    storage.write_bytes(str(target), b"first")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]


def test_write_bytes_local_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    storage.write_bytes(str(target), b"a much longer first version")
    storage.write_bytes(f"file://{target}", b"v2")
    assert target.read_bytes() == b"v2"
    assert storage.read_bytes(str(target)) == b"v2"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no .tmp-* left behind


def test_write_empty_bytes(tmp_path: Path) -> None:
    storage.write_bytes(str(tmp_path / "empty"), b"")
    assert (tmp_path / "empty").read_bytes() == b""


def test_read_missing_local_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(StorageError, match="no such file or folder") as ei:
        storage.read_bytes(str(missing))
    assert str(missing) in str(ei.value)


def test_exists_and_delete_local(tmp_path: Path) -> None:
    f = tmp_path / "f"
    assert not storage.exists(str(f))
    storage.write_bytes(str(f), b"x")
    assert storage.exists(str(f))
    storage.delete(str(f))
    assert not f.exists()
    storage.delete(str(f))  # deleting a missing file is not an error


def make_tree(root: Path) -> None:
    for rel in [
        "b/2.png",
        "a/1.PNG",
        "a/z/3.jpg",
        "top.png",
        "notes.txt",
        "a/.hidden.png",
        "a/_SUCCESS",
        "_meta.png",
        ".tmp-123-top.png",
    ]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_list_files_local_recursive_sorted_skips_hidden(tmp_path: Path) -> None:
    make_tree(tmp_path)
    got = storage.list_files(str(tmp_path))
    rel = [os.path.relpath(p, tmp_path) for p in got]
    assert rel == ["a/1.PNG", "a/z/3.jpg", "b/2.png", "notes.txt", "top.png"]
    assert got == sorted(got)
    assert all(os.path.isabs(p) for p in got)


def test_list_files_suffix_filter_case_insensitive(tmp_path: Path) -> None:
    make_tree(tmp_path)
    got = storage.list_files(f"file://{tmp_path}", (".png",))
    assert [os.path.relpath(p, tmp_path) for p in got] == ["a/1.PNG", "b/2.png", "top.png"]
    got = storage.list_files(str(tmp_path), (".jpg", ".txt"))
    assert [os.path.relpath(p, tmp_path) for p in got] == ["a/z/3.jpg", "notes.txt"]


def test_list_files_missing_folder_is_empty(tmp_path: Path) -> None:
    assert storage.list_files(str(tmp_path / "absent")) == []


def test_check_readable_local(tmp_path: Path) -> None:
    storage.write_bytes(str(tmp_path / "x"), b"1")
    assert storage.check_readable(str(tmp_path)).type == pafs.FileType.Directory
    assert storage.check_readable(str(tmp_path / "x")).type == pafs.FileType.File
    with pytest.raises(StorageError, match="no such file or folder") as ei:
        storage.check_readable(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(ei.value)


def test_check_writable_local_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    storage.check_writable(str(out))
    assert out.is_dir()
    assert list(out.iterdir()) == []


def test_check_writable_local_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError) as ei:
        storage.check_writable(str(tmp_path / "file" / "out"))
    assert str(tmp_path / "file" / "out") in str(ei.value)


# --- S3 (SeaweedFS) --------------------------------------------------------------------------


def test_s3_write_read_round_trip(s3_prefix: str) -> None:
    uri = f"{s3_prefix}/dir/obj.bin"
    data = bytes(range(256)) * 100
    assert not storage.exists(uri)
    storage.write_bytes(uri, data)
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == data
    storage.write_bytes(uri, b"v2")
    assert storage.read_bytes(uri) == b"v2"
    assert storage.info(uri).size == 2
    storage.delete(uri)
    assert not storage.exists(uri)


def test_s3_write_leaves_only_the_object(s3_prefix: str) -> None:
    storage.write_bytes(f"{s3_prefix}/only.txt", b"x")
    fs, path = storage.resolve(s3_prefix)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    assert [i.path for i in infos] == [f"{path}/only.txt"]


def test_s3_list_files(s3_prefix: str) -> None:
    for rel in ["b/2.png", "a/1.PNG", "a/z/3.jpg", "notes.txt", "a/.hidden.png", "a/_SUCCESS", "_x.png"]:
        storage.write_bytes(f"{s3_prefix}/{rel}", b"x")
    root = storage.resolve(s3_prefix)[1]
    got = storage.list_files(s3_prefix)
    assert got == [f"{root}/{r}" for r in ["a/1.PNG", "a/z/3.jpg", "b/2.png", "notes.txt"]]
    assert storage.list_files(s3_prefix + "/", (".png",)) == [f"{root}/a/1.PNG", f"{root}/b/2.png"]
    assert storage.list_files(f"{s3_prefix}/absent") == []


def test_s3_list_files_on_an_object_says_so(s3_prefix: str) -> None:
    storage.write_bytes(f"{s3_prefix}/stats", b"x")
    with pytest.raises(storage.StorageError, match=r"/stats: is a file, not a folder"):
        storage.list_files(f"{s3_prefix}/stats")


def test_s3_list_files_while_the_prefix_is_being_written(s3_prefix: str) -> None:
    """Listing a prefix whose first objects are arriving gives a (possibly empty) list, never an error."""
    prefixes = [f"{s3_prefix}/race/p{i}" for i in range(12)]
    errors: list[BaseException] = []

    def lister() -> None:
        for _ in range(3):
            for p in prefixes:
                try:
                    storage.list_files(p)
                except BaseException as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)

    t = threading.Thread(target=lister)
    t.start()
    for p in prefixes:
        for j in range(3):
            storage.write_bytes(f"{p}/part-{j}.parquet", b"x")
    t.join()
    assert errors == []
    assert all(len(storage.list_files(p)) == 3 for p in prefixes)


def test_list_files_on_a_local_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(storage.StorageError, match=r"f.png: is a file, not a folder"):
        storage.list_files(str(tmp_path / "f.png"))


def test_s3_check_readable(s3_prefix: str) -> None:
    storage.write_bytes(f"{s3_prefix}/frames/f.png", b"x")
    assert storage.check_readable(f"{s3_prefix}/frames/f.png").type == pafs.FileType.File
    # a "folder" that exists only through its keys
    assert storage.check_readable(f"{s3_prefix}/frames").type == pafs.FileType.Directory
    assert storage.check_readable(f"{s3_prefix}/frames/").type == pafs.FileType.Directory


def test_s3_check_readable_missing_key(s3_prefix: str) -> None:
    uri = f"{s3_prefix}/missing/frame.png"
    with pytest.raises(StorageError, match="no such file or folder") as ei:
        storage.check_readable(uri)
    assert str(ei.value).startswith(uri)
    with pytest.raises(StorageError, match="no such file or folder") as ei:
        storage.read_bytes(uri)
    assert str(ei.value).startswith(uri)


def test_s3_check_readable_missing_bucket(s3: SeaweedS3) -> None:
    bucket = f"absent-{uuid.uuid4().hex[:8]}"
    uri = f"s3://{bucket}/frames/"
    with pytest.raises(StorageError, match="does not exist") as ei:
        storage.check_readable(uri)
    assert str(ei.value).startswith(uri)
    assert repr(bucket) in str(ei.value)


def test_s3_check_writable(s3_prefix: str) -> None:
    storage.check_writable(f"{s3_prefix}/out")
    assert storage.list_files(s3_prefix) == []  # the probe was deleted
    fs, path = storage.resolve(s3_prefix)
    assert fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)) == []


def test_s3_check_writable_missing_bucket(s3: SeaweedS3) -> None:
    uri = f"s3://absent-{uuid.uuid4().hex[:8]}/out"
    with pytest.raises(StorageError, match="bucket .* does not exist") as ei:
        storage.check_writable(uri)
    assert str(ei.value).startswith(uri)


def _whole_message(e: BaseException) -> str:
    """The error and everything chained to it, as a user might see in a traceback."""
    parts = []
    cur: BaseException | None = e
    while cur is not None:
        parts.append(f"{type(cur).__name__}: {cur} {cur.args!r}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


WRONG_SECRETS = ["wrong", "Wr0ng-s3cret-Value-7f3a9c"]


@pytest.mark.parametrize("wrong", WRONG_SECRETS)
def test_s3_wrong_credentials_access_denied_without_secret(
    s3: SeaweedS3, s3_prefix: str, monkeypatch: pytest.MonkeyPatch, wrong: str
) -> None:
    key = f"{s3_prefix}/frames/f.png"
    storage.write_bytes(key, b"frame")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    calls = {
        "check_readable_key": lambda: storage.check_readable(key),
        "check_readable_prefix": lambda: storage.check_readable(f"{s3_prefix}/frames"),
        "check_writable": lambda: storage.check_writable(f"{s3_prefix}/out"),
        "read_bytes": lambda: storage.read_bytes(key),
        "write_bytes": lambda: storage.write_bytes(f"{s3_prefix}/new.bin", b"x"),
        "list_files": lambda: storage.list_files(s3_prefix),
        "exists": lambda: storage.exists(key),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as ei:
            call()
        msg = str(ei.value)
        assert "access denied" in msg, (name, msg)
        assert msg.startswith("s3://"), (name, msg)
        full = _whole_message(ei.value)
        assert wrong not in full, name
        assert s3.secret_key not in full, name
    # the right credentials again: a fresh client, and the object was never touched
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    assert storage.read_bytes(key) == b"frame"
    assert not storage.exists(f"{s3_prefix}/new.bin")


def test_s3_wrong_access_key(s3: SeaweedS3, s3_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(StorageError, match="access denied") as ei:
        storage.check_readable(f"{s3_prefix}/x")
    assert s3.secret_key not in _whole_message(ei.value)


# --- read_listed ---------------------------------------------------------------------------------


def test_read_listed_lists_again_when_a_listed_file_is_gone(tmp_path: Path) -> None:
    """A compaction that replaces the listed parts before they are read makes the reader list again."""
    (tmp_path / "part-1").write_bytes(b"1")
    (tmp_path / "part-2").write_bytes(b"2")
    listings: list[list[str]] = []

    def listing() -> list[str]:
        paths = storage.list_files(str(tmp_path))
        listings.append(paths)
        if len(listings) == 1:  # both parts replaced by their compacted copy after the first listing
            (tmp_path / "part-all").write_bytes(b"12")
            (tmp_path / "part-1").unlink()
            (tmp_path / "part-2").unlink()
        return paths

    got = storage.read_listed(listing, lambda paths: [Path(p).read_bytes() for p in paths])
    assert got == [b"12"]
    assert [[Path(p).name for p in ps] for ps in listings] == [["part-1", "part-2"], ["part-all"]]


def test_read_listed_gives_up_after_its_attempts(tmp_path: Path) -> None:
    listings: list[int] = []

    def listing() -> list[str]:
        listings.append(1)
        return [str(tmp_path / "always-gone")]

    with pytest.raises(FileNotFoundError):
        storage.read_listed(listing, lambda paths: [Path(p).read_bytes() for p in paths], attempts=2)
    assert len(listings) == 2


# --- the S3 client -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://b/k", ("b", "k")), ("s3://b/out/_lease.json", ("b", "out/_lease.json")), ("s3a://b", ("b", ""))],
)
def test_split_s3(uri: str, expected: tuple[str, str]) -> None:
    assert storage.split_s3(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "/tmp/x", "gs://b/k"])
def test_split_s3_refuses_what_names_no_bucket(uri: str) -> None:
    with pytest.raises(StorageError, match=uri):
        storage.split_s3(uri)


def test_s3_client_talks_to_the_environments_endpoint(s3: SeaweedS3, s3_prefix: str) -> None:
    """The client reaches SeaweedFS only through AWS_ENDPOINT_URL, sees what the filesystem wrote,
    makes conditional writes, and is one client per endpoint, region and credentials."""
    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
    storage.write_bytes(f"{s3_prefix}/a.txt", b"hello")
    bucket, key = storage.split_s3(f"{s3_prefix}/a.txt")
    client = storage.s3_client()
    assert client.meta.endpoint_url == s3.endpoint
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello"
    assert storage.s3_client() is client
    with pytest.raises(Exception) as ei:  # noqa: B017 - botocore's error class is generated at run time
        client.put_object(Bucket=bucket, Key=key, Body=b"again", IfNoneMatch="*")
    assert storage.s3_error_code(ei.value) in {"PreconditionFailed", "412"}
    assert storage.read_bytes(f"{s3_prefix}/a.txt") == b"hello"
    assert storage.s3_error_code(ValueError("not S3")) is None


def test_s3_client_follows_the_endpoint_and_credentials(
    s3: SeaweedS3, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = storage.s3_client()
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    elsewhere = storage.s3_client()
    assert elsewhere is not client and elsewhere.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "Wr0ng-s3cret")
    refused = storage.s3_client()
    assert refused is not client
    bucket, key = storage.split_s3(f"{s3_prefix}/x")
    with pytest.raises(Exception) as ei:  # noqa: B017 - botocore's error class is generated at run time
        refused.put_object(Bucket=bucket, Key=key, Body=b"x")
    assert storage.s3_error_code(ei.value) in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    assert storage.s3_client() is client
    assert not storage.exists(f"{s3_prefix}/x")


# --- one module builds S3 clients ----------------------------------------------------------------

S3_LIBRARIES = {"botocore", "boto3", "s3fs"}


def s3_imports(source: str, name: str) -> list[str]:
    """``name:line module`` for every import of an S3 library in ``source``, lazy imports included."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{name}:{node.lineno} {m}" for m in modules if m.split(".")[0] in S3_LIBRARIES]
    return found


def test_only_storage_imports_an_s3_library() -> None:
    root = Path(storage.__file__).resolve().parents[1]
    paths = sorted((root / "segray").rglob("*.py"))
    assert len(paths) > 50  # the walk found the package
    found = {path.relative_to(root).as_posix(): s3_imports(path.read_text(), path.name) for path in paths}
    assert found["segray/storage.py"]  # the scan sees the imports that are there
    offenders = [hit for path, hits in found.items() if path != "segray/storage.py" for hit in hits]
    assert offenders == [], "only segray/storage.py builds S3 clients: " + ", ".join(offenders)


def test_the_scan_finds_lazy_and_from_imports() -> None:
    source = "import os\nfrom botocore.exceptions import ClientError\n\ndef f():\n    import s3fs, boto3.session\n"
    assert s3_imports(source, "m.py") == ["m.py:2 botocore.exceptions", "m.py:5 s3fs", "m.py:5 boto3.session"]
    assert s3_imports("from . import botocore\nimport s3fsx\n", "m.py") == []
