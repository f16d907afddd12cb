"""Render each labelled scene beside its class mask, from the COG masks a labelling run wrote.

One picture per scene: the scene in colour (three of its bands as red, green and blue, each
stretched between its 2nd and 98th percentile of valid pixels), the mask in the label map's colours
(nodata transparent), a legend of the classes present, and the scene's CRS coordinates (km) on both
axes. Run from the repository root, e.g. for the Strzegom walk-through in docs/landcover.md:

    python docs/scene_figures.py --scenes ../shared/data/geo/strzegom/images --labels out/strzegom \\
        --model runs/strzegom-unet-cpu/model --rgb B04,B03,B02 --output docs/images/strzegom
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.patches import Patch

from segray.geo.scene import scene_info as read_scene_info
from segray.geo.scene import select_bands
from segray.models.artifact import read_info

NODATA = 255


def true_colour(scene: Path, bands: list[str]) -> np.ndarray:
    """(H, W, 3) floats in [0, 1]: ``bands`` stretched per band between the 2nd and 98th percentile."""
    with rasterio.open(scene) as ds:
        indexes = select_bands(read_scene_info(ds, str(scene)), bands)
        data = ds.read(indexes).astype(np.float32)
        valid = ds.read_masks(indexes[0]) > 0
    out = np.zeros((*data.shape[1:], 3), dtype=np.float32)
    for i, band in enumerate(data):
        lo, hi = np.percentile(band[valid], (2, 98)) if valid.any() else (0.0, 1.0)
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    return out


def render(scene: Path, mask: Path, names: list[str], bands: list[str], output: Path) -> None:
    """Write the scene | mask figure of one scene to ``output``."""
    rgb = true_colour(scene, bands)
    with rasterio.open(mask) as ds:
        classes = ds.read(1)
        colours = ds.colormap(1)
        b = ds.bounds
        crs = ds.crs.to_string()
    rgba = np.zeros((*classes.shape, 4), dtype=np.float32)
    for value, colour in colours.items():
        if value != NODATA:
            rgba[classes == value] = np.array(colour, dtype=np.float32) / 255
    extent = (b.left / 1000, b.right / 1000, b.bottom / 1000, b.top / 1000)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    axes[0].imshow(rgb, extent=extent)
    axes[0].set_title(f"{scene.stem}\nbands {', '.join(bands)} as red, green, blue", fontsize=8)
    axes[1].imshow(rgb.mean(axis=2), cmap="gray", extent=extent, alpha=0.5)
    axes[1].imshow(rgba, extent=extent, interpolation="nearest")
    axes[1].set_title("predicted classes (the COG mask)", fontsize=8)
    for ax in axes:
        ax.set_xlabel(f"easting (km, {crs})", fontsize=8)
        ax.set_ylabel("northing (km)", fontsize=8)
        ax.tick_params(labelsize=7)
    present = [int(v) for v in np.unique(classes) if v != NODATA]
    handles = [Patch(color=np.array(colours[v][:3]) / 255, label=names[v]) for v in present if v < len(names)]
    axes[1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80, **({"pil_kwargs": {"quality": 85}} if output.suffix == ".jpg" else {}))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", required=True, help="folder of the labelled GeoTIFF scenes")
    p.add_argument("--labels", required=True, help="the labelling output (its masks/ folder holds <scene>.tif)")
    p.add_argument("--model", required=True, help="the model artifact: the class names of the legend")
    p.add_argument("--rgb", default="B04,B03,B02", help="the scene's red, green and blue bands (default: %(default)s)")
    p.add_argument("--output", required=True, help="folder of the pictures, one <scene stem>.<format> per scene")
    p.add_argument("--format", default="jpg", choices=("jpg", "png"), help="picture format (default: %(default)s)")
    a = p.parse_args(argv)
    names = [c.name for c in read_info(a.model).label_map.classes]
    scenes = sorted(Path(a.scenes).glob("*.tif"))
    if not scenes:
        print(f"{a.scenes}: no .tif scenes", file=sys.stderr)
        return 2
    for scene in scenes:
        mask = Path(a.labels) / "masks" / f"{scene.name}.tif"
        if not mask.exists():
            print(f"{scene}: no mask at {mask}", file=sys.stderr)
            return 2
        out = Path(a.output) / f"{scene.stem}.{a.format}"
        render(scene, mask, names, a.rgb.split(","), out)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
