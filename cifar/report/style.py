"""What every figure of the report and the study shares: colours that do not repeat, text that
matplotlib draws as written, an epoch axis, a legend beside the axes, and saving."""

import math
import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window; also safe on nodes without a display

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

DPI = 120
LEGEND_ROWS = 24  # entries per legend column: about what a 4.2-inch figure holds
SHOWN_UP_TO = 40  # characters of a label in a figure; longer ones keep their start and end
MARKERS_UP_TO = 20  # markers per line; a longer curve marks every k-th epoch


def colours(count: int) -> list:
    """One colour per series, no two the same: matplotlib's ten up to 10, beyond that evenly
    spaced along a perceptual colour map (its two dark ends left out)."""
    if count <= 10:
        return [f"C{i}" for i in range(count)]
    return list(matplotlib.colormaps["viridis"](np.linspace(0, 0.92, count)))


def shown(text: str) -> str:
    """text as a figure shows it: '$' drawn as itself, not as the start of mathtext (a folder
    name such as a$\\frac$ would otherwise stop the figure), shortened in the middle."""
    if len(text) > SHOWN_UP_TO:
        keep = SHOWN_UP_TO // 2 - 1
        text = f"{text[:keep]}…{text[-keep:]}"
    return text.replace("$", r"\$")


def figure(width: float, height: float, entries: int = 0, longest: int = 0) -> Figure:
    """A figure with room to its right for a legend of `entries` labels of `longest` characters."""
    columns = math.ceil(entries / LEGEND_ROWS)
    room = columns * (0.6 + 0.065 * min(longest, SHOWN_UP_TO))
    return Figure(figsize=(width + room, height), layout="constrained")


def legend_beside(fig: Figure, handles: list, labels: list[str], title: str = "") -> None:
    """One legend for the whole figure, right of the axes, so it never covers a line or the
    title; more than LEGEND_ROWS entries take several columns."""
    fig.legend(
        handles,
        [shown(label) for label in labels],  # passed explicitly: a label may start with "_"
        loc="outside right upper",
        ncols=max(1, math.ceil(len(labels) / LEGEND_ROWS)),
        fontsize="small" if len(labels) <= 12 else "x-small",
        title=title or None,
        frameon=False,
    )


def style_epoch_axis(ax, ylabel: str, title: str, accuracy: bool = False) -> None:
    """Epochs 1..last as whole numbers with half an epoch of margin (one epoch is a point in
    the middle, not a scale of 0.95 to 1.05); accuracy in percent."""
    epochs = [x for line in ax.get_lines() for x in line.get_xdata()]
    ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if accuracy:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)


def line_style(points: int, series: int) -> dict:
    """Markers on at most MARKERS_UP_TO points of a line (every point of a short one, so a
    one-epoch run is a visible dot), smaller and on thinner lines when many series share axes."""
    many = series > 10
    return {
        "markevery": max(1, math.ceil(points / MARKERS_UP_TO)),
        "markersize": 2.5 if many else 5,
        "linewidth": 0.8 if many else 1.5,
    }


def save(fig: Figure, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI)
    return path
