"""The report's figures, drawn with matplotlib's object-oriented API (no pyplot state)."""

import os

import matplotlib

matplotlib.use("Agg")  # files only, never a window; also safe on nodes without a display

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 120
ANNOTATE_UP_TO = 12  # classes: above this the confusion matrix cells carry no counts


def curves_figure(runs: list[dict], key: str, ylabel: str) -> Figure:
    """One metric of metrics.jsonl against the epoch, one line per run."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for run in runs:
        epochs = [r["epoch"] for r in run["metrics"]]
        ax.plot(epochs, [r[key] for r in run["metrics"]], marker="o", label=run["label"])
    style_epoch_axis(ax, ylabel, f"{ylabel} per epoch")
    fig.tight_layout()
    return fig


def style_epoch_axis(ax, ylabel: str, title: str) -> None:
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def train_vs_test_figure(runs: list[dict]) -> Figure:
    """Accuracy and loss, train dashed and test solid, one colour per run."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        epochs = [r["epoch"] for r in run["metrics"]]
        for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
            for split, style in (("train", "--"), ("test", "-")):
                values = [r[f"{split}_{metric}"] for r in run["metrics"]]
                label = f"{run['label']} {split}"
                ax.plot(epochs, values, style, color=colour, marker="o", label=label)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        style_epoch_axis(ax, metric, f"train vs test {metric}")
    fig.tight_layout()
    return fig


def per_class_figure(runs: list[dict]) -> Figure:
    """Final per-class test accuracy as grouped bars, one colour per run."""
    classes = list(dict.fromkeys(c for run in runs for c in run["summary"]["classes"]))
    fig = Figure(figsize=(min(16, max(7, 0.6 * len(classes) * max(1, len(runs) / 2))), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        accuracy = run["summary"]["per_class_accuracy"]
        xs = [i + (index - (len(runs) - 1) / 2) * width for i, c in enumerate(classes)]
        ax.bar(xs, [accuracy.get(c, 0.0) for c in classes], width, label=run["label"])
    style_per_class_axes(ax, classes, "Per-class test accuracy", len(runs))
    fig.tight_layout()
    return fig


def style_per_class_axes(ax, classes: list, title: str, series: int) -> None:
    """Class names under the bars (smaller when there are many), accuracy from 0 to 1."""
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) <= 20 else 90)
    ax.tick_params(axis="x", labelsize="small" if len(classes) <= 20 else 5)
    # Headroom above 1.0 keeps the legend off the bars.
    ax.set(ylabel="test accuracy", ylim=(0, 1.2), title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper center", ncol=min(series, 4))


def confusion_figure(summary: dict, title: str = "") -> Figure:
    """summary.json's confusion matrix (rows: true class), coloured by the row fraction."""
    matrix, classes = summary["confusion_matrix"], summary["classes"]
    n = len(classes)
    fractions = [[c / max(sum(row), 1) for c in row] for row in matrix]
    size = min(12, 2.5 + 0.55 * n)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= ANNOTATE_UP_TO:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                colour = "white" if fractions[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=colour)
    ticks = range(n) if n <= 20 else []
    ax.set_xticks(ticks, [classes[i] for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [classes[i] for i in ticks])
    accuracy = summary["test_accuracy"]
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} test accuracy {accuracy:.2%}")
    fig.tight_layout()
    return fig


def samples_figure(samples: dict, columns: int = 8) -> Figure:
    """Images (N x H x W x C uint8) titled with prediction and label: green right, red wrong."""
    count = len(samples["labels"])
    rows = -(-count // columns)
    fig = Figure(figsize=(columns * 1.3, rows * 1.5))
    for index in range(count):
        ax = fig.add_subplot(rows, columns, index + 1)
        image = samples["images"][index]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
        label, prediction = samples["labels"][index], samples["predictions"][index]
        colour = "green" if label == prediction else "red"
        ax.set_title(f"{prediction}\n({label})", fontsize=6, color=colour)
        ax.axis("off")
    fig.tight_layout()
    return fig


def save(fig: Figure, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI)
    return path
