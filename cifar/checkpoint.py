"""Checkpoints through accelerator.save_state, written atomically; resume; stop on signals.

A checkpoint is checkpoints/step-<global step>/ holding Accelerate's files (model as
safetensors, optimizer, scheduler, scaler, RNG states; all loaded with weights_only=True) and
progress.json (epoch, position in the epoch, metrics so far). It is written as tmp-step-*/ and
renamed into place only once complete, so a folder named step-* is whole.
"""

import os
import shutil

from cifar.config import RESUME_MAY_CHANGE, SETTING_DEFAULTS
from cifar.data.manifest import MANIFEST_SETTING, describe_change
from cifar.distributed import all_processes_agree
from cifar.errors import UserError
from cifar.errors import warn as run_warning
from cifar.record import (
    FORMAT_KEY,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PROGRESS_FILE,
    InvalidProgress,
    Progress,
    Shape,
    checkpoint_name,
    checkpoint_step,
    checkpoints_dir,
    list_checkpoints,
    read_json,
    write_json,
)
from cifar.record.atomic import fsync_folder
from cifar.record.schema import is_count

# What the data's files are (a digest of their manifest), recorded in checkpoints since it was
# added: a checkpoint without one is not compared on it, and the resumed run records it.
DATA_FILE_SETTINGS = frozenset({MANIFEST_SETTING})
# Settings a checkpoint from before them lacks and whose old behaviour no value of them now
# repeats (before --tf32, PyTorch's defaults: TF32 convolutions, full-fp32 matmuls): not
# compared then, recorded from then on.
UNRECORDED_BEFORE = DATA_FILE_SETTINGS | {"tf32"}
# Settings whose difference is told in words of its own: (recorded, now, checkpoint) -> text.
EXPLAINED = {MANIFEST_SETTING: describe_change}
# ... and the settings such words already tell (the files' manifest tells their numbers).
COVERS = {MANIFEST_SETTING: ("train_images", "test_images")}


class CheckpointWriteError(Exception):
    """Saving a checkpoint failed (disk full, I/O error); the previous checkpoints are intact."""

    def __init__(self, folder: str, error: Exception):
        super().__init__(
            f"could not write the checkpoint {folder} ({write_failure(folder, error)}). The "
            f"partial folder was removed and the checkpoints before it are intact. Free some "
            f"space (or point --output-dir at a larger disk) and continue with --resume auto."
        )


def write_failure(path: str, error: Exception) -> str:
    """The error and the free space where path was being written."""
    try:
        free_bytes = shutil.disk_usage(os.path.dirname(path) or ".").free
        free = f"{free_bytes / 2**20:,.0f} MiB free there"
        if free_bytes < 64 * 2**20:
            free += ": the disk is full or nearly"
    except OSError:
        free = "free space unknown"
    reason = getattr(error, "strerror", None) or " ".join(str(error).split())
    return f"{type(error).__name__}: {reason}; {free}"


def save_checkpoint(accelerator, root: str, progress: Progress, keep: int, ema=None) -> str:
    """Save the full training state (and ema, a WeightAverage, if any); every process must call
    this. Returns the folder. Raises CheckpointWriteError, with the partial folder removed, when
    the disk refuses it."""
    final = os.path.join(root, checkpoint_name(progress.global_step))
    temporary = os.path.join(root, "tmp-" + os.path.basename(final))
    try:
        if accelerator.is_main_process:
            os.makedirs(root, exist_ok=True)
            shutil.rmtree(temporary, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(temporary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if ema is not None:
                ema.save(temporary)
            write_json(os.path.join(temporary, PROGRESS_FILE), progress.to_json())
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(temporary, final)
            fsync_folder(root)  # the rename, durable before older checkpoints are pruned
    except Exception as error:  # SafetensorError and torch's own errors wrap the OSError
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        raise CheckpointWriteError(final, error) from error
    if accelerator.is_main_process:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_progress(folder: str, shape: Shape, settings: dict) -> Progress:
    """The checkpoint's progress, checked; raises InvalidProgress (or OSError) when unusable,
    UserError when it was made under other settings (checked first: other settings usually
    mean other data, which would fail the checks with a less helpful reason)."""
    try:
        data = read_json(os.path.join(folder, PROGRESS_FILE))
    except ValueError as error:  # not UTF-8, not JSON, nested too deeply
        raise InvalidProgress(f"not a progress record ({error})") from None
    newer = (
        isinstance(data, dict)
        and is_count(data.get(FORMAT_KEY))
        and data[FORMAT_KEY] > FORMAT_VERSION
    )
    if newer:
        raise UserError(
            f"cannot resume from {folder}: it was written in record format {data[FORMAT_KEY]} by "
            f"a newer cifar-accelerate, and this one reads formats up to {FORMAT_VERSION}. "
            f"Resume it with the newer version, or start a new run in another --output-dir."
        )
    if isinstance(data, dict) and isinstance(data.get("settings"), dict):
        refuse_other_settings(settings_differences(data["settings"], settings), folder)
    return Progress.from_json(data, shape, step=checkpoint_step(folder))


def resolve_resume(config, checkpoints_root: str) -> list[str]:
    """Checkpoint folders to try, newest first. Called on the main process."""
    if not config.resume:
        return []
    if config.resume == "auto":
        return list_checkpoints(checkpoints_root)[::-1]
    path = config.resume.rstrip("/")
    if os.path.isfile(os.path.join(path, PROGRESS_FILE)):
        return [path]
    found = list_checkpoints(checkpoints_dir(path)) or list_checkpoints(path)
    if not found:
        raise UserError(
            f"--resume {config.resume}: no checkpoint there (expected a checkpoints/step-*/ "
            f"folder holding {PROGRESS_FILE}, or a run folder with checkpoints/). Point "
            f"--resume at a run folder or a checkpoint folder, or use --resume auto."
        )
    return found[::-1]


# Batches of an epoch's smaller last optimizer step, a setting only where there is one.
ACCUMULATION_TAIL = "accumulation_tail_batches"
NOT_RECORDED = "(not recorded)"


def settings_differences(saved: dict, current: dict) -> dict:
    """{setting: (in the checkpoint, now)} for every setting that may not change on resume.

    A setting the checkpoint does not record came after it was written: the run was trained as
    that setting's default does (a new setting's default keeps the old behaviour). What the
    files were (DATA_FILE_SETTINGS), or TF32, was not known then: such a setting is not
    compared (UNRECORDED_BEFORE)."""
    recorded = {name: saved.get(name, SETTING_DEFAULTS.get(name, NOT_RECORDED)) for name in current}
    return {
        name: (recorded[name], value)
        for name, value in current.items()
        if name not in RESUME_MAY_CHANGE
        and recorded[name] != value
        and not (name in UNRECORDED_BEFORE and name not in saved)
    }


def refuse_other_settings(differences: dict, folder: str) -> None:
    if not differences:
        return
    older_tail = differences.get(ACCUMULATION_TAIL, ("",))[0] == NOT_RECORDED
    if older_tail and len(differences) > 1:
        # The tail follows from the other changes (batch size, processes, accumulation); with
        # the same settings this version records the same tail, so the run is not of an older one.
        differences = {k: v for k, v in differences.items() if k != ACCUMULATION_TAIL}
        older_tail = False
    explained = {
        name: EXPLAINED[name](old, new, folder)
        for name, (old, new) in differences.items()
        if name in EXPLAINED
    }
    covered = {name for name in explained for name in COVERS.get(name, ())}
    plain = {k: v for k, v in differences.items() if k not in explained and k not in covered}
    details = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in plain.items())
    problems = [f"these settings differ from the ones it was trained with ({details})"]
    problems = problems[: bool(plain)] + list(explained.values())
    fix = "Resume with the run's own settings (see its config.json)"
    if differences.get("tta") == (False, True):
        fix += (
            " (--no-tta scores it without test-time flips, as it was begun; they are on by "
            "default for fashion-mnist)"
        )
    if older_tail:
        fix = (
            f"This version of cifar-accelerate trains the {differences[ACCUMULATION_TAIL][1]} "
            f"batches after the last whole accumulation group of each epoch as one smaller "
            f"optimizer step; the one that began the run left them out: finish it with that "
            f"version"
        )
    if any(name.endswith("_pipeline") for name in differences):  # see DatasetSpec.settings
        fix = (
            "This version of cifar-accelerate reads the dataset's files differently (decoding, "
            "crops or normalisation) from the one that began the run: finish it with that "
            "version"
        )
    elif not plain:
        fix = f"Put the files back as they were (the run's {MANIFEST_FILE} lists each one)"
    raise UserError(
        f"cannot resume from {folder}: {'; and '.join(problems)}. {fix}, or start a new run in "
        f"another --output-dir."
    )


def newest_progress(accelerator, candidates: list[str], shape: Shape, settings: dict):
    """(folder, progress) of the newest candidate whose progress.json is valid, skipping the
    others with a warning; (None, None) when there is none."""
    for folder in candidates:
        try:
            return folder, read_progress(folder, shape, settings)
        except (OSError, InvalidProgress) as error:
            warn(accelerator, f"skipping checkpoint {folder}: invalid progress.json ({error})")
    return None, None


def load_checkpoint(accelerator, candidates: list[str], settings: dict, shape: Shape, ema=None):
    """Load the newest checkpoint that every process can load (with ema, a WeightAverage, its
    average too); skip broken ones with a warning. Every process calls this. Returns (folder,
    Progress), or (None, None) when there is none to resume; raises UserError when its settings
    differ from the run's, or when there are checkpoints but none loads (never restarts over
    them).
    """
    remaining = list(candidates)
    while remaining:
        folder, progress = newest_progress(accelerator, remaining, shape, settings)
        if folder is None:
            break
        remaining = remaining[remaining.index(folder) + 1 :]
        try:
            accelerator.load_state(folder)
            if ema is not None:
                ema.load(folder)
            loaded = 1.0
        except Exception as error:  # a torn or tampered file; fall back to an older one
            warn(accelerator, f"skipping checkpoint {folder}: {type(error).__name__}: {error}")
            loaded = 0.0
        if all_processes_agree(accelerator, loaded):
            return folder, progress
    if candidates:
        raise UserError(
            f"none of the checkpoints in {os.path.dirname(candidates[0])} could be loaded (see "
            f"the warnings above). Move that folder away to start the run afresh, or resume "
            f"from another run with --resume PATH."
        )
    return None, None


def warn(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        run_warning(message)
