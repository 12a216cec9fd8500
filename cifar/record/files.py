"""Writing and reading a run folder's records: config.json, metrics.jsonl, summary.json,
data_manifest.json and the portable model (model.safetensors + model.json).

Writers run on the main process only and replace each file atomically (atomic_write); every
record they write carries the format version. Readers check each record with its validator in
schema.py, so resume, the report and the study accept and refuse the same files.
"""

import json
import os

from cifar.errors import UserError
from cifar.record.atomic import atomic_write
from cifar.record.names import (
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD,
    MODEL_WEIGHTS,
    SUMMARY_FILE,
)
from cifar.record.schema import (
    RecordError,
    check_config,
    check_epoch_records,
    check_model_card,
    check_summary,
    versioned,
)


def write_json(path: str, data) -> None:
    """data as indented JSON, written atomically."""
    atomic_write(path, json.dumps(data, indent=1))


def read_json(path: str):
    """A JSON or JSON-lines file, parsed; OSError or ValueError (RecursionError included, for
    files nested too deeply) when it cannot be."""
    try:
        with open(path, encoding="utf-8") as f:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in f if line.strip()]
            return json.load(f)
    except RecursionError:
        raise ValueError("nested too deeply to be a record") from None


def read_run_file(path: str, fix: str):
    """A JSON or JSON-lines file of a run folder; a UserError ending in `fix` when it cannot be
    read."""
    try:
        return read_json(path)
    except (OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as JSON ({error}). {fix}") from None


VALIDATORS = {CONFIG_FILE: check_config, METRICS_FILE: check_epoch_records}
VALIDATORS[SUMMARY_FILE] = check_summary
VALIDATORS[MODEL_CARD] = check_model_card


def read_record(run_dir: str, name: str, fix: str):
    """One record file of run_dir, parsed and validated; a UserError naming the file and the
    problem, ending in `fix`, when it is not what train.py writes."""
    path = os.path.join(run_dir, name)
    data = read_run_file(path, fix)
    try:
        VALIDATORS[name](data)
    except RecordError as error:
        problem = f"{path} is not a run record as train.py writes it: {error}"
        raise UserError(f"{problem}. {fix}") from None
    return data


def read_finished_run(run_dir: str, fix: str, *, need_config: bool = True) -> dict:
    """{dir, config, metrics, summary} of a finished run, each validated (config {} when it is
    absent and not needed)."""
    has_config = os.path.isfile(os.path.join(run_dir, CONFIG_FILE))
    run = {
        "dir": run_dir,
        "config": read_record(run_dir, CONFIG_FILE, fix) if has_config or need_config else {},
        "metrics": read_record(run_dir, METRICS_FILE, fix),
        "summary": read_record(run_dir, SUMMARY_FILE, fix),
    }
    if not run["metrics"]:
        path = os.path.join(run_dir, METRICS_FILE)
        raise UserError(f"{path} holds no epoch, yet the run has a summary. {fix}")
    return run


class RunFiles:
    """The writers of config.json, metrics.jsonl, summary.json and the portable model; they
    write on the main process only, and replace each file atomically."""

    def __init__(self, run_dir: str, is_main: bool):
        self.run_dir, self.is_main = run_dir, is_main

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def write_config(self, config: dict) -> None:
        if self.is_main:
            write_json(self.path(CONFIG_FILE), versioned(config))

    def write_metrics(self, history: list[dict]) -> None:
        """One line per finished epoch, rewritten whole, so a resume never leaves a duplicate or
        half line. Each line keeps the version it was recorded in."""
        if self.is_main:
            atomic_write(self.path(METRICS_FILE), "".join(json.dumps(r) + "\n" for r in history))

    def write_manifest(self, text: str) -> None:
        """data_manifest.json: an image folder's manifest (cifar.data.manifest.Manifest.text)."""
        if self.is_main:
            atomic_write(self.path(MANIFEST_FILE), text)

    def write_summary(self, summary: dict) -> None:
        if self.is_main:
            write_json(self.path(SUMMARY_FILE), versioned(summary))

    def write_model(self, weights: bytes, card: dict) -> None:
        """model.safetensors, then model.json (which names the weights' sha256): a card is
        written only once its weights are whole."""
        if self.is_main:
            atomic_write(self.path(MODEL_WEIGHTS), weights)
            write_json(self.path(MODEL_CARD), versioned(card))
