"""results.md's text: the results table and what each run ran on."""


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def results_table(runs: list[dict]) -> str:
    """The Markdown results table: one row per run, numbers from summary.json."""
    lines = [
        "| run | model | dataset | test accuracy | final test loss | epochs | wall time "
        "| images/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run["summary"]
        lines.append(
            f"| {run['label']} | {s['model']} | {s['dataset']} | {s['test_accuracy']:.2%} "
            f"| {s['test_loss']:.4f} | {s['epochs']} | {format_seconds(s['wall_seconds'])} "
            f"| {s['train_images_per_second']:,.0f} |"
        )
    return "\n".join(lines)


def describe_hardware(run: dict) -> str:
    config, summary = run["config"], run["summary"]
    device = config.get("device_name") or config.get("device") or "unknown device"
    return (
        f"- {run['label']}: `{run['dir']}`, {device}, {summary['world_size']} process(es), "
        f"mixed precision {summary['mixed_precision']}, {summary['num_test_samples']} test images"
    )
