"""study.md: each comparison in one sentence, then the tables and the figures."""

import shlex

from cifar.report.table import format_seconds

# How each metric reads: a label, the scale of its numbers, their unit, and which way is better.
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
    stated = (
        f"{a} − {b}, {label}: {difference}{unit} (95% CI {low} to {high}, n = {n} seeds, p = {p})"
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
        )
        p = "–" if pair["p_value"] is None else f"{pair['p_value']:.2g}"
        metric = f"{label} ({unit.strip()})" if unit else label
        lines.append(
            f"| {pair['a']} − {pair['b']} | {metric} | {pair['n']} | {difference} | {ci} | {p} |"
        )
    return lines


def study_markdown(study: dict, figures: list[str]) -> str:
    runs = sum(len(arm["runs"]) for arm in study["arms"].values())
    missing = study["missing"]
    lines = [
        f"# Study {study['name']}",
        "",
        *[f"- {pair_sentence(pair)}" for pair in study["pairs"]],
        "",
        *arms_table(study),
        "",
        "Each cell: mean ± sample standard deviation over seeds [95% confidence interval of the "
        "mean, Student's t]; test accuracy and loss are the last epoch's.",
        "",
        *pairs_table(study),
        "",
        "Differences are a − b paired by seed over the seeds both arms finished; p is the "
        "two-sided p-value of the paired t-test.",
        "",
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
