"""study.md: each comparison in one sentence, then the tables and the figures."""

import shlex

from cifar.report.table import format_seconds

# How each metric reads: a label, the scale of its numbers, their unit, and which way is better.
CLIPPED = "†"  # marks an interval cut to its metric's range
METRIC_TEXT = {
    "test_accuracy": ("test accuracy", 100, " points", "is more accurate", "higher"),
    "test_loss": ("test loss", 1, "", "has the lower test loss", "lower"),
}


def number(value, scale: float, digits: int) -> str:
    return f"{value * scale:+.{digits}f}"


def pair_sentence(pair: dict) -> str:
    """One sentence: a - b with its interval, n and p, and what the interval shows."""
    label, scale, unit, better, direction = METRIC_TEXT[pair["metric"]]
    digits = 2 if scale == 100 else 4
    a, b, n = pair["a"], pair["b"], pair["n"]
    if n == 0:
        return f"{a} vs {b}, {label}: no seed has finished in both arms yet, so no comparison."
    difference = number(pair["mean_difference"], scale, digits)
    if pair["ci95"] is None:
        return (
            f"{a} − {b}, {label}: {difference}{unit} from n = 1 paired seed; one seed gives no "
            f"interval, so this says nothing about how sure it is (run more seeds)."
        )
    low, high = (number(v, scale, digits) for v in pair["ci95"])
    p = "n/a (all differences are 0)" if pair["p_value"] is None else f"{pair['p_value']:.2g}"
    mark = CLIPPED if pair.get("clipped") else ""
    stated = (
        f"{a} − {b}, {label}: {difference}{unit} (95% CI {low} to {high}{mark}, n = {n} seeds, "
        f"p = {p})"
    )
    higher_is_better = direction == "higher"
    if pair["ci95"][0] > 0 or pair["ci95"][1] < 0:
        a_wins = (pair["ci95"][0] > 0) == higher_is_better
        return f"{stated}: {a if a_wins else b} {better}."
    return f"{stated}: the interval includes 0, so these {n} seeds do not show a difference."


def stat_cell(stat: dict, scale: float = 1, digits: int = 4, seconds: bool = False) -> str:
    """mean ± std [ci low, ci high] of one statistic; only what exists."""
    if stat["mean"] is None:
        return "–"

    def show(v):
        return format_seconds(v) if seconds else f"{v * scale:,.{digits}f}"

    text = show(stat["mean"])
    if stat["std"] is not None:
        text += f" ± {show(stat['std'])}"
    if stat["ci95"] is not None:
        text += f" [{show(stat['ci95'][0])}, {show(stat['ci95'][1])}]"
        text += CLIPPED if stat.get("clipped") else ""
    return text


def arms_table(study: dict) -> list[str]:
    lines = [
        "| arm | n | test accuracy (%) | best test accuracy (%) | test loss | wall time "
        "| images/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, arm in study["arms"].items():
        lines.append(
            f"| {name} | {arm['test_accuracy']['n']} | {stat_cell(arm['test_accuracy'], 100, 2)} "
            f"| {stat_cell(arm['best_test_accuracy'], 100, 2)} | {stat_cell(arm['test_loss'])} "
            f"| {stat_cell(arm['wall_seconds'], seconds=True)} "
            f"| {stat_cell(arm['train_images_per_second'], digits=0)} |"
        )
    return lines


def pairs_table(study: dict) -> list[str]:
    lines = [
        "| a − b | metric | n | mean difference | 95% CI | p (paired t-test) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for pair in study["pairs"]:
        label, scale, unit, _, _ = METRIC_TEXT[pair["metric"]]
        digits = 2 if scale == 100 else 4
        difference = (
            "–"
            if pair["mean_difference"] is None
            else number(pair["mean_difference"], scale, digits)
        )
        ci = (
            "–"
            if pair["ci95"] is None
            else " to ".join(number(v, scale, digits) for v in pair["ci95"])
            + (CLIPPED if pair.get("clipped") else "")
        )
        p = "–" if pair["p_value"] is None else f"{pair['p_value']:.2g}"
        metric = f"{label} ({unit.strip()})" if unit else label
        lines.append(
            f"| {pair['a']} − {pair['b']} | {metric} | {pair['n']} | {difference} | {ci} | {p} |"
        )
    return lines


def clipped_note(study: dict) -> list[str]:
    """The footnote to CLIPPED, where an interval of study.md was cut."""
    stats = [
        stat
        for arm in study["arms"].values()
        for stat in arm.values()
        if isinstance(stat, dict) and "n" in stat
    ]
    if not any(s.get("clipped") for s in [*stats, *study["pairs"]]):
        return []
    return [
        f"{CLIPPED} The t-interval reached past the values the metric can take (an accuracy "
        "0-100%, a difference of accuracies ±100 points, a loss, time or rate ≥ 0) and is cut "
        "there: the mean cannot lie outside, but an interval that wide says that these few "
        "seeds pin the mean down poorly. More seeds narrow it.",
        "",
    ]


def untested_note(study: dict) -> list[str]:
    """Which runs had no test image of a class, left out of that class's per-class accuracy."""
    lines = [
        f"- {name}: "
        + ", ".join(
            f"{c} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            for c, seeds in arm.get("no_test_image", {}).items()
        )
        for name, arm in study["arms"].items()
        if arm.get("no_test_image")
    ]
    if not lines:
        return []
    return [
        "No test image of these classes in these runs (e.g. --test-subset): such a run has no "
        "accuracy for the class, and its per-class mean is over the other runs (none if no run "
        "had one):",
        *lines,
        "",
    ]


def unpaired_sentences(study: dict) -> list[str]:
    """One sentence per pair of arms that score other test images."""
    return [
        f"- {pair['a']} and {pair['b']} are not compared: they score other test images "
        f"({pair['test_sets_differ']}), so their difference would not be the arms' alone."
        for pair in study.get("unpaired", [])
    ]


def pair_sentences(study: dict) -> list[str]:
    """One sentence per pair (and per pair not compared); with one arm, that there is no pair
    to compare."""
    if study.get("unpaired"):
        return [f"- {pair_sentence(pair)}" for pair in study["pairs"]] + unpaired_sentences(study)
    if not study["pairs"]:
        names = ", ".join(study["arms"]) or "none"
        return [
            f"- One arm ({names}): there is no pair to compare. Add an arm (`--arm NAME=FLAGS`) "
            f"to compare it with."
        ]
    return [f"- {pair_sentence(pair)}" for pair in study["pairs"]]


def pairs_section(study: dict) -> list[str]:
    """The pairs table with what its numbers are; nothing without a pair."""
    if not study["pairs"]:
        return []
    return [
        *pairs_table(study),
        "",
        "Differences are a − b paired by seed over the seeds both arms finished; p is the "
        "two-sided p-value of the paired t-test.",
        "",
    ]


def study_markdown(study: dict, figures: list[str]) -> str:
    runs = sum(len(arm["runs"]) for arm in study["arms"].values())
    missing = study["missing"]
    lines = [
        f"# Study {study['name']}",
        "",
        *pair_sentences(study),
        "",
        *arms_table(study),
        "",
        "Each cell: mean ± sample standard deviation over seeds [95% confidence interval of the "
        "mean, Student's t]; test accuracy and loss are the last epoch's.",
        "",
        *pairs_section(study),
        *clipped_note(study),
        *untested_note(study),
        f"{runs} finished run(s); "
        + (f"{len(missing)} missing or unfinished, not counted:" if missing else "none missing."),
        *[f"- `{folder}`" for folder in missing],
        "",
        f"Seeds: {' '.join(map(str, study['seeds']))}. Flags of every run: "
        f"`{shlex.join(study['common_flags']) or '(none)'}`. Arms:",
        *[f"- {name}: `{arm['flags']}`" for name, arm in study["arms"].items()],
        "",
        *[f"![{name[:-4]}]({name})" for name in figures],
        "",
    ]
    return "\n".join(lines)
