"""The report's curves (a metric per epoch, train against test) and the sample predictions,
drawn with matplotlib's object-oriented API (no pyplot state)."""

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cifar.report.style import (
    colours,
    figure,
    legend_beside,
    line_style,
    shown,
    style_epoch_axis,
)

# Train and test differ in line, marker and fill, so they stay apart in grey print too.
SPLIT_STYLE = {
    "train": {"linestyle": "--", "marker": "s", "markerfacecolor": "none"},
    "test": {"linestyle": "-", "marker": "o"},
}


def legend_text(run: dict) -> str:
    """The run's label, with the data it used where runs of one figure differ in it."""
    return run.get("legend", run["label"])


def curves_figure(runs: list[dict], key: str, ylabel: str) -> Figure:
    """One metric of metrics.jsonl against the epoch, one line (and colour) per run."""
    labels = [legend_text(run) for run in runs]
    fig = figure(6.4, 4.2, len(runs), max(map(len, labels)))
    ax = fig.add_subplot()
    handles = []
    for run, colour in zip(runs, colours(len(runs)), strict=True):
        epochs = [r["epoch"] for r in run["metrics"]]
        (line,) = ax.plot(
            epochs,
            [r[key] for r in run["metrics"]],
            color=colour,
            **line_style(len(epochs), len(runs)),
            **SPLIT_STYLE["train" if key.startswith("train") else "test"],
        )
        handles.append(line)
    style_epoch_axis(ax, ylabel, f"{ylabel} per epoch", accuracy=key.endswith("accuracy"))
    legend_beside(fig, handles, labels)
    return fig


def train_vs_test_figure(runs: list[dict]) -> Figure:
    """Accuracy and loss per epoch: train dashed with open squares, test solid with dots, one
    colour per run; one legend for both panels."""
    labels = [legend_text(run) for run in runs]
    fig = figure(11, 4.2, len(runs) + 2, max(map(len, labels)))
    axes = fig.subplots(1, 2)
    for run, colour in zip(runs, colours(len(runs)), strict=True):
        epochs = [r["epoch"] for r in run["metrics"]]
        for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
            for split, style in SPLIT_STYLE.items():
                values = [r[f"{split}_{metric}"] for r in run["metrics"]]
                weights = line_style(len(epochs), len(runs))
                ax.plot(epochs, values, color=colour, **weights, **style)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        style_epoch_axis(ax, metric, f"train vs test {metric}", accuracy=metric == "accuracy")
    splits = [Line2D([], [], color="black", **style) for style in SPLIT_STYLE.values()]
    runs_drawn = [Line2D([], [], color=colour, linewidth=3) for colour in colours(len(runs))]
    legend_beside(fig, splits + runs_drawn, [*SPLIT_STYLE, *labels])
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
        ax.set_title(shown(f"{prediction}\n({label})"), fontsize=6, color=colour)
        ax.axis("off")
    fig.tight_layout()
    return fig
