"""Every name in a run folder, and where its checkpoints are."""

import os
import re

CONFIG_FILE = "config.json"  # the resolved settings, written once when the run starts
METRICS_FILE = "metrics.jsonl"  # one line per finished epoch
SUMMARY_FILE = "summary.json"  # the final evaluation, written when the run finishes
LOCK_FILE = "run.lock"  # held by the process that owns the folder
RESUME_LOG = "resume.jsonl"  # one line per resume
CHECKPOINTS = "checkpoints"  # checkpoints/step-<global step>/
# --dataset imagefolder: every image the run uses (path, class, size, mtime), written once
MANIFEST_FILE = "data_manifest.json"
PROGRESS_FILE = "progress.json"  # inside each checkpoint: where the run stands
EMA_WEIGHTS = "ema.safetensors"  # inside each checkpoint of a run with --ema: the average
# The portable model of a finished run: the weights summary.json's numbers came from, and how
# to build and feed them (cifar.models.load_trained; torch and torchvision alone suffice).
MODEL_WEIGHTS = "model.safetensors"
MODEL_CARD = "model.json"
# Files whose presence means the folder holds a run's results.
RESULT_FILES = (SUMMARY_FILE, METRICS_FILE)
CHECKPOINT_NAME = re.compile(r"step-\d{9}")


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def checkpoint_step(folder: str) -> int | None:
    """The global step a checkpoint folder's name gives, or None for another name."""
    name = os.path.basename(folder.rstrip("/"))
    number = name.removeprefix("step-")
    return int(number) if name.startswith("step-") and number.isdigit() else None


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def list_checkpoints(root: str) -> list[str]:
    """Complete checkpoint folders under root (step-<9 digits>, nothing else: a user's
    step-1.bak is neither loaded nor pruned), oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if CHECKPOINT_NAME.fullmatch(n))
    return [os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))]


def checkpoint_folders(run_dir: str) -> list[str]:
    """Names of the complete checkpoints of a run folder, oldest first."""
    return [os.path.basename(p) for p in list_checkpoints(checkpoints_dir(run_dir))]
