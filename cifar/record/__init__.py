"""The run record: the run folder's names (names.py), what each record holds and in which
format version (schema.py), their writers and readers (files.py), one atomic writer for every
record and cache (atomic.py), who owns the folder (folder.py), and the progress of a checkpoint
(progress.py). Every tool that reads or writes a run folder (training, resume, the report, the
study) goes through this package.
"""

from cifar.record.atomic import atomic_write
from cifar.record.files import (
    RunFiles,
    read_finished_run,
    read_json,
    read_record,
    read_run_file,
    write_json,
)
from cifar.record.folder import (
    FolderLock,
    RunFolder,
    default_run_dir,
    holds_a_run,
    log_resume,
    new_folder_each_start,
)
from cifar.record.names import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    CONFIG_FILE,
    EMA_WEIGHTS,
    LOCK_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_CARD,
    MODEL_WEIGHTS,
    PROGRESS_FILE,
    RESULT_FILES,
    RESUME_LOG,
    SUMMARY_FILE,
    checkpoint_folders,
    checkpoint_name,
    checkpoint_step,
    checkpoints_dir,
    list_checkpoints,
)
from cifar.record.progress import InvalidProgress, Progress, Shape
from cifar.record.schema import (
    FORMAT_KEY,
    FORMAT_VERSION,
    METRIC_KEYS,
    SUMMARY_KEYS,
    RecordError,
    is_number,
    metric_values,
    versioned,
)

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_NAME",
    "CONFIG_FILE",
    "EMA_WEIGHTS",
    "FORMAT_KEY",
    "FolderLock",
    "FORMAT_VERSION",
    "LOCK_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "METRIC_KEYS",
    "MODEL_CARD",
    "MODEL_WEIGHTS",
    "PROGRESS_FILE",
    "RESULT_FILES",
    "RESUME_LOG",
    "SUMMARY_FILE",
    "SUMMARY_KEYS",
    "InvalidProgress",
    "Progress",
    "RecordError",
    "RunFiles",
    "RunFolder",
    "Shape",
    "atomic_write",
    "checkpoint_folders",
    "checkpoint_name",
    "checkpoint_step",
    "checkpoints_dir",
    "default_run_dir",
    "new_folder_each_start",
    "holds_a_run",
    "is_number",
    "list_checkpoints",
    "log_resume",
    "metric_values",
    "read_finished_run",
    "read_json",
    "read_record",
    "read_run_file",
    "versioned",
    "write_json",
]
