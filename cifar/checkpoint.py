"""Checkpoints through accelerator.save_state, written atomically; resume; stop on signals.

A checkpoint is checkpoints/step-<global step>/ holding Accelerate's files (model as
safetensors, optimizer, scheduler, scaler, RNG states; all loaded with weights_only=True) and
progress.json (epoch, position in the epoch, metrics so far). It is written as tmp-step-*/ and
renamed into place only once complete, so a folder named step-* is whole.
"""

import json
import os
import shutil
import signal
import warnings

import torch

from cifar.errors import UserError

PROGRESS_FILE = "progress.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Settings a checkpoint cannot be resumed under if they changed.
IDENTITY_KEYS = (
    "model",
    "dataset",
    "cache_features",
    "width",
    "batch_norm",
    "head_hidden",
    "freeze",
    "batch_size",
    "optimizer",
    "scheduler",
    "lr",
)


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def list_checkpoints(root: str) -> list[str]:
    """Complete checkpoint folders under root, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if n.startswith("step-"))
    return [os.path.join(root, n) for n in names]


def save_checkpoint(accelerator, root: str, progress: dict, keep: int) -> str:
    """Save the full training state; every process must call this. Returns the folder."""
    final = os.path.join(root, checkpoint_name(progress["global_step"]))
    temporary = os.path.join(root, "tmp-" + os.path.basename(final))
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(os.path.join(temporary, PROGRESS_FILE), progress)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_progress(folder: str) -> dict:
    with open(os.path.join(folder, PROGRESS_FILE)) as f:
        return json.load(f)


def resolve_resume(config, checkpoints_root: str) -> list[str]:
    """Checkpoint folders to try, newest first. Called on the main process."""
    if not config.resume:
        return []
    if config.resume == "auto":
        return list_checkpoints(checkpoints_root)[::-1]
    path = config.resume.rstrip("/")
    if os.path.isfile(os.path.join(path, PROGRESS_FILE)):
        return [path]
    found = list_checkpoints(os.path.join(path, "checkpoints")) or list_checkpoints(path)
    if not found:
        raise UserError(
            f"--resume {config.resume}: no checkpoint there (expected a checkpoints/step-*/ "
            f"folder holding {PROGRESS_FILE}, or a run folder with checkpoints/). Point "
            f"--resume at a run folder or a checkpoint folder, or use --resume auto."
        )
    return found[::-1]


def run_identity(config, accelerator) -> dict:
    """What a checkpoint can only be resumed under: the model, the data, and the shape of the
    optimisation (the schedule's length and the position in an epoch depend on the global batch).
    """
    identity = {k: getattr(config, k) for k in IDENTITY_KEYS}
    if config.scheduler != "none":  # the schedule's length; without one a run can be extended
        identity["epochs"] = config.epochs
    identity.update(
        world_size=accelerator.num_processes,
        gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
    )
    return identity


def check_identity(current: dict, progress: dict, folder: str) -> None:
    saved = progress.get("identity", {})
    changed = [k for k in current if k in saved and saved[k] != current[k]]
    if changed:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r}, now {current[k]!r}" for k in changed)
        raise UserError(
            f"cannot resume from {folder}: it was made with other settings ({details}). "
            f"Resume with the checkpoint's settings (same processes and batch), or start a new "
            f"run in another --output-dir."
        )


def load_checkpoint(accelerator, config, candidates: list[str]) -> dict | None:
    """Load the newest checkpoint that every process can load; skip broken ones with a warning.
    Every process calls this. Returns its progress dict, or None when there is none to resume;
    raises UserError when there are checkpoints but none loads (never restarts over them).
    """
    current = run_identity(config, accelerator)
    for folder in candidates:
        try:
            progress = read_progress(folder)
        except (OSError, ValueError) as error:
            warn(accelerator, f"skipping checkpoint {folder}: unreadable progress ({error})")
            continue
        check_identity(current, progress, folder)
        try:
            accelerator.load_state(folder)
            loaded = 1.0
        except Exception as error:  # a torn or tampered file; fall back to an older one
            warn(accelerator, f"skipping checkpoint {folder}: {type(error).__name__}: {error}")
            loaded = 0.0
        if all_processes_agree(accelerator, loaded):
            return progress
    if candidates:
        raise UserError(
            f"none of the checkpoints in {os.path.dirname(candidates[0])} could be loaded (see "
            f"the warnings above). Move that folder away to start the run afresh, or resume "
            f"from another run with --resume PATH."
        )
    return None


def all_processes_agree(accelerator, flag: float) -> bool:
    if accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([flag], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() == accelerator.num_processes)


def warn(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        warnings.warn(message, stacklevel=2)


def write_json(path: str, data) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (pre-emption, time limit) into a flag the loop checks per step.

    All processes agree on when to stop (an all-reduce of the flag), so they checkpoint at the
    same step.
    """

    def __init__(self, accelerator, check_every: int = 10):
        self.accelerator, self.check_every = accelerator, check_every
        self.requested = False
        self.signal_name = ""
        self.previous = {}

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self, step: int, force_check: bool = False) -> bool:
        """Checked after each optimizer step; collective every check_every steps."""
        if self.accelerator.num_processes == 1:
            return self.requested
        if not force_check and step % self.check_every:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
