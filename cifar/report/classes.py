"""The report's per-class figures: accuracy per class (bars for a few runs, a heatmap for many)
and the confusion matrix. A class with no test image has no accuracy: it gets no bar, and the
figure says "no test image" where the bar would be."""

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from cifar.report.figures import legend_text
from cifar.report.runs import class_accuracies
from cifar.report.style import colours, figure, legend_beside, shown

ANNOTATE_UP_TO = 12  # classes: above this the confusion matrix cells carry no counts
BARS_UP_TO = 8  # runs: more than this get a heatmap, one row per run, instead of bars
UNTESTED = "no test image"


def style_per_class_axes(ax, classes: list, title: str) -> None:
    """Class names under the bars (smaller when there are many), accuracy from 0 to 100%."""
    ax.set_xticks(
        range(len(classes)), map(shown, classes), rotation=45 if len(classes) <= 20 else 90
    )
    ax.tick_params(axis="x", labelsize="small" if len(classes) <= 20 else 5)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set(ylabel="test accuracy", ylim=(0, 1.02), title=title)
    ax.grid(axis="y", alpha=0.3)


def mark_bar(ax, x: float, text: str, colour) -> None:
    """text standing upright where a bar would rise: 'no test image' where there is no bar,
    '0%' on a bar of height 0, which would otherwise look the same."""
    ax.text(x, 0.02, text, rotation=90, ha="center", va="bottom", fontsize=7, color=colour)


def per_class_title(what: str, untested: int) -> str:
    return what if not untested else f"{what} ({untested} bar(s) left out: {UNTESTED})"


def per_class_figure(runs: list[dict]) -> Figure:
    """Final per-class test accuracy: grouped bars, one colour per run, up to BARS_UP_TO runs;
    beyond that a heatmap."""
    classes = list(dict.fromkeys(c for run in runs for c in run["summary"]["classes"]))
    if len(runs) > BARS_UP_TO:
        return per_class_heatmap(runs, classes)
    labels = [legend_text(run) for run in runs]
    width = 0.8 / len(runs)
    fig = figure(
        min(16, max(7, 0.6 * len(classes) * max(1, len(runs) / 2))),
        4.5,
        len(runs),
        max(map(len, labels)),
    )
    ax = fig.add_subplot()
    handles, untested = [], 0
    for index, (run, colour) in enumerate(zip(runs, colours(len(runs)), strict=True)):
        accuracy = class_accuracies(run["summary"])
        offset = (index - (len(runs) - 1) / 2) * width
        tested = [c for c in classes if accuracy.get(c) is not None]
        handles.append(
            ax.bar(
                [classes.index(c) + offset for c in tested],
                [accuracy[c] for c in tested],
                width,
                color=colour,
            )
        )
        for name in (c for c in classes if c in accuracy and not accuracy[c]):
            text = "0%" if accuracy[name] == 0 else UNTESTED
            mark_bar(ax, classes.index(name) + offset, text, colour)
            untested += accuracy[name] is None
    style_per_class_axes(ax, classes, per_class_title("Per-class test accuracy", untested))
    legend_beside(fig, handles, labels)
    return fig


def per_class_heatmap(runs: list[dict], classes: list) -> Figure:
    """One row per run, one column per class, coloured by accuracy; grey: no test image."""
    values = np.array(
        [
            [
                np.nan if (a := class_accuracies(run["summary"]).get(c)) is None else a
                for c in classes
            ]
            for run in runs
        ]
    )
    fig = Figure(
        figsize=(min(16, 4 + 0.45 * len(classes)), 1.6 + 0.2 * len(runs)), layout="constrained"
    )
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="test accuracy", format=PercentFormatter(xmax=1), aspect=40)
    ax.set_xticks(range(len(classes)), map(shown, classes), rotation=45, ha="right")
    ax.set_yticks(range(len(runs)), [shown(legend_text(run)) for run in runs], fontsize=6)
    untested = int(np.isnan(values).sum())
    title = "Per-class test accuracy"
    ax.set_title(title if not untested else f"{title} (grey: {UNTESTED}, {untested} cell(s))")
    return fig


def confusion_figure(summary: dict, title: str = "") -> Figure:
    """summary.json's confusion matrix (rows: true class), coloured by the row fraction; a row
    without a test image is named so."""
    matrix, classes = summary["confusion_matrix"], summary["classes"]
    n = len(classes)
    fractions = [[c / max(sum(row), 1) for c in row] for row in matrix]
    size = min(12, 2.5 + 0.55 * n)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= ANNOTATE_UP_TO:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if fractions[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)
    ticks = range(n) if n <= 20 else []
    rows = [shown(classes[i]) + (f" ({UNTESTED})" if not sum(matrix[i]) else "") for i in ticks]
    ax.set_xticks(ticks, [shown(classes[i]) for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, rows)
    accuracy = summary["test_accuracy"]
    ax.set(xlabel="predicted", ylabel="true", title=f"{shown(title)} test accuracy {accuracy:.2%}")
    return fig
