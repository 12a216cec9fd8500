"""The report: figures and a results table from run folders alone (`python -m cifar.report`).

runs.py reads the run folders, figures.py draws, table.py writes results.md's text, cli.py
puts them together.
"""

from cifar.report.cli import main, write_report
from cifar.report.figures import (
    confusion_figure,
    curves_figure,
    per_class_figure,
    samples_figure,
    save,
    style_epoch_axis,
    style_per_class_axes,
    train_vs_test_figure,
)
from cifar.report.runs import file_label, load_run, run_labels
from cifar.report.table import describe_hardware, format_seconds, results_table

__all__ = [
    "confusion_figure",
    "curves_figure",
    "describe_hardware",
    "file_label",
    "format_seconds",
    "load_run",
    "main",
    "per_class_figure",
    "results_table",
    "run_labels",
    "samples_figure",
    "save",
    "style_epoch_axis",
    "style_per_class_axes",
    "train_vs_test_figure",
    "write_report",
]
