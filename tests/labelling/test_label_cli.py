"""``segray label --dry-run``/``--limit``, ``segray runs`` and ``segray model info`` as a user runs
them, on the suite's Ray and SeaweedFS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.cli import run
from helpers.frames import write_frames

from segray import storage
from segray.outputs.read import read_stats

pytestmark = pytest.mark.usefixtures("ray_session")


def every_file(uri: str) -> list[str]:
    """Every file under ``uri``, the ``_``-prefixed ones (``_lease.json``, ``_runs/``) included."""
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


def frames_with_a_corrupt_one(folder: Path) -> Path:
    """Six frames, then ``seq1/zz-corrupt.png`` (not an image), last in listing order."""
    write_frames(folder, [(60, 80)] * 6)
    (folder / "seq1" / "zz-corrupt.png").write_bytes(b"not an image at all")
    return folder


def test_dry_run_then_limit_then_the_rest(
    tiny_model: str, s3_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = str(frames_with_a_corrupt_one(tmp_path / "frames"))
    out = f"{s3_prefix}/labels"
    label = ["label", "--model", tiny_model, "--input", frames, "--output", out]

    code, text = run(capsys, *label, "--dry-run")
    assert code == 0, text
    assert "frames listed: 7; already labelled by this model: 0; would label: 7" in text
    assert "first to label: seq0/f0000.png, seq0/f0002.png" in text and "output lease: free" in text
    assert every_file(out) == [], "a dry run writes nothing (its write probe is deleted)"

    code, text = run(capsys, *label, "--limit", "3")
    assert code == 0, text
    assert "3 labelled, 0 failed, 0 already done, 4 left by --limit" in text
    assert read_stats(out).num_rows == 3

    code, text = run(capsys, *label, "--dry-run", "--limit", "2")
    assert code == 0, text
    assert "frames listed: 7; already labelled by this model: 3; would label: 2; --limit 2 leaves 2" in text

    code, text = run(capsys, *label)
    assert code == 0, text
    assert "3 labelled, 1 failed, 3 already done," in text  # the corrupt frame is recorded, not dropped
    stats = read_stats(out)
    assert stats.num_rows == 6 and len(set(stats.column("relative_path").to_pylist())) == 6
    errors = storage.list_files(f"{out}/errors", (".parquet",))
    assert len(errors) == 1

    code, text = run(capsys, "runs", out)
    assert code == 0, text
    assert "frames in" in text and "status" in text
    assert " 7 3 0 0 " in text and "limited (4 left)" in text  # frames in, labelled, failed, skipped
    assert " 7 3 1 3 " in text and " complete" in text
    assert "6 frames (one row each)" in text


def test_limit_keeps_the_errors_of_frames_it_did_not_reach(
    tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = str(frames_with_a_corrupt_one(tmp_path / "frames"))
    out = str(tmp_path / "labels")
    label = ["label", "--model", tiny_model, "--input", frames, "--output", out]
    assert run(capsys, *label)[0] == 0  # 6 labelled, the corrupt frame recorded in errors/
    (tmp_path / "frames" / "seq0" / "new.png").write_bytes((tmp_path / "frames" / "seq0" / "f0000.png").read_bytes())
    code, text = run(capsys, *label, "--limit", "1")  # labels seq0/new.png only
    assert code == 0 and "1 labelled, 0 failed, 6 already done, 1 left by --limit" in text, text
    import pyarrow.dataset as pads

    errors = pads.dataset(f"{out}/errors", format="parquet").to_table()
    assert errors.column("relative_path").to_pylist() == ["seq1/zz-corrupt.png"]


def test_bad_limit_is_refused_naming_it(tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_frames(tmp_path / "frames", [(60, 80)])
    code, text = run(
        capsys, "label", "--model", tiny_model, "--input", str(tmp_path / "frames"), "--output", str(tmp_path / "o"),
        "--limit", "0",
    )  # fmt: skip
    assert code == 2 and "limit must be >= 1, got 0" in text


def test_model_info_reads_an_s3_artifact_without_its_weights(
    tiny_model: str, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from segray.models.artifact import ModelArtifact

    art = ModelArtifact.load(tiny_model)
    uri = f"{s3_prefix}/models/tiny"
    art.save(uri)
    params = sum(p.numel() for p in art.model.state_dict().values())
    code, text = run(capsys, "model", "info", uri)
    assert code == 0, text
    assert f"model {art.model_id} " in text and "architecture unet, encoder tu-mobilenetv3_small_050" in text
    assert f"{params:,} parameters" in text and art.weights_sha256 in text
    assert "input 64x64 (HxW)" in text and "8 car #400080" in text and "11 void #000000 (ignored)" in text
    assert "training recipe: none (not made by segray train)" in text
    code, text = run(capsys, "model", "info", uri, "--json")
    info = json.loads(text)
    assert info["model_id"] == art.model_id and info["weights"]["parameters"] == params
    assert len(info["label_map"]["classes"]) == 11 and info["recipe"] is None
    code, text = run(capsys, "model", "info", f"{s3_prefix}/models/none")
    assert code == 2 and "no such model artifact" in text


def test_compact_beside_a_run_says_why_it_stops_and_changes_nothing(
    tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segray.outputs.lease import OutputLease

    write_frames(tmp_path / "frames", [(60, 80)] * 2)
    out = str(tmp_path / "labels")
    assert run(capsys, "label", "--model", tiny_model, "--input", str(tmp_path / "frames"), "--output", out)[0] == 0
    before = sorted(every_file(out))
    with OutputLease(out, "run-busy"):
        code, text = run(capsys, "compact", out)
        assert sorted(p for p in every_file(out) if not p.endswith("_lease.json")) == sorted(
            p for p in before if not p.endswith("_lease.json")
        )
    assert code == 2, text
    assert f"{out} is being written by run run-busy (label, host" in text
    assert "would label frames twice" not in text
    assert "Compaction rewrites stats/ and instances/ and then deletes the parts it read" in text
    assert "it stops here and changes nothing" in text and f"Run `segray compact {out}` once that run ends" in text
    assert "its lease lapses 60 s after its last heartbeat" in text


def folder_state(folder: Path) -> list[tuple[str, int]]:
    """Every file and folder under ``folder`` (``_`` ones included) with its modification time: a
    file written and deleted again (a write probe) still changes its folder's time."""
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")])


def test_a_dry_run_leaves_the_output_exactly_as_it_was(
    tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = str(frames_with_a_corrupt_one(tmp_path / "frames"))
    existing = tmp_path / "existing"
    (existing / "_runs").mkdir(parents=True)
    (existing / "_runs" / "kept.json").write_text("{}")
    (existing / "notes.txt").write_text("not ours")
    before = folder_state(existing)
    for out in (existing, tmp_path / "new" / "labels"):
        code, text = run(capsys, "label", "--model", tiny_model, "--input", frames, "--output", str(out), "--dry-run")
        assert code == 0 and "would label: 7" in text and "output lease: free" in text, text
    assert folder_state(existing) == before
    assert not (tmp_path / "new").exists(), "a dry run makes no folder, no lease file and no lock file"
    (tmp_path / "a-file").write_text("")
    out = str(tmp_path / "a-file" / "out")
    code, text = run(capsys, "label", "--model", tiny_model, "--input", frames, "--output", out, "--dry-run")
    assert code == 2 and "is not a writable folder" in text, text  # the output is still checked, without writing


def test_runs_on_a_path_with_nothing_there_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "no" / "such" / "output")
    code, text = run(capsys, "runs", missing)
    assert code == 2 and f"segray: error: {missing}: no such file or folder" in text and "lease:" not in text
