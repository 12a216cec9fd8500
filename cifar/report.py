"""Figures and a results table from run folders alone (config.json, metrics.jsonl, summary.json).

    python -m cifar.report runs/cnn-cifar10-20260101-120000 runs/resnet50-cifar10-... --out report

Writes into --out: accuracy.png and loss.png (test curves of all runs overlaid),
train_vs_test.png, per_class_accuracy.png, confusion-<run>.png for each run, and results.md
(the results table with the figures).
"""

import argparse
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")  # files only, never a window; also safe on nodes without a display

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error
from cifar.record import (  # noqa: E402
    METRICS_FILE,
    SUMMARY_FILE,
    atomic_write,
    read_finished_run,
)

DPI = 120
ANNOTATE_UP_TO = 12  # classes: above this the confusion matrix cells carry no counts


def load_run(run_dir: str) -> dict:
    """One run folder's files; a UserError when the folder is not a finished run."""
    if not os.path.isdir(run_dir):
        raise UserError(
            f"{run_dir} is not a folder. Pass run folders that train.py wrote (its "
            f"--output-dir, by default runs/<model>-<dataset>-<time>), e.g. "
            f"`python -m cifar.report runs/cnn-cifar10-20260101-120000 --out report`."
        )
    has = {n: os.path.isfile(os.path.join(run_dir, n)) for n in (METRICS_FILE, SUMMARY_FILE)}
    if not has[METRICS_FILE]:
        raise UserError(
            f"{run_dir} is not a run folder: it has no metrics.jsonl (train.py writes "
            f"config.json, metrics.jsonl and summary.json into its --output-dir). Pass run "
            f"folders that train.py wrote, e.g. `python -m cifar.report runs/cnn-cifar10-"
            f"20260101-120000 --out report`."
        )
    if not has[SUMMARY_FILE]:
        raise UserError(
            f"{run_dir} holds an unfinished run: metrics.jsonl but no summary.json, which "
            f"train.py writes after the last epoch. Finish it with `python train.py "
            f"--output-dir {run_dir} --resume auto` (same settings), or leave it out."
        )
    fix = f"The run folder is damaged: re-run that training, or leave {run_dir} out of the report."
    return read_finished_run(run_dir, fix, need_config=False)


def run_labels(run_dirs: list[str]) -> list[str]:
    """Short unique names: the folder names, or paths below the common parent when they clash."""
    labels = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    if len(set(labels)) < len(labels):
        paths = [os.path.abspath(d) for d in run_dirs]
        parent = os.path.commonpath(paths) if len(set(paths)) > 1 else os.path.dirname(paths[0])
        labels = [os.path.relpath(p, parent) for p in paths]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique


def file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


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


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def results_table(runs: list[dict]) -> str:
    """The Markdown results table: one row per run, numbers from summary.json."""
    lines = [
        "| run | model | dataset | test accuracy | final test loss | epochs | wall time "
        "| images/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run["summary"]
        lines.append(
            f"| {run['label']} | {s['model']} | {s['dataset']} | {s['test_accuracy']:.2%} "
            f"| {s['test_loss']:.4f} | {s['epochs']} | {format_seconds(s['wall_seconds'])} "
            f"| {s['train_images_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def describe_hardware(run: dict) -> str:
    config, summary = run["config"], run["summary"]
    device = config.get("device_name") or config.get("device") or "unknown device"
    return (
        f"- {run['label']}: `{run['dir']}`, {device}, {summary['world_size']} process(es), "
        f"mixed precision {summary['mixed_precision']}, {summary['num_test_samples']} test images"
    )


def save(fig: Figure, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI)
    return path


def write_report(run_dirs: list[str], out: str) -> list[str]:
    """Write every figure and results.md into out; returns the paths written."""
    runs = [load_run(d) for d in run_dirs]
    for run, label in zip(runs, run_labels(run_dirs), strict=True):
        run["label"] = label
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file. Pass a folder for the report, e.g. --out report.")
    os.makedirs(out, exist_ok=True)
    written = [
        save(curves_figure(runs, "test_accuracy", "test accuracy"), out, "accuracy.png"),
        save(curves_figure(runs, "test_loss", "test loss"), out, "loss.png"),
        save(train_vs_test_figure(runs), out, "train_vs_test.png"),
        save(per_class_figure(runs), out, "per_class_accuracy.png"),
    ]
    confusions = []
    for run in runs:
        name = f"confusion-{file_label(run['label'])}.png"
        confusions.append(name)
        written.append(save(confusion_figure(run["summary"], run["label"]), out, name))
    figures = ["accuracy.png", "loss.png", "train_vs_test.png", "per_class_accuracy.png"]
    text = "\n".join(
        [
            "# Results",
            "",
            results_table(runs),
            "",
            "Test accuracy and loss are the last epoch's; wall time covers the whole run "
            "(training and evaluation); images/s is the mean training throughput over epochs, "
            "all processes together.",
            "",
            *[describe_hardware(run) for run in runs],
            "",
            *[f"![{name[:-4]}]({name})" for name in figures + confusions],
            "",
        ]
    )
    path = os.path.join(out, "results.md")
    atomic_write(path, text)
    return [*written, path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cifar.report", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders of train.py")
    parser.add_argument("--out", default="report", help="folder for the figures and results.md")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.run_dirs, args.out)
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
    print("\n".join(["report written:", *written]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
