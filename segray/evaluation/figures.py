"""Pictures for people: the confusion matrix and frame | ground truth | prediction overlays."""

from __future__ import annotations

import io

import cv2
import numpy as np

from segray.labels import LabelMap


def confusion_png(cm: np.ndarray, names: list[str], title: str = "") -> bytes:
    """Row-normalised confusion matrix (each ground-truth class sums to 100%), counts in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{100 * norm[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or f"confusion (row %), {int(cm.sum()):,} pixels", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def overlay_strip(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, label_map: LabelMap) -> np.ndarray:
    """Frame | ground truth | prediction side by side (RGB) in the label map's colours (ignore in its own)."""
    return np.concatenate([image, label_map.colorize(truth), label_map.colorize(pred)], axis=1)


def overlay_png(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, label_map: LabelMap) -> bytes:
    """:func:`overlay_strip` as PNG bytes."""
    strip = overlay_strip(image, truth, pred, label_map)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode overlay PNG")
    return buf.tobytes()
