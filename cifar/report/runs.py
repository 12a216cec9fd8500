"""The run folders a report reads: each checked and loaded, with a short unique label."""

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
