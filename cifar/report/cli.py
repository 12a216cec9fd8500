"""Figures and a results table from run folders alone (config.json, metrics.jsonl, summary.json).

    python -m cifar.report runs/cnn-cifar10-20260101-120000 runs/resnet50-cifar10-... --out report

Writes into --out: accuracy.png and loss.png (test curves of all runs overlaid),
train_vs_test.png, per_class_accuracy.png, confusion-<run>.png for each run, and results.md
(the results table with the figures).
"""

import argparse
import os

from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error
from cifar.record import atomic_write
from cifar.report.figures import (
    confusion_figure,
    curves_figure,
    per_class_figure,
    save,
    train_vs_test_figure,
)
from cifar.report.runs import file_label, load_run, run_labels
from cifar.report.table import describe_hardware, results_table


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
