"""The run folders a report reads: each checked and loaded, with a short unique label, a file
name of its own, the accuracy of each class it was tested on, and the dataset it belongs to."""

import os
import re

from cifar.errors import UserError
from cifar.record import METRICS_FILE, SUMMARY_FILE, read_finished_run


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
    """Short unique names: the folder names, or paths below the common parent when they clash;
    printable (see printable), a repeated one numbered #2, #3, ..."""
    labels = [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    if len(set(labels)) < len(labels):
        paths = [os.path.abspath(d) for d in run_dirs]
        parent = os.path.commonpath(paths) if len(set(paths)) > 1 else os.path.dirname(paths[0])
        labels = [os.path.relpath(p, parent) for p in paths]
    unique, taken = [], set()
    for label in map(printable, labels):
        name, count = label, 1
        while name in taken:
            count += 1
            name = f"{label}#{count}"
        taken.add(name)
        unique.append(name)
    return unique


def printable(text: str) -> str:
    """text with control characters (a newline in a folder name) as '?' and bytes that are not
    UTF-8 (os.fsdecode's surrogates) as U+FFFD, so a table row or a figure title stays one
    line of valid text."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", re.sub(r"[\ud800-\udfff]", "\ufffd", text))


MAX_STEM = 80  # characters of a label kept in a file name, far below any file system's limit


def file_names(labels: list[str], prefix: str, suffix: str) -> list[str]:
    """One file name per label, prefix + stem + suffix, none equal to another even where
    labels differ only in characters a file name does not keep or in case (macOS and Windows
    file systems ignore case). The stem keeps the label's ASCII letters, digits, '.', '_' and
    '-'; other runs of characters become '_'; a stem that would clash gets -2, -3, ..."""
    names, taken = [], set()
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._")[:MAX_STEM] or "run"
        name, count = stem, 1
        while name.lower() in taken:
            count += 1
            name = f"{stem}-{count}"
        taken.add(name.lower())
        names.append(f"{prefix}{name}{suffix}")
    return names


def class_accuracies(summary: dict) -> dict:
    """Each class's test accuracy; None for a class with no test image, whether summary.json
    says null or (runs from before null) 0.0 beside an empty row of the confusion matrix."""
    rows = summary["confusion_matrix"]
    accuracy = summary["per_class_accuracy"]
    return {
        name: accuracy.get(name) if sum(row) else None
        for name, row in zip(summary["classes"], rows, strict=True)
    }


def untested_classes(summary: dict) -> list[str]:
    """The classes the run had no test image of, in the run's class order."""
    return [name for name, value in class_accuracies(summary).items() if value is None]


def dataset_groups(runs: list[dict]) -> list[dict]:
    """The runs by dataset (its name and classes), in the order they first appear:
    [{"name": unique file-name part, "title": ..., "runs": [...]}]. Accuracies on different
    test sets do not compare, so each group gets its own figures."""
    groups: dict[tuple, list] = {}
    for run in runs:
        summary = run["summary"]
        groups.setdefault((summary["dataset"], tuple(summary["classes"])), []).append(run)
    keys = list(groups)
    names = file_names([dataset for dataset, _ in keys], "", "")
    return [
        {
            "name": name,
            "title": f"{printable(dataset)} ({len(classes)} classes)",
            "runs": groups[dataset, classes],
        }
        for name, (dataset, classes) in zip(names, keys, strict=True)
    ]
