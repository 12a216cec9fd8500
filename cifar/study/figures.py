"""A study's figures: every seed's accuracy (one marker per seed, a line joining a seed's runs)
with each arm's mean and interval; the paired differences the conclusions are about; learning
curves as mean with a 95% band; per-class accuracy with intervals. Intervals are study.json's,
cut to the metric's range, and a figure says when one was."""

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifar.report.classes import UNTESTED, mark_bar, style_per_class_axes
from cifar.report.style import colours, figure, legend_beside, save, shown, style_epoch_axis

SEED_MARKERS = "osD^vPX*ph"  # beyond ten seeds a seed's marker is its number
# How a difference reads: its scale, the axis label, and which side favours a.
DIFFERENCE_TEXT = {
    "test_accuracy": (100, "test accuracy difference (points)", "> 0: a more accurate"),
    "test_loss": (1, "test loss difference", "< 0: a has the lower loss"),
}
CLIPPED_NOTE = "\n(an interval was cut to the metric's range)"


def error_bars(stats: list[dict], scale: float = 1) -> np.ndarray:
    """2 x N distances from the mean to the interval's ends (0 where there is no interval)."""
    return scale * np.array(
        [
            [s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] if s["ci95"] else [0.0, 0.0]
            for s in stats
        ]
    ).T.reshape(2, len(stats))


def seed_marker(study: dict, seed: int) -> str:
    index = study["seeds"].index(seed) if seed in study["seeds"] else len(SEED_MARKERS)
    return SEED_MARKERS[index] if index < len(SEED_MARKERS) else f"${seed}$"


def seed_legend(fig: Figure, study: dict, seeds: list[int], mean=None) -> None:
    """Which marker is which seed, and the mean's marker when one was drawn."""
    handles = [
        Line2D([], [], color="grey", marker=seed_marker(study, s), linestyle="none") for s in seeds
    ]
    labels = [f"seed {s}" for s in seeds]
    if mean is not None:
        handles.append(mean)
        labels.append("mean, 95% CI")
    legend_beside(fig, handles, labels)


def seed_values(arm: dict, metric: str) -> dict:
    """{seed: value} of one metric of an arm's finished runs."""
    return dict(zip(arm["seeds"], arm["per_seed"][metric], strict=True))


def accuracy_figure(study: dict) -> Figure:
    """Each run's final test accuracy, marked by its seed, a grey line joining one seed's runs
    across the arms (the pairs the differences are of); each arm's mean and 95% interval in
    black beside its runs."""
    arms = study["arms"]
    seeds = [s for s in study["seeds"] if any(s in arm["seeds"] for arm in arms.values())]
    fig = figure(max(4.0, 1.4 * len(arms) + 2), 4.2, len(seeds) + 1, 12)
    ax = fig.add_subplot()
    by_arm = [seed_values(arm, "test_accuracy") for arm in arms.values()]
    for seed in seeds:
        xs = [i - 0.1 for i, values in enumerate(by_arm) if seed in values]
        ys = [values[seed] for values in by_arm if seed in values]
        ax.plot(xs, ys, color="grey", alpha=0.4, linewidth=0.8, zorder=1)
    for index, (values, colour) in enumerate(zip(by_arm, colours(len(arms)), strict=True)):
        for seed, value in values.items():
            ax.scatter(index - 0.1, value, color=colour, marker=seed_marker(study, seed), zorder=2)
    stats = [arm["test_accuracy"] for arm in arms.values()]
    drawn = [i for i, s in enumerate(stats) if s["mean"] is not None]
    mean = ax.errorbar(
        [i + 0.2 for i in drawn],
        [stats[i]["mean"] for i in drawn],
        yerr=error_bars([stats[i] for i in drawn]),
        fmt="o",
        color="black",
        capsize=5,
    )
    ax.set_xticks(range(len(arms)), map(shown, arms))
    ax.set_xlim(-0.6, len(arms) - 0.4)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    cut = [name for name, s in zip(arms, stats, strict=True) if s.get("clipped")]
    clipped = f"\n(interval of {', '.join(map(shown, cut))} cut to 0-100%)" if cut else ""
    ax.set(ylabel="test accuracy", title=f"Test accuracy per seed; mean and 95% CI{clipped}")
    ax.grid(axis="y", alpha=0.3)
    seed_legend(fig, study, seeds, mean)
    return fig


def difference_figure(study: dict) -> Figure:
    """One panel per metric: for each pair a − b, the difference of every paired seed (its
    marker) and the mean difference with its 95% interval, against a line at 0."""
    metrics = list(dict.fromkeys(p["metric"] for p in study["pairs"]))
    pairs = {m: [p for p in study["pairs"] if p["metric"] == m] for m in metrics}
    rows = len(pairs[metrics[0]])
    seeds = sorted({s for p in study["pairs"] for s in p["seeds"]}, key=study["seeds"].index)
    fig = figure(5.5 * len(metrics), max(2.6, 1.6 + 0.55 * rows), len(seeds) + 1, 12)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    mean = None
    for ax, metric in zip(axes, metrics, strict=True):
        scale, label, better = DIFFERENCE_TEXT[metric]
        ax.axvline(0, color="black", linewidth=0.8)
        for row, pair in enumerate(pairs[metric]):
            a = seed_values(study["arms"][pair["a"]], metric)
            b = seed_values(study["arms"][pair["b"]], metric)
            for seed in pair["seeds"]:
                marker = seed_marker(study, seed)
                ax.scatter(scale * (a[seed] - b[seed]), row + 0.15, color="grey", marker=marker)
            if pair["mean_difference"] is None:
                ax.text(0, row - 0.15, " no paired seed", va="center", fontsize="small")
                continue
            stat = {"mean": pair["mean_difference"], "ci95": pair["ci95"]}
            mean = ax.errorbar(
                scale * stat["mean"],
                row - 0.15,
                xerr=error_bars([stat], scale),
                fmt="o",
                color="black",
                capsize=5,
            )
        ax.set_yticks(range(rows), [shown(f"{p['a']} − {p['b']}") for p in pairs[metric]])
        ax.set_ylim(rows - 0.5, -0.5)
        clipped = CLIPPED_NOTE if any(p.get("clipped") for p in pairs[metric]) else ""
        ax.set(xlabel=f"{label}; {better}", title=f"{label.split(' (')[0]}, a − b{clipped}")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.grid(axis="x", alpha=0.3)
    seed_legend(fig, study, seeds, mean)
    return fig


def curves_figure(study: dict) -> Figure:
    """Test accuracy and loss per epoch: each arm's mean over seeds with its 95% band."""
    arms = study["arms"]
    fig = figure(11, 4.2, len(arms), max(map(len, arms), default=0))
    axes = fig.subplots(1, 2)
    handles = {}
    for ax, key, label in zip(
        axes, ("test_accuracy", "test_loss"), ("test accuracy", "test loss"), strict=True
    ):
        clipped = False
        for (name, arm), colour in zip(arms.items(), colours(len(arms)), strict=True):
            points = [p for p in arm["curves"][key] if p["mean"] is not None]
            if not points:
                continue
            epochs = [p["epoch"] for p in points]
            (handles[name],) = ax.plot(
                epochs, [p["mean"] for p in points], marker="o", color=colour
            )
            banded = [p for p in points if p["ci95"] is not None]
            ends = [[p["ci95"][0] for p in banded], [p["ci95"][1] for p in banded]]
            ax.fill_between([p["epoch"] for p in banded], *ends, color=colour, alpha=0.2)
            if len(banded) == 1:  # a band of one epoch has no width: an error bar instead
                middle = banded[0]["mean"]
                bar = [[middle - ends[0][0]], [ends[1][0] - middle]]
                ax.errorbar(banded[0]["epoch"], middle, yerr=bar, color=colour, capsize=5)
            clipped = clipped or any(p.get("clipped") for p in banded)
        note = CLIPPED_NOTE if clipped else ""
        title = f"{label}: mean over seeds, 95% CI band{note}"
        style_epoch_axis(ax, label, title, accuracy=key == "test_accuracy")
    legend_beside(fig, list(handles.values()), list(handles))
    return fig


def per_class_figure(study: dict) -> Figure:
    """Mean per-class test accuracy as grouped bars with 95% intervals, one colour per arm; a
    class no run of an arm had a test image of has no bar, and says so."""
    arms = study["arms"]
    classes = list(dict.fromkeys(c for arm in arms.values() for c in arm["per_class_accuracy"]))
    fig = figure(
        min(16, max(7, 0.5 * len(classes) * max(1, len(arms) / 1.5))),
        4.5,
        len(arms),
        max(map(len, arms), default=0),
    )
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    handles, clipped, untested = [], False, 0
    for index, (arm, colour) in enumerate(zip(arms.values(), colours(len(arms)), strict=True)):
        offset = (index - (len(arms) - 1) / 2) * width
        stats = arm["per_class_accuracy"]
        present = [c for c in classes if c in stats and stats[c]["mean"] is not None]
        handles.append(
            ax.bar(
                [classes.index(c) + offset for c in present],
                [stats[c]["mean"] for c in present],
                width,
                yerr=error_bars([stats[c] for c in present]),
                capsize=2,
                color=colour,
            )
        )
        for name in (c for c in classes if c in stats and not stats[c]["mean"]):
            text = UNTESTED if stats[name]["mean"] is None else "0%"
            mark_bar(ax, classes.index(name) + offset, text, colour)
            untested += stats[name]["mean"] is None
        clipped = clipped or any(stats[c].get("clipped") for c in present)
    title = "Per-class test accuracy: mean, 95% CI"
    if untested:
        title += f" ({untested} bar(s) left out: {UNTESTED})"
    fewer = sum(
        len(seeds) for arm in arms.values() for seeds in arm.get("no_test_image", {}).values()
    )
    if fewer:
        title += f"\n({fewer} run(s) without a test image of a class left out of its bar)"
    style_per_class_axes(ax, classes, title + (CLIPPED_NOTE if clipped else ""))
    legend_beside(fig, handles, list(arms))
    return fig


def write_figures(study: dict, out: str) -> list[str]:
    """The figures in out; the paired differences only where there is a pair."""
    figures = [
        ("test_accuracy.png", accuracy_figure),
        ("paired_difference.png", difference_figure) if study["pairs"] else None,
        ("curves.png", curves_figure),
        ("per_class_accuracy.png", per_class_figure),
    ]
    return [save(draw(study), out, name) for name, draw in filter(None, figures)]
