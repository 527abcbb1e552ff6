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


#: marker colours of the frontier's point groups (a variant's origin); others get grey
GROUP_COLOURS = {"base": "black", "tuned": "tab:blue", "checkpoint": "tab:orange",
                 "transformed": "tab:green"}


def frontier(points: Sequence[tuple[str, float, float, str, bool]],
             line: Sequence[tuple[float, float]], x_label: str, y_label: str,
             title: str) -> str:
    """Labelled points (name, x, y, group, filled), coloured by group (hollow where not
    ``filled``), and a line through ``line``'s (x, y) points in order of x. Points far
    from the line are left off the plot and named beneath it."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 5.2))
    shown, hidden = _near(points, line)
    if line:
        xs, ys = zip(*sorted(line))
        axes.plot(xs, ys, color="tab:red", linewidth=1.2, zorder=1, label="frontier")
    for group in dict.fromkeys(p[3] for p in shown):
        colour = GROUP_COLOURS.get(group, "tab:grey")
        for filled in (True, False):
            ours = [p for p in shown if p[3] == group and p[4] == filled]
            if ours:
                axes.scatter([p[1] for p in ours], [p[2] for p in ours], s=36, zorder=2,
                             color=colour if filled else "white", edgecolors=colour,
                             label=group if filled else f"{group} (not comparable)")
    axes.axvline(0, color="grey", linewidth=0.6)
    axes.axhline(0, color="grey", linewidth=0.6)
    axes.margins(0.18)
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    # beside the plot: inside, it would cover labels placed after it
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if hidden:
        named = ", ".join(f"{p[0]} ({p[1]:.3g}, {p[2]:.3g})" for p in hidden[:6])
        more = f" and {len(hidden) - 6} more" if len(hidden) > 6 else ""
        axes.set_xlabel(f"{x_label}\nfar off the frontier, not drawn (x, y): {named}{more}")
    _place_labels(figure, axes, [(p[0], p[1], p[2]) for p in shown])
    return _svg(figure)


#: how far from the frontier a point may lie and be drawn, in spans of the frontier
REACH = 2.0


def _near(points: Sequence[tuple[str, float, float, str, bool]],
          line: Sequence[tuple[float, float]]) -> tuple[list[Any], list[Any]]:
    """The points within ``REACH`` spans of the frontier on both axes, and the rest: one
    variant far worse than the others would squash the frontier into a corner."""
    if not line:
        return list(points), []
    windows = []
    for axis in (0, 1):
        ends = [xy[axis] for xy in line]
        everything = [p[1 + axis] for p in points]
        span = (max(ends) - min(ends)) or (max(everything) - min(everything)) or 1.0
        windows.append((min(ends) - REACH * span, max(ends) + REACH * span))
    near = [p for p in points if all(low <= p[1 + axis] <= high
                                     for axis, (low, high) in enumerate(windows))]
    return near, [p for p in points if p not in near]


#: where a label may sit beside its point, in points (dx, dy), nearest first
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.2)
            for dx, dy in ((5, 3), (5, -9), (-5, 3), (-5, -9), (0, 8), (0, -14))]


def _place_labels(figure: Any, axes: Any, points: Sequence[tuple[str, float, float]]) -> None:
    """Name each point where its label overlaps no label placed before it and no point:
    matplotlib places annotations blindly, and a few dozen close points would overprint.
    A label pushed away from its point gets a thin line to it."""
    figure.canvas.draw()  # the axes' limits, as the saved figure will have them
    renderer = figure.canvas.get_renderer()
    dots = [axes.transData.transform((x, y)) for _, x, y in points]
    placed: list[Any] = []
    for name, x, y in points:
        best: tuple[float, tuple[float, float], Any] | None = None
        for dx, dy in _OFFSETS:
            label = _label(axes, name, x, y, dx, dy, leader=False)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            label.remove()
            cost = 10 * sum(box.overlaps(other) for other in placed) + sum(
                box.x0 - 3 <= px <= box.x1 + 3 and box.y0 - 3 <= py <= box.y1 + 3
                for px, py in dots)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy), box)
            if cost == 0:
                break
        assert best is not None
        _, (dx, dy), box = best
        _label(axes, name, x, y, dx, dy, leader=abs(dx) + abs(dy) > 16)
        placed.append(box)


def _label(axes: Any, name: str, x: float, y: float, dx: float, dy: float,
           leader: bool) -> Any:
    return axes.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy),
                         ha="left" if dx > 0 else "right" if dx < 0 else "center",
                         fontsize=7, zorder=3,
                         arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5,
                                     "shrinkA": 0, "shrinkB": 3} if leader else None)


def training_curve(gains: Sequence[tuple[str, Sequence[tuple[int, float, bool]]]],
                   losses: Sequence[tuple[str, Sequence[tuple[int, float, float | None,
                                                              float | None, bool]],
                                    float | None]],
                   gain_label: str, loss_label: str, title: str) -> str:
    """One tuning run against its steps: above, one line per target evaluator (step, gain,
    significant); below, one per general evaluator (step, loss, low, high, significant)
    with its interval and its max_loss (dashed) when gated. Significant points are filled."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    panels = [kind for kind, series in (("gain", gains), ("loss", losses)) if series]
    figure, axes_list = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                                     figsize=(6.5, 2.6 * len(panels) + 0.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axes, kind in zip(axes_list[:, 0], panels):
        if kind == "gain":
            for i, (name, points) in enumerate(gains):
                colour = colours[i % len(colours)]
                axes.plot([p[0] for p in points], [p[1] for p in points], color=colour,
                          linewidth=1.2, label=name)
                _significance_markers(axes, points, colour)
            axes.set_ylabel(gain_label)
        else:
            for i, (name, points, max_loss) in enumerate(losses):
                colour = colours[(i + len(gains)) % len(colours)]
                steps = [p[0] for p in points]
                values = [p[1] for p in points]
                low = [p[1] - p[2] if p[2] is not None else 0 for p in points]
                high = [p[3] - p[1] if p[3] is not None else 0 for p in points]
                axes.errorbar(steps, values, yerr=[low, high], color=colour, linewidth=1.2,
                              capsize=3, label=name)
                _significance_markers(axes, [(p[0], p[1], p[4]) for p in points], colour)
                if max_loss is not None:
                    axes.axhline(max_loss, color=colour, linestyle="--", linewidth=0.8,
                                 label=f"max_loss of {name.split(' ')[0]}")
            axes.set_ylabel(loss_label)
        axes.axhline(0, color="grey", linewidth=0.6)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="best")
    axes_list[-1, 0].set_xlabel("step (filled points: paired-test p < 0.05 against the base)")
    axes_list[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes_list[0, 0].set_title(title)
    return _svg(figure)


def _significance_markers(axes: Any, points: Sequence[tuple[int, float, bool]],
                          colour: str) -> None:
    """A point per step, filled where its paired test against the base gives p < 0.05."""
    for step, value, significant in points:
        axes.scatter([step], [value], s=22, zorder=3, color=colour if significant else "white",
                     edgecolors=colour)
