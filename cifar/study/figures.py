"""A study's figures: every seed's accuracy with the arm's mean and interval, learning curves as
mean with a 95% band, per-class accuracy with intervals."""

import numpy as np
from matplotlib.figure import Figure

from cifar.report.classes import style_per_class_axes
from cifar.report.style import save, style_epoch_axis


def error_bars(stats: list[dict]) -> np.ndarray:
    """2 x N distances from the mean to the interval's ends (0 where there is no interval)."""
    return np.array(
        [
            [s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] if s["ci95"] else [0.0, 0.0]
            for s in stats
        ]
    ).T.reshape(2, len(stats))


def accuracy_figure(study: dict) -> Figure:
    """Each run's final test accuracy as a dot, the arm's mean and 95% interval beside them."""
    fig = Figure(figsize=(max(5.0, 1.6 * len(study["arms"]) + 2), 4.2))
    ax = fig.add_subplot()
    for index, arm in enumerate(study["arms"].values()):
        values = arm["per_seed"]["test_accuracy"]
        offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
        ax.scatter(index + np.asarray(offsets) - 0.1, values, color=f"C{index % 10}", alpha=0.6)
        stat = arm["test_accuracy"]
        if stat["mean"] is not None:
            ax.errorbar(
                [index + 0.2],
                [stat["mean"]],
                yerr=error_bars([stat]),
                fmt="o",
                color="black",
                capsize=5,
            )
    ax.set_xticks(range(len(study["arms"])), list(study["arms"]))
    ax.set(ylabel="test accuracy", title="Test accuracy per seed; mean and 95% CI")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def curves_figure(study: dict) -> Figure:
    """Test accuracy and loss per epoch: each arm's mean over seeds with its 95% band."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(
        axes, ("test_accuracy", "test_loss"), ("test accuracy", "test loss"), strict=True
    ):
        for index, (name, arm) in enumerate(study["arms"].items()):
            points = [p for p in arm["curves"][key] if p["mean"] is not None]
            if not points:
                continue
            colour = f"C{index % 10}"
            epochs = [p["epoch"] for p in points]
            ax.plot(epochs, [p["mean"] for p in points], marker="o", color=colour, label=name)
            banded = [p for p in points if p["ci95"] is not None]
            ax.fill_between(
                [p["epoch"] for p in banded],
                [p["ci95"][0] for p in banded],
                [p["ci95"][1] for p in banded],
                color=colour,
                alpha=0.2,
            )
        style_epoch_axis(ax, label, f"{label}: mean over seeds, 95% CI band")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def per_class_figure(study: dict) -> Figure:
    """Mean per-class test accuracy as grouped bars with 95% intervals, one colour per arm."""
    arms = study["arms"]
    classes = list(dict.fromkeys(c for arm in arms.values() for c in arm["per_class_accuracy"]))
    fig = Figure(figsize=(min(16, max(7, 0.5 * len(classes) * max(1, len(arms) / 1.5))), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    for index, (name, arm) in enumerate(arms.items()):
        present = [c for c in classes if c in arm["per_class_accuracy"]]
        stats = [arm["per_class_accuracy"][c] for c in present]
        xs = [classes.index(c) + (index - (len(arms) - 1) / 2) * width for c in present]
        ax.bar(xs, [s["mean"] for s in stats], width, yerr=error_bars(stats), capsize=2, label=name)
    style_per_class_axes(ax, classes, "Per-class test accuracy: mean, 95% CI")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_figures(study: dict, out: str) -> list[str]:
    return [
        save(accuracy_figure(study), out, "test_accuracy.png"),
        save(curves_figure(study), out, "curves.png"),
        save(per_class_figure(study), out, "per_class_accuracy.png"),
    ]
