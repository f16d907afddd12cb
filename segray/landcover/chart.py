"""Stacked area chart of class shares over time for one region (matplotlib, no display needed)."""

from __future__ import annotations

import io
from datetime import date

import pyarrow as pa

from segray.labels import LabelMap


def _x_values(dates: list[str]) -> list[date] | list[int]:
    try:
        return [date.fromisoformat(d[:10]) for d in dates]
    except ValueError:  # not ISO dates: plot in order, label with the values
        return list(range(len(dates)))


def share_chart_png(rows: pa.Table, classes: list[str], title: str, label_map: LabelMap | None = None) -> bytes:
    """``rows``: one region's totals (``date`` and ``share_<class>`` columns), any order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows.sort_by("date")
    dates = [str(d) for d in rows.column("date").to_pylist()]
    x = _x_values(dates)
    shares = [[v or 0.0 for v in rows.column(f"share_{c}").to_pylist()] for c in classes]
    colours: list[tuple[float, float, float]] | None = None
    if label_map is not None and label_map.names == classes:
        colours = [(r / 255, g / 255, b / 255) for r, g, b in (cls.color for cls in label_map.classes)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        # x may be dates, which matplotlib's unit conversion takes but its type hints (arrays, numbers) leave out.
        ax.stackplot(x, shares, labels=classes, colors=colours, alpha=0.9)  # type: ignore[arg-type]
        if len(x) == 1:  # a single date has no extent: show it as a stacked bar
            bottom = 0.0
            for k, sh in enumerate(shares):
                colour = None if colours is None else colours[k]
                ax.bar(x, [sh[0]], bottom=bottom, color=colour, width=20, label=None)  # type: ignore[arg-type]
                bottom += sh[0]
        if x and isinstance(x[0], int):
            ax.set_xticks(x, dates, rotation=30)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of labelled area")
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
        fig.autofmt_xdate()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
