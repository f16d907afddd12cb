"""Training curves: loss (train and val) and validation mIoU per epoch, as one PNG."""

from __future__ import annotations

import io
from typing import Any

from segray.metrics import is_scored


def curves_png(
    history: list[dict[str, Any]], title: str = "", score: tuple[str, str] = ("val_miou", "val mIoU (%)")
) -> bytes:
    """``score``: the validation figure drawn on the right, (history key, axis label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    key, label = score
    validated = [h for h in history if is_scored({"val_miou": h.get(key, float("nan"))})]
    ax_loss.plot([h["epoch"] for h in validated], [h["val_loss"] for h in validated], "o-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss (train: as optimised; val: cross-entropy)")
    ax_loss.legend()
    ax_miou.plot([h["epoch"] for h in validated], [100 * h[key] for h in validated], "o-", color="tab:green")
    ax_miou.set_xlabel("epoch")
    ax_miou.set_ylabel(label)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


#: The curves' file in the run folder, redrawn after every epoch.
CURVES = "curves.png"


def write_curves(
    run_uri: str, history: list[dict[str, Any]], title: str, score: tuple[str, str] = ("val_miou", "val mIoU (%)")
) -> None:
    """Redraw ``<run>/curves.png``; a picture that cannot be written never fails the run."""
    import logging

    from segray import storage

    try:
        storage.write_bytes(storage.join(run_uri, CURVES), curves_png(history, title, score))
    except Exception as e:  # noqa: BLE001
        logging.getLogger("segray.train").warning("could not write %s: %s", CURVES, e)
