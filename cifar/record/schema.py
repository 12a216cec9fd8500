"""What each record of a run folder holds, typed and versioned, and one validator per record.

Every record carries ``format_version``. A record without it was written before records were
versioned (version 0). A reader accepts every version up to FORMAT_VERSION and keys it does not
know, so a run started before an upgrade resumes after it and is read by the report and the
study. Adding a metric is one line in EPOCH_FIELDS with the next version, and FORMAT_VERSION
raised to it: older records are then checked for the fields they had.
"""

import math

FORMAT_VERSION = 2
FORMAT_KEY = "format_version"

# One line of metrics.jsonl (and of a checkpoint's history): field -> version that added it.
EPOCH_FIELDS = {
    "epoch": 0,
    "train_loss": 0,
    "train_accuracy": 0,
    "test_loss": 0,
    "test_accuracy": 0,
    "lr": 0,
    "epoch_seconds": 0,
    "train_images_per_second": 0,
}
METRIC_KEYS = tuple(EPOCH_FIELDS)

# summary.json: field -> (kind, version that added it). Kinds are checked by KIND_CHECKS.
SUMMARY_FIELDS = {
    "model": ("text", 0),
    "dataset": ("text", 0),
    "epochs": ("count", 0),
    "test_accuracy": ("number", 0),
    "test_loss": ("number", 0),
    "best_test_accuracy": ("number", 0),
    "per_class_accuracy": ("per_class", 0),
    "confusion_matrix": ("matrix", 0),
    "classes": ("texts", 0),
    "num_test_samples": ("count", 0),
    "world_size": ("count", 0),
    "mixed_precision": ("text", 0),
    "wall_seconds": ("number", 0),
    "train_images_per_second": ("number", 0),
    # Which weights and inputs test_accuracy and test_loss come from: "trained" or "ema DECAY"
    # (--ema), "none" or "flip" (--tta).
    "scored_weights": ("text", 2),
    "test_time_augmentation": ("text", 2),
}
SUMMARY_KEYS = tuple(SUMMARY_FIELDS)

# model.json: field -> (kind, version that added it). Model cards began at version 1.
MODEL_FIELDS = {
    "model": ("text", 1),
    "builder": ("mapping", 1),
    "classes": ("texts", 1),
    "image_size": ("count", 1),
    "input_size": ("count", 1),
    "mean": ("channels", 1),
    "std": ("channels", 1),
    "weights": ("text", 1),
    "weights_sha256": ("text", 1),
    "input": ("mapping", 1),
    "network_input": ("mapping", 1),
    "output": ("mapping", 1),
}


# What config.json records beside the Config's own settings (assemble.describe_run writes them).
CONFIG_RECORD_KEYS = (
    FORMAT_KEY,
    "world_size",
    "mixed_precision_used",
    "gradient_accumulation_steps_used",
    "device",
    "device_name",
    "process_settings",
    "train_images",
    "test_images",
    "image_folder_manifest",
    "versions",
)


class RecordError(ValueError):
    """A record is not what this version of cifar-accelerate writes or can read."""


def is_number(value) -> bool:
    """A finite int or float (not a bool): the one meaning of "a number" in every record."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


KIND_NAMES = {
    "number": "a number",
    "count": "a count",
    "text": "text",
    "texts": "a list of names",
    "per_class": "a mapping of class to accuracy (or null)",
    "matrix": "a matrix of counts",
    "mapping": "an object",
    "channels": "three numbers, one per RGB channel",
}
KIND_CHECKS = {
    "number": is_number,
    "count": is_count,
    "text": lambda v: isinstance(v, str),
    "texts": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    # A class with no test image has no accuracy: null.
    "per_class": lambda v: (
        isinstance(v, dict) and all(x is None or is_number(x) for x in v.values())
    ),
    "matrix": lambda v: (
        isinstance(v, list) and all(isinstance(row, list) and all(map(is_count, row)) for row in v)
    ),
    "mapping": lambda v: isinstance(v, dict),
    "channels": lambda v: isinstance(v, list) and len(v) == 3 and all(map(is_number, v)),
}


def versioned(record: dict) -> dict:
    """record with the current format version first, as every writer stores it."""
    return {FORMAT_KEY: FORMAT_VERSION, **{k: v for k, v in record.items() if k != FORMAT_KEY}}


def record_version(record) -> int:
    """The format version of a parsed record; a RecordError when it is not one this version
    reads (not an object, a bad version, or a newer one)."""
    if not isinstance(record, dict):
        raise RecordError(f"expected an object, got {type(record).__name__}")
    version = record.get(FORMAT_KEY, 0)
    if not is_count(version):
        raise RecordError(f"{FORMAT_KEY} {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise RecordError(
            f"written in format {version} by a newer cifar-accelerate; this one reads formats "
            f"up to {FORMAT_VERSION}: upgrade it"
        )
    return version


def metric_values(record: dict) -> dict:
    """The metrics of an epoch record, without its format version (what trackers log)."""
    return {k: v for k, v in record.items() if k != FORMAT_KEY}


def check_epoch_record(record, number: int) -> None:
    """A RecordError unless record is epoch `number`'s record (1-based) with every metric its
    version had, each a number."""
    try:
        version = record_version(record)
    except RecordError as error:
        raise RecordError(f"epoch record {number}: {error}") from None
    missing = [k for k, since in EPOCH_FIELDS.items() if since <= version and k not in record]
    if missing:
        raise RecordError(f"epoch record {number} lacks {', '.join(missing)}")
    bad = [k for k in EPOCH_FIELDS if k in record and not is_number(record[k])]
    if bad:
        raise RecordError(f"epoch record {number} holds a bad value in {', '.join(bad)}")
    if record["epoch"] != number:
        raise RecordError(f"epoch record {number} says epoch {record['epoch']!r}")


def check_epoch_records(records) -> None:
    """A RecordError unless records are the records of epochs 1, 2, ... in order."""
    if not isinstance(records, list):
        raise RecordError("expected one record per line")
    for number, record in enumerate(records, start=1):
        check_epoch_record(record, number)


def check_fields(record, fields: dict) -> int:
    """A RecordError unless record holds every field its version had, each of its kind; returns
    the version."""
    version = record_version(record)
    for key, (kind, since) in fields.items():
        if since > version:
            continue
        if key not in record:
            raise RecordError(f"it lacks {key}")
        if not KIND_CHECKS[kind](record[key]):
            raise RecordError(f"its {key} is not {KIND_NAMES[kind]}")
    return version


def check_summary(summary) -> None:
    """A RecordError unless summary is a finished run's summary.json of a version we read."""
    check_fields(summary, SUMMARY_FIELDS)
    classes, matrix = summary["classes"], summary["confusion_matrix"]
    square = len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    if not square or set(summary["per_class_accuracy"]) != set(classes):
        raise RecordError("its classes, per_class_accuracy and confusion_matrix do not agree")


def check_model_card(card) -> None:
    """A RecordError unless card is a model.json of a version we read."""
    if check_fields(card, MODEL_FIELDS) < 1:
        raise RecordError(f"it has no {FORMAT_KEY} (model cards begin at version 1)")
    if not all(s > 0 for s in card["std"]) or not card["image_size"] or not card["input_size"]:
        raise RecordError("its std, image_size or input_size is not positive")
    if not card["classes"]:
        raise RecordError("it names no class")


def check_config(config) -> None:
    """A RecordError unless config is a config.json of a version we read."""
    record_version(config)
