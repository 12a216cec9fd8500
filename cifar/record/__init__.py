"""The run record: the run folder's files and names, their writers, readers and validators,
who owns the folder, and the progress of its checkpoints. Every tool that reads or writes a run
folder (training, resume, the report, the study) goes through this package.
"""

from cifar.record.atomic import atomic_write
from cifar.record.folder import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    CONFIG_FILE,
    LOCK_FILE,
    METRIC_KEYS,
    METRICS_FILE,
    RESULT_FILES,
    RESUME_LOG,
    SUMMARY_FILE,
    SUMMARY_KEYS,
    RunFiles,
    RunFolder,
    checkpoint_folders,
    default_run_dir,
    holds_a_run,
    list_checkpoints,
    log_resume,
    read_run_file,
    write_json,
)
from cifar.record.progress import InvalidProgress, Progress, Shape

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_NAME",
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "METRIC_KEYS",
    "RESULT_FILES",
    "RESUME_LOG",
    "SUMMARY_FILE",
    "SUMMARY_KEYS",
    "InvalidProgress",
    "Progress",
    "RunFiles",
    "RunFolder",
    "Shape",
    "atomic_write",
    "checkpoint_folders",
    "default_run_dir",
    "holds_a_run",
    "list_checkpoints",
    "log_resume",
    "read_run_file",
    "write_json",
]
