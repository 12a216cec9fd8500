"""The study's tables in W&B: one summary run in the study's group, beside the runs it sums up."""

import os

from cifar.trackers import WANDB, tracker_run_id


def arm_rows(study: dict) -> list[list]:
    rows = []
    for name, arm in study["arms"].items():
        for metric, stat in arm.items():
            if isinstance(stat, dict) and "n" in stat:
                low, high = stat["ci95"] or (None, None)
                rows.append([name, metric, stat["n"], stat["mean"], stat["std"], low, high])
    return rows


def pair_rows(study: dict) -> list[list]:
    return [
        [
            p["a"],
            p["b"],
            p["metric"],
            p["n"],
            p["mean_difference"],
            *(p["ci95"] or (None, None)),
            p["p_value"],
        ]
        for p in study["pairs"]
    ]


def summary_values(study: dict) -> dict:
    """<arm>/<metric>/<mean|std|ci95_low|ci95_high|n> and <a>-<b>/<metric>/<...> scalars."""
    values = {}
    for name, arm in study["arms"].items():
        for metric, stat in arm.items():
            if isinstance(stat, dict) and "n" in stat:
                values[f"{name}/{metric}/n"] = stat["n"]
                values[f"{name}/{metric}/mean"] = stat["mean"]
                values[f"{name}/{metric}/std"] = stat["std"]
                values[f"{name}/{metric}/ci95_low"] = stat["ci95"][0] if stat["ci95"] else None
                values[f"{name}/{metric}/ci95_high"] = stat["ci95"][1] if stat["ci95"] else None
    for p in study["pairs"]:
        key = f"{p['a']}-{p['b']}/{p['metric']}"
        values[f"{key}/n"] = p["n"]
        values[f"{key}/mean_difference"] = p["mean_difference"]
        values[f"{key}/ci95_low"] = p["ci95"][0] if p["ci95"] else None
        values[f"{key}/ci95_high"] = p["ci95"][1] if p["ci95"] else None
        values[f"{key}/p_value"] = p["p_value"]
    return {k: v for k, v in values.items() if v is not None}


def log_study(study: dict, out: str, run_config: dict, figures: list[str]) -> None:
    """Log the study's tables, figures and numbers as the run <name>-summary of the W&B project
    and group its runs used, with the runs' own W&B settings: offline into out/wandb (one
    warning) without credentials or an answering server, as train.py."""
    import wandb

    WANDB.check()  # the runs may have logged with other settings than this report's
    run = wandb.init(
        **WANDB.init_settings(out, run_config.get("wandb_entity") or ""),
        project=run_config.get("wandb_project") or "cifar-accelerate",
        group=study["name"],
        name=f"{study['name']}-summary",
        job_type="study-summary",
        id=tracker_run_id(out),
        config={
            "seeds": study["seeds"],
            "common_flags": study["common_flags"],
            "arms": {name: arm["flags"] for name, arm in study["arms"].items()},
        },
    )
    columns = ["arm", "metric", "n", "mean", "std", "ci95_low", "ci95_high"]
    pair_columns = ["a", "b", "metric", "n", "mean_difference", "ci95_low", "ci95_high", "p_value"]
    run.log(
        {
            "study/arms": wandb.Table(columns=columns, data=arm_rows(study)),
            "study/pairs": wandb.Table(columns=pair_columns, data=pair_rows(study)),
            **{f"study/{os.path.basename(path)[:-4]}": wandb.Image(path) for path in figures},
        }
    )
    run.summary.update(summary_values(study))
    note = WANDB.offline_note(run, "W&B summary run")
    run.finish()
    if note:
        print(note)
