"""The report: figures and a results table from run folders alone (`python -m cifar.report`).

runs.py reads the run folders; style.py holds what every figure shares; figures.py draws the
curves, classes.py the per-class figures; table.py writes results.md's text; cli.py puts them
together.
"""

from cifar.report.classes import confusion_figure, per_class_figure, style_per_class_axes
from cifar.report.cli import main, write_report
from cifar.report.figures import curves_figure, samples_figure, train_vs_test_figure
from cifar.report.runs import class_accuracies, file_names, load_run, run_labels
from cifar.report.style import save, style_epoch_axis
from cifar.report.table import format_seconds, results_markdown, results_table

__all__ = [
    "class_accuracies",
    "confusion_figure",
    "curves_figure",
    "file_names",
    "format_seconds",
    "load_run",
    "main",
    "per_class_figure",
    "results_markdown",
    "results_table",
    "run_labels",
    "samples_figure",
    "save",
    "style_epoch_axis",
    "style_per_class_axes",
    "train_vs_test_figure",
    "write_report",
]
