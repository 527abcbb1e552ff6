"""The report's plots, drawn with matplotlib and returned as SVG text.

SVG keeps the HTML page one self-contained file (the plots are inline, their text drawn
as paths, so no font or network is needed) and renders on GitHub from Markdown.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no screen: draw to files only
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "harness",
                         "font.size": 9, "axes.titlesize": 10})
    return plt


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue and doctype: inline in HTML


def heat_map(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]],
             labels: Sequence[Sequence[str]], title: str, colour_label: str) -> str:
    """A variants x evaluators grid coloured by ``values`` (red: worse than the base)."""
    plt = _pyplot()
    import numpy as np

    data = np.array([[math.nan if v is None else v for v in row] for row in values], dtype=float)
    finite = np.abs(data[np.isfinite(data)])
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    figure, axes = plt.subplots(figsize=(1.6 + 1.3 * len(columns), 1.0 + 0.55 * len(rows)))
    image = axes.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-limit, vmax=limit,
                        aspect="auto")
    axes.set_xticks(range(len(columns)), labels=columns, rotation=30, ha="right")
    axes.set_yticks(range(len(rows)), labels=rows)
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            if text:
                strong = math.isfinite(data[i, j]) and abs(data[i, j]) > 0.6 * limit
                axes.text(j, i, text, ha="center", va="center", fontsize=8,
                          color="white" if strong else "black")
    figure.colorbar(image, ax=axes, label=colour_label, shrink=0.8)
    axes.set_title(title)
    return _svg(figure)


def scatter(points: Sequence[tuple[str, float, float]], x_label: str, y_label: str,
            title: str) -> str:
    """One labelled point per (name, x, y)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, x, y in points:
        axes.scatter([x], [y], s=40)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    axes.axvline(0, color="grey", linewidth=0.6)
    axes.axhline(0, color="grey", linewidth=0.6)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return _svg(figure)


def curves(series: Sequence[tuple[str, Sequence[float]]], x_label: str, y_label: str,
           title: str) -> str:
    """One line per (name, values), values at steps 1, 2, ..."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.6))
    for name, values in series:
        axes.plot(range(1, len(values) + 1), values, label=name, linewidth=1.2)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _svg(figure)
