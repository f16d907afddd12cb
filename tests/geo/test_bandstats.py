"""Per-band statistics of GeoTIFF scenes: pooled mean and std over valid pixels equal numpy's, bands by
name and index, a scene lacking a band, folders and S3, and the command line from `segray data
band-stats` to a model artifact's normalisation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run
from helpers.common import DATA_DIR, ROOT, TINY_ENCODER
from helpers.geodata import S2_BANDS, s2_scene, write_geotiff
from helpers.seaweed import SeaweedS3

from segray import storage
from segray.geo.bandstats import BandStats, band_stats, read_band_stats, scene_uris

STRZEGOM = DATA_DIR / "geo" / "strzegom" / "images"


def valid_values(scenes: list[np.ndarray], bands: list[int]) -> np.ndarray:
    """(bands, n): ``bands`` (0-based) of the pixels of all scenes where none of them is nodata (0), pooled."""
    picked = [s[bands] for s in scenes]
    return np.concatenate([p[:, np.all(p != 0, axis=0)] for p in picked], axis=1)


@pytest.fixture
def two_scenes(tmp_path: Path) -> tuple[list[Path], list[np.ndarray]]:
    """A striped 60 x 80 and a tiled 150 x 130 scene (64-pixel tiles) with nodata borders; two inner
    pixels are nodata in one band only (B08 and B06): invalid when that band is picked."""
    a = s2_scene(height=60, width=80, seed=1)
    b = s2_scene(height=150, width=130, border=7, seed=2)
    b[6, 70, 70] = 0
    b[4, 20, 30] = 0
    folder = tmp_path / "scenes"
    folder.mkdir()
    paths = [
        write_geotiff(folder / "a.tif", a, nodata=0, descriptions=S2_BANDS),
        write_geotiff(folder / "b.TIFF", b, nodata=0, descriptions=S2_BANDS, tiled=True, block=64),
    ]
    (folder / "notes.txt").write_text("not a scene")
    return paths, [a, b]


def test_pooled_mean_and_std_equal_numpys_over_valid_pixels(two_scenes: tuple[list[Path], list[np.ndarray]]) -> None:
    paths, scenes = two_scenes
    stats = band_stats([str(p) for p in paths], ["B04", "B03", "B02", "B08"], window_size=32)
    expected = valid_values(scenes, [2, 1, 0, 6])
    assert stats.bands == ["B04", "B03", "B02", "B08"]
    assert stats.pixels == [expected.shape[1]] * 4 and expected.shape[1] == 50 * 70 + 136 * 116 - 1
    np.testing.assert_allclose(stats.mean, expected.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, expected.std(axis=1), rtol=1e-12)
    assert stats.scenes == [str(p) for p in paths]
    # The window size changes how the pixels are grouped, never the result.
    whole = band_stats([str(p) for p in paths], ["B04", "B03", "B02", "B08"], window_size=4096)
    np.testing.assert_allclose(whole.std, stats.std, rtol=1e-12)


def test_a_large_offset_does_not_cost_precision(tmp_path: Path) -> None:
    # Values near 1e9 with a spread of a few units: a raw sum of squares (~1e18 per pixel) in float64
    # loses the variance entirely; merged per-window deviations keep it.
    rng = np.random.default_rng(3)
    data = 1e9 + rng.integers(0, 10, size=(1, 90, 70)).astype(np.float64)
    path = write_geotiff(tmp_path / "offset.tif", data, nodata=-1.0, tiled=True, block=32)
    stats = band_stats([str(path)], window_size=32)
    assert stats.bands == ["band1"]
    np.testing.assert_allclose(stats.mean, [data.mean()], rtol=1e-15)
    np.testing.assert_allclose(stats.std, [(data - data.mean()).std()], rtol=1e-9)


def test_bands_by_name_or_index_and_every_band_by_default(two_scenes: tuple[list[Path], list[np.ndarray]]) -> None:
    paths, scenes = two_scenes
    picked = band_stats([str(p) for p in paths], ["b08", "3"])
    assert picked.bands == ["b08", "3"]
    np.testing.assert_allclose(picked.mean, valid_values(scenes, [6, 2]).mean(axis=1), rtol=1e-12)
    every = band_stats([str(paths[0].parent)])  # the folder: both scenes, the .txt left out
    expected = valid_values(scenes, list(range(10)))
    assert every.bands == list(S2_BANDS) and every.scenes == sorted(str(p) for p in paths)
    assert every.pixels == [50 * 70 + 136 * 116 - 2] * 10  # the B06 pixel is invalid once B06 is picked
    np.testing.assert_allclose(every.std, expected.std(axis=1), rtol=1e-12)


def test_a_scene_lacking_a_band_is_named_before_any_read(tmp_path: Path) -> None:
    full = write_geotiff(tmp_path / "full.tif", s2_scene(), nodata=0, descriptions=S2_BANDS)
    rgb = write_geotiff(tmp_path / "rgb.tif", s2_scene()[[2, 1, 0]], nodata=0, descriptions=("B04", "B03", "B02"))
    with pytest.raises(ValueError, match=r"rgb\.tif: no band B08 \(the file has 3 bands: 1=B04, 2=B03, 3=B02\)"):
        band_stats([str(full), str(rgb)], ["B04", "B08"])
    with pytest.raises(ValueError, match=r"rgb\.tif: no band 4 "):
        band_stats([str(rgb)], ["4"])


def test_no_scenes_or_no_valid_pixels_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no .tif/.tiff scenes there"):
        band_stats([str(tmp_path / "empty")])
    blank = write_geotiff(tmp_path / "blank.tif", np.zeros((2, 8, 8), dtype=np.uint16), nodata=0)
    with pytest.raises(ValueError, match="no valid pixels in 1 scene"):
        band_stats([str(blank)])


def test_scenes_on_s3_are_listed_and_read(
    s3: SeaweedS3, s3_prefix: str, two_scenes: tuple[list[Path], list[np.ndarray]]
) -> None:
    paths, scenes = two_scenes
    values = valid_values(scenes, [2, 6])
    for p in paths:
        storage.write_bytes(f"{s3_prefix}/scenes/{p.name}", p.read_bytes())
    assert scene_uris([f"{s3_prefix}/scenes"]) == [f"{s3_prefix}/scenes/{p.name}" for p in paths]
    stats = band_stats([f"{s3_prefix}/scenes"], ["B04", "B08"], window_size=64)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.std, values.std(axis=1), rtol=1e-12)
    # The JSON goes to S3 and back unchanged.
    from segray.geo.bandstats import write_band_stats

    write_band_stats(stats, f"{s3_prefix}/stats.json")
    assert read_band_stats(f"{s3_prefix}/stats.json") == stats


def test_statistics_files_are_checked_and_bands_picked() -> None:
    stats = BandStats(["B04", "B08"], [1.0, 2.0], [3.0, 4.0], [5, 5], ["a.tif"])
    assert BandStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats
    assert stats.pick(["b08", "B04"]) == BandStats(["B08", "B04"], [2.0, 1.0], [4.0, 3.0], [5, 5], ["a.tif"])
    with pytest.raises(ValueError, match=r"no statistics for band B02 \(they cover B04, B08\)"):
        stats.pick(["B02"])
    with pytest.raises(ValueError, match="s.json: no std list"):
        BandStats.from_json({"bands": ["B04"], "mean": [1.0]}, "s.json")
    with pytest.raises(ValueError, match="one length"):
        BandStats.from_json({"bands": ["B04"], "mean": [1.0, 2.0], "std": [1.0]})


def test_cli_band_stats_to_model_init_to_model_info(
    two_scenes: tuple[list[Path], list[np.ndarray]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths, scenes = two_scenes
    values = valid_values(scenes, [2, 1, 0, 6])
    out = tmp_path / "stats.json"
    code, text = run(
        capsys, "data", "band-stats", str(paths[0].parent), "--bands", "B04,B03,B02,B08", "--output", str(out)
    )
    assert code == 0, text
    assert "band mean std valid pixels" in text and f"B08 {values[3].mean():.4f} {values[3].std():.4f}" in text
    written = json.loads(out.read_text())
    assert written["bands"] == ["B04", "B03", "B02", "B08"] and written["pixels"] == [values.shape[1]] * 4
    np.testing.assert_allclose(written["mean"], values.mean(axis=1), rtol=1e-12)

    init = ["model", "init", "--encoder", TINY_ENCODER, "--height", "64", "--width", "64"]
    code, text = run(capsys, *init, "--band-stats", str(out), str(tmp_path / "m"))
    assert code == 0 and "input: 4 bands B04, B03, B02, B08" in text, text
    code, text = run(capsys, "model", "info", "--json", str(tmp_path / "m"))
    pre = json.loads(text)["preprocessing"]
    assert (pre["bands"], pre["mean"], pre["std"]) == (written["bands"], written["mean"], written["std"])

    # --bands picks and orders some of the file's bands; --band-mean/--band-std cannot join it.
    code, text = run(capsys, *init, "--band-stats", str(out), "--bands", "B08,B04", str(tmp_path / "m2"))
    assert code == 0, text
    code, text = run(capsys, "model", "info", "--json", str(tmp_path / "m2"))
    pre = json.loads(text)["preprocessing"]
    assert pre["bands"] == ["B08", "B04"] and pre["std"] == [written["std"][3], written["std"][0]]
    code, text = run(capsys, *init, "--band-stats", str(out), "--band-mean", "1,2,3,4", str(tmp_path / "m3"))
    assert code == 2 and "leave out --band-mean/--band-std" in text
    code, text = run(capsys, *init, "--band-stats", str(out), "--bands", "B11", str(tmp_path / "m4"))
    assert code == 2 and "no statistics for band B11" in text
    assert not (tmp_path / "m3").exists() and not (tmp_path / "m4").exists()


def test_the_data_commands_start_without_gdal() -> None:
    code = "import sys, segray.datasets.cli; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    modules = set(loaded.stdout.split())
    assert "segray.datasets.cli" in modules and "rasterio" not in modules


@pytest.mark.slow
def test_the_strzegom_sentinel2_scenes() -> None:
    scenes = sorted(STRZEGOM.glob("*.tif")) if STRZEGOM.is_dir() else []
    if not scenes:
        pytest.skip(f"the Strzegom Sentinel-2 scenes are not in {STRZEGOM} (real data, kept outside the repository)")
    stats = band_stats([str(STRZEGOM)])
    assert len(stats.bands) == 10 and stats.bands[0] == "B02" and len(stats.scenes) == len(scenes)
    assert all(0 < m < 10_000 for m in stats.mean) and all(s > 0 for s in stats.std)
    assert all(0 < n <= 401 * 401 * len(scenes) for n in stats.pixels)
