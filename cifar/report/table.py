"""results.md's text: per dataset, the results table, the data each run used, what it ran on
and the figures."""

import re

from cifar.record.schema import is_count
from cifar.report.runs import printable, untested_classes


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def cell(text) -> str:
    """text in one table cell: printable, its '|' not ending the cell."""
    return printable(str(text)).replace("|", "\\|")


def code(text: str) -> str:
    """text as Markdown code, fenced by more backticks than it holds in a row."""
    text = printable(text)
    longest = max(map(len, re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {text} {fence}" if longest else f"{fence}{text}{fence}"


def count_of(config: dict, key: str) -> int:
    value = config.get(key)
    return value if is_count(value) else 0


def train_images(run: dict) -> str:
    """How many images the run trained on: the count where the run folder tells it (config.json's
    train_images, or a synthetic set's size), else what --train-subset asked for, else all."""
    config = run["config"]
    subset = count_of(config, "train_subset")
    known = config.get("train_images")
    if not is_count(known) and config.get("dataset") == "synthetic":
        size = count_of(config, "synthetic_train_size")
        known = min(size, subset) if size and subset else size or None
    if is_count(known):
        return f"{known:,}" + (" (subset)" if subset else "")
    return f"first {subset:,}" if subset else "all"


def test_images(run: dict) -> str:
    """The images the run was tested on (summary.json counts them), marked when a subset."""
    subset = count_of(run["config"], "test_subset")
    return f"{run['summary']['num_test_samples']:,}" + (" (subset)" if subset else "")


def results_table(runs: list[dict]) -> str:
    """The Markdown results table: one row per run, numbers from summary.json."""
    lines = [
        "| run | model | dataset | train images | test images | test accuracy "
        "| final test loss | epochs | wall time | images/s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run["summary"]
        lines.append(
            f"| {cell(run['label'])} | {cell(s['model'])} | {cell(s['dataset'])} "
            f"| {train_images(run)} | {test_images(run)} | {s['test_accuracy']:.2%} "
            f"| {s['test_loss']:.4f} | {s['epochs']} | {format_seconds(s['wall_seconds'])} "
            f"| {s['train_images_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def scoring(run: dict) -> str:
    """What the run's test figures come from (summary.json's fields; a run from before them
    scored its trained weights without test-time flips)."""
    summary = run["summary"]
    weights = summary.get("scored_weights", "trained")
    flips = summary.get("test_time_augmentation", "none")
    return f"weights {cell(weights)}, test-time augmentation {cell(flips)}"


def data_notes(runs: list[dict]) -> list[str]:
    """Sentences for what a reader could miss: runs of one table trained or tested on other
    images or scored differently, and classes a run had no test image of."""
    notes = []
    for what, describe, sets in (
        ("train", train_images, "training sets"),
        ("test", test_images, "test sets"),
    ):
        if len({describe(run) for run in runs}) > 1:
            each = "; ".join(f"{cell(run['label'])}: {describe(run)}" for run in runs)
            notes.append(
                f"- These runs differ in their {what} images ({each}): their accuracies come "
                f"from different {sets}."
            )
    if len({scoring(run) for run in runs}) > 1:
        each = "; ".join(f"{cell(run['label'])}: {scoring(run)}" for run in runs)
        notes.append(
            f"- These runs differ in what was scored ({each}): their test figures come from "
            f"different evaluations."
        )
    for run in runs:
        untested = untested_classes(run["summary"])
        if untested:
            subset = count_of(run["config"], "test_subset")
            why = f" (--test-subset {subset})" if subset else ""
            notes.append(
                f"- {cell(run['label'])}: no test image of {', '.join(map(cell, untested))}{why}: "
                f"no accuracy for {'it' if len(untested) == 1 else 'them'}, left out of the "
                f"per-class figure."
            )
    return notes


def describe_hardware(run: dict) -> str:
    config, summary = run["config"], run["summary"]
    device = config.get("device_name") or config.get("device") or "unknown device"
    return (
        f"- {cell(run['label'])}: {code(run['dir'])}, {cell(device)}, "
        f"{summary['world_size']} process(es), mixed precision {cell(summary['mixed_precision'])}"
    )


def results_markdown(groups: list[dict]) -> str:
    """results.md: per dataset group ({"title", "runs", "figures"}, each run with its
    "confusion" figure), the table, the notes on data, the hardware and the figures."""
    lines = ["# Results", ""]
    if len(groups) > 1:
        titles = ", ".join(group["title"] for group in groups)
        lines += [
            f"These runs use {len(groups)} datasets ({titles}): each has its own table and "
            f"figures below, as accuracies on different test sets do not compare.",
            "",
        ]
    lines += [
        "Test accuracy and loss are the last epoch's; wall time covers the whole run "
        "(training and evaluation); images/s is the mean training throughput over epochs, "
        "all processes together.",
        "",
    ]
    for group in groups:
        runs = group["runs"]
        if len(groups) > 1:
            lines += [f"## {group['title']}", ""]
        notes = data_notes(runs)
        lines += [results_table(runs), "", *notes, *([""] if notes else [])]
        lines += [*map(describe_hardware, runs), ""]
        names = group["figures"] + [run["confusion"] for run in runs]
        lines += [*[f"![{name[:-4]}]({name})" for name in names], ""]
    return "\n".join(lines)
