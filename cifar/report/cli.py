"""Figures and a results table from run folders alone (config.json, metrics.jsonl, summary.json).

    python -m cifar.report runs/cnn-cifar10-20260101-120000 runs/resnet50-cifar10-... --out report

Writes into --out: accuracy.png and loss.png (test curves of all runs overlaid),
train_vs_test.png, per_class_accuracy.png, confusion-<run>.png for each run, and results.md
(the results table with the figures). Runs of different datasets get a section and figures
each (accuracy-<dataset>.png, ...).
"""

import argparse
import os

from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error
from cifar.record import atomic_write
from cifar.report.classes import confusion_figure, per_class_figure
from cifar.report.figures import curves_figure, train_vs_test_figure
from cifar.report.runs import dataset_groups, file_names, load_run, run_labels
from cifar.report.style import save
from cifar.report.table import results_markdown, test_images, train_images

FIGURES = {
    "accuracy": lambda runs: curves_figure(runs, "test_accuracy", "test accuracy"),
    "loss": lambda runs: curves_figure(runs, "test_loss", "test loss"),
    "train_vs_test": train_vs_test_figure,
    "per_class_accuracy": per_class_figure,
}


def name_data_in_legends(runs: list[dict]) -> None:
    """Where the runs of one figure trained or were tested on other images, the legend says
    on which."""
    for what, describe in (("train", train_images), ("test", test_images)):
        if len({describe(run) for run in runs}) > 1:
            for run in runs:
                run["legend"] = f"{run.get('legend', run['label'])}, {what} {describe(run)}"


def write_report(run_dirs: list[str], out: str) -> list[str]:
    """Write every figure and results.md into out; returns the paths written."""
    runs = [load_run(d) for d in run_dirs]
    for run, label in zip(runs, run_labels(run_dirs), strict=True):
        run["label"] = label
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file. Pass a folder for the report, e.g. --out report.")
    os.makedirs(out, exist_ok=True)
    groups = dataset_groups(runs)
    written = []
    for group in groups:
        name_data_in_legends(group["runs"])
        suffix = "" if len(groups) == 1 else f"-{group['name']}"
        group["figures"] = [f"{kind}{suffix}.png" for kind in FIGURES]
        for draw, name in zip(FIGURES.values(), group["figures"], strict=True):
            written.append(save(draw(group["runs"]), out, name))
    for run, name in zip(
        runs, file_names([r["label"] for r in runs], "confusion-", ".png"), strict=True
    ):
        run["confusion"] = name
        written.append(save(confusion_figure(run["summary"], run["label"]), out, name))
    path = os.path.join(out, "results.md")
    atomic_write(path, results_markdown(groups))
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
