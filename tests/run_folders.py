"""Finished run folders made up in a few milliseconds, as train.py writes them: for the report's
and the study's tests of what they draw and write, where training real runs would add nothing."""

import json
import random
from pathlib import Path


def write_run(
    folder: Path,
    *,
    seed: int = 0,
    epochs: int = 2,
    dataset: str = "synthetic",
    classes=("cat", "dog", "emu"),
    tested=None,
    zero_for_untested: bool = False,
    summary: dict | None = None,
    **config,
) -> Path:
    """A finished run folder made up as train.py writes one: `tested[i]` test images of class
    i (0: none, whose accuracy is null, or 0.0 as runs before null wrote it), the numbers drawn
    from the seed. summary overrides summary.json's keys, config those of config.json."""
    rng = random.Random(seed)
    tested = list(tested or [20] * len(classes))
    matrix = []
    for i, count in enumerate(tested):
        right = rng.randint(count // 2, count)
        row = [0] * len(classes)
        row[i] += right
        row[(i + 1) % len(classes)] += count - right
        matrix.append(row)
    per_class = {
        name: row[i] / sum(row) if sum(row) else (0.0 if zero_for_untested else None)
        for i, (name, row) in enumerate(zip(classes, matrix, strict=True))
    }
    accuracy = sum(matrix[i][i] for i in range(len(classes))) / max(sum(tested), 1)
    accuracy = (summary or {}).get("test_accuracy", accuracy)
    metrics = [
        {
            "format_version": 1,
            "epoch": epoch,
            "train_loss": 2.0 / epoch + rng.random() / 10,
            "train_accuracy": min(1.0, accuracy * epoch / epochs + rng.random() / 10),
            "test_loss": 2.2 / epoch + rng.random() / 10,
            "test_accuracy": accuracy * epoch / epochs,
            "lr": 0.01,
            "epoch_seconds": 1.5,
            "train_images_per_second": 600.0 + rng.random(),
        }
        for epoch in range(1, epochs + 1)
    ]
    record = {
        "format_version": 1,
        "model": "cnn",
        "dataset": dataset,
        "epochs": epochs,
        "test_accuracy": accuracy,
        "test_loss": metrics[-1]["test_loss"],
        "best_test_accuracy": accuracy,
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "classes": list(classes),
        "num_test_samples": sum(tested),
        "world_size": 1,
        "mixed_precision": "no",
        "wall_seconds": 1.5 * epochs + 0.5,
        "train_images_per_second": 600.0,
        **(summary or {}),
    }
    settings = {
        "format_version": 1,
        "dataset": dataset,
        "train_subset": 0,
        "test_subset": 0,
        "synthetic_train_size": 1024,
        "seed": seed,
        "device_name": "a test CPU",
        **config,
    }
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(settings))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (folder / "summary.json").write_text(json.dumps(record))
    return folder
