"""A study's results from its run folders: study.json, study.md, the figures, a W&B summary run.

Only finished runs (summary.json written) count; absent and unfinished ones are listed as
missing, never averaged. The runs of an arm are averaged only when they resolved to the same
settings (every one that resume keeps fixed, the seed aside); an arm whose runs did not is
refused. Pairs compare later arms with earlier ones (a - b), paired by seed.
"""

import json
import os

from cifar.config import RESUME_MAY_CHANGE, SETTING_DEFAULTS
from cifar.errors import UserError
from cifar.record import (
    PROGRESS_FILE,
    SUMMARY_FILE,
    atomic_write,
    checkpoints_dir,
    list_checkpoints,
    read_finished_run,
    read_json,
)
from cifar.report.runs import class_accuracies
from cifar.study.grid import STUDY_JSON, STUDY_MD, cells, run_folder
from cifar.study.statistics import RANGES, compare_paired, describe, difference_range
from cifar.trackers import summarizes_studies

METRICS = (
    "test_accuracy",
    "best_test_accuracy",
    "test_loss",
    "wall_seconds",
    "train_images_per_second",
)
PAIR_METRICS = ("test_accuracy", "test_loss")
CURVE_KEYS = ("test_accuracy", "test_loss")
# Config fields that differ between the runs of one study by design.
RUN_SETTINGS = ("output_dir", "resume", "seed")
# config.json's record of where and with what a run ran: resume lets these change.
RUN_DESCRIPTION = ("format_version", "device", "device_name", "versions", "process_settings")
# config.json's names for what the launcher resolved a setting to.
RESOLVED_AS = {
    "mixed_precision_used": "mixed_precision",
    "gradient_accumulation_steps_used": "gradient_accumulation_steps",
}


def check_run(folder: str, config: dict, expected: dict, seed: int) -> None:
    """A UserError unless the run in folder was made with this study's settings for its seed."""
    fix = (
        f"Move {folder} away (the study then trains that run again) or restore it from the run "
        f"that made it."
    )
    # A setting the run does not record (it was added later) is read as train.py reads it on
    # resume: its default (tta: off, as such runs were scored).
    recorded = {k: config.get(k, SETTING_DEFAULTS.get(k, v)) for k, v in expected.items()}
    differ = [
        f"{k} {recorded[k]!r} (the study's: {v!r})"
        for k, v in expected.items()
        if k not in (*RUN_SETTINGS, *RESUME_MAY_CHANGE) and recorded[k] != v
    ]
    if config.get("seed") != seed:
        differ.insert(0, f"seed {config.get('seed')!r} (the study's: {seed})")
    if differ:
        raise UserError(
            f"{folder} holds a run made with other settings than this study's: "
            f"{'; '.join(differ[:3])}. {fix}"
        )


def checkpoint_settings(run_dir: str) -> dict:
    """The settings the newest readable checkpoint recorded (resolved, with the data sizes);
    {} when the run keeps no checkpoint."""
    for folder in reversed(list_checkpoints(checkpoints_dir(run_dir))):
        try:
            progress = read_json(os.path.join(folder, PROGRESS_FILE))
        except (OSError, ValueError):
            continue
        if isinstance(progress, dict) and isinstance(progress.get("settings"), dict):
            return progress["settings"]
    return {}


def resolved_settings(run: dict) -> dict:
    """What a finished run resolved to, of the settings resume keeps fixed (the seed aside):
    config.json with the launcher's precision and accumulation, then its newest checkpoint's
    settings (the number of train and test images too), and the global batch (images per step
    over all processes). A setting of the Config that neither records (a run from before it
    existed) is its default, as resume reads it."""
    config = run["config"]
    settings = {k: v for k, v in config.items() if k not in (*RUN_DESCRIPTION, *RESOLVED_AS)}
    settings.update({name: config[used] for used, name in RESOLVED_AS.items() if used in config})
    settings.update(checkpoint_settings(run["dir"]))
    for name, default in SETTING_DEFAULTS.items():  # recorded by neither: added later
        settings.setdefault(name, default)
    settings = {k: v for k, v in settings.items() if k not in (*RUN_SETTINGS, *RESUME_MAY_CHANGE)}
    batch, world = settings.get("batch_size"), settings.get("world_size")
    if isinstance(batch, int) and isinstance(world, int):
        settings["global_batch_size"] = batch * world
    return settings


def shared_settings(runs: list[dict]) -> dict:
    """The resolved settings every one of runs records with one value."""
    each = [resolved_settings(run) for run in runs]
    if not each:
        return {}
    return {k: v for k, v in each[0].items() if all(k in s and s[k] == v for s in each)}


def seeds_text(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def pooling_refusal(arm: str, runs: dict[int, dict]) -> str:
    """Why the finished runs {seed: run} of one arm may not be averaged, or "" when every
    setting both of two runs record agrees (one a run does not record, e.g. the image counts of
    a run whose checkpoints were deleted, cannot be compared and is not)."""
    settings = {seed: resolved_settings(run) for seed, run in runs.items()}
    first = next(iter(settings), None)
    differ, odd = [], []
    for key in dict.fromkeys(k for s in settings.values() for k in s):
        values = {}  # JSON text of a value -> the seeds that resolved to it
        for seed, s in settings.items():
            if key in s:
                values.setdefault(json.dumps(s[key], sort_keys=True), []).append(seed)
        if len(values) > 1:
            shown = " vs ".join(f"{value} ({seeds_text(seeds)})" for value, seeds in values.items())
            differ.append(f"{key} {shown}")
            odd += [seed for seeds in list(values.values())[1:] for seed in seeds]
    if not differ:
        return ""
    others = [runs[seed]["dir"] for seed in settings if seed in odd]
    return (
        f"arm {arm} holds runs that resolved to different settings, so the study does not "
        f"average them: {'; '.join(differ)}. Runs pool only when every setting that train.py "
        f"keeps on resume agrees (world size, global batch, precision and accumulation from the "
        f"launcher included). Move {', '.join(others)} out of the study and run it again with "
        f"the launcher that trained {runs[first]['dir']}, or train them in a study of their own "
        f"(another --out)."
    )


def unpooled(grid: dict, finished: dict) -> dict[str, str]:
    """{arm: why its finished runs may not be averaged} for every arm whose runs do not pool."""
    refusals = {}
    for arm in grid["arms"]:
        runs = {seed: finished[arm, seed] for seed in grid["seeds"] if (arm, seed) in finished}
        refusal = pooling_refusal(arm, runs)
        if refusal:
            refusals[arm] = refusal
    return refusals


def refuse_unpooled(grid: dict, finished: dict) -> None:
    refusals = unpooled(grid, finished)
    if refusals:
        raise UserError(" ".join(refusals.values()))


def collect_runs(grid: dict, out: str, configs: dict) -> dict:
    """{"finished": {(arm, seed): run}, "missing": [folders]}; a UserError for a damaged run
    folder or one made with other settings than the study gives it."""
    finished, missing = {}, []
    for arm, seed in cells(grid):
        folder = run_folder(out, arm, seed)
        if not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
            missing.append(folder)
            continue
        fix = f"Move {folder} away (the study then trains that run again)."
        run = read_finished_run(folder, fix)
        check_run(folder, run["config"], configs[arm, seed], seed)
        finished[arm, seed] = run
    return {"finished": finished, "missing": missing}


def curve(runs: list[dict], key: str) -> list[dict]:
    """Mean and interval of one metrics.jsonl key per epoch, over the runs that reached it."""
    epochs = sorted({r["epoch"] for run in runs for r in run["metrics"]})
    values = {
        e: [r[key] for run in runs for r in run["metrics"] if r["epoch"] == e] for e in epochs
    }
    return [{"epoch": e, **describe(values[e], RANGES[key])} for e in epochs]


def per_class(runs: list[dict], seeds: list[int]) -> tuple[dict, dict]:
    """Each class's accuracy over the runs that had a test image of it, and the seeds whose run
    had none of a class ({class: [seeds]}, only such classes): those runs have no accuracy for
    it, which is left out, not counted as 0."""
    accuracies = [class_accuracies(run["summary"]) for run in runs]
    classes = list(dict.fromkeys(c for accuracy in accuracies for c in accuracy))
    stats = {
        c: describe(
            [a[c] for a in accuracies if a.get(c) is not None], RANGES["per_class_accuracy"]
        )
        for c in classes
    }
    untested = {
        c: [seed for seed, a in zip(seeds, accuracies, strict=True) if c in a and a[c] is None]
        for c in classes
    }
    return stats, {c: found for c, found in untested.items() if found}


# What a run's test images are: arms that differ in one of these score other images, and their
# difference would not be the arms' alone, so they are not paired.
TEST_SET = ("dataset", "test_subset", "test_images")


def test_set_difference(a: dict, b: dict) -> str:
    """'dataset 'cifar10' vs 'fashion-mnist'' when the arms' shared settings a and b name other
    test images; "" when they agree (or one does not record a setting)."""
    return "; ".join(
        f"{name} {a[name]!r} vs {b[name]!r}"
        for name in TEST_SET
        if name in a and name in b and a[name] != b[name]
    )


def aggregate(grid: dict, collected: dict) -> dict:
    """study.json's content (see docs/study.md for its schema)."""
    finished = collected["finished"]
    arms, by_seed = {}, {}
    for arm, flags in grid["arms"].items():
        seeds = [s for s in grid["seeds"] if (arm, s) in finished]
        runs = [finished[arm, s] for s in seeds]
        by_seed[arm] = {m: {s: finished[arm, s]["summary"][m] for s in seeds} for m in METRICS}
        classes, untested = per_class(runs, seeds)
        arms[arm] = {
            "flags": flags,
            "settings": shared_settings(runs),
            "runs": [run["dir"] for run in runs],
            "seeds": seeds,
            "per_seed": {m: list(by_seed[arm][m].values()) for m in METRICS},
            **{m: describe(by_seed[arm][m].values(), RANGES[m]) for m in METRICS},
            "per_class_accuracy": classes,
            "no_test_image": untested,
            "curves": {key: curve(runs, key) for key in CURVE_KEYS},
        }
    names = list(grid["arms"])
    differ = {
        (a, b): test_set_difference(arms[a]["settings"], arms[b]["settings"])
        for j, a in enumerate(names)
        for b in names[:j]
    }
    pairs = [
        {
            "a": a,
            "b": b,
            "metric": metric,
            **compare_paired(
                by_seed[a][metric], by_seed[b][metric], difference_range(RANGES[metric])
            ),
        }
        for j, a in enumerate(names)
        for b in names[:j]
        if not differ[a, b]
        for metric in PAIR_METRICS
    ]
    unpaired = [{"a": a, "b": b, "test_sets_differ": why} for (a, b), why in differ.items() if why]
    return {
        "name": grid["name"],
        "seeds": grid["seeds"],
        "common_flags": grid["common"],
        "arms": arms,
        "pairs": pairs,
        "unpaired": unpaired,
        "missing": collected["missing"],
    }


def refuse_empty(out: str, collected: dict) -> None:
    """A UserError when no run of the study has finished: there is nothing to report."""
    if not collected["finished"]:
        raise UserError(
            f"no run of the study in {out} has finished yet ({len(collected['missing'])} "
            f"missing, e.g. {collected['missing'][0] if collected['missing'] else out}). Train "
            f"them with the same `python -m cifar.study --out {out} ...` command (or "
            f"slurm/sweep.sh), then report."
        )


def write_study(grid: dict, out: str, collected: dict) -> list[str]:
    """study.json, study.md and the figures in out (plus the W&B summary run when the runs used
    W&B); returns the paths written. A UserError when no run has finished, or when the runs of
    an arm do not pool."""
    refuse_empty(out, collected)
    refuse_unpooled(grid, collected["finished"])
    from cifar.study.figures import write_figures
    from cifar.study.markdown import study_markdown

    study = aggregate(grid, collected)
    os.makedirs(out, exist_ok=True)
    # An arm with no finished run has nothing to draw (its failed run is reported elsewhere).
    drawn = {name: arm for name, arm in study["arms"].items() if arm["seeds"]}
    pairs = [p for p in study["pairs"] if p["a"] in drawn and p["b"] in drawn]
    figures = write_figures({**study, "arms": drawn, "pairs": pairs}, out)
    written = []
    for name, text in (
        (STUDY_JSON, json.dumps(study, indent=1) + "\n"),
        (STUDY_MD, study_markdown(study, [os.path.basename(f) for f in figures])),
    ):
        path = os.path.join(out, name)
        atomic_write(path, text)
        written.append(path)
    configs = [run["config"] for run in collected["finished"].values()]
    logged = [c for c in configs if summarizes_studies(c.get("tracker"))]
    if logged:
        from cifar.study.tracker import log_study

        log_study(study, out, logged[0], figures)
    return [*written, *figures]
