"""The process's lifetime and its process-wide settings: apply_process_settings (one visible
step before the Accelerator exists, recorded in config.json), stop signals turned into a
checkpoint request, the kernel's parent-death signal, and DataLoader workers that leave signals
to the main process and never outlive it."""

import atexit
import ctypes
import functools
import multiprocessing
import os
import signal
import sys

import torch

from cifar.allocator import reuse_freed_memory
from cifar.devices import check_gpus_usable
from cifar.errors import UserError

# cuBLAS's deterministic workspace; it must be set before CUDA starts.
CUBLAS_WORKSPACE = ":4096:8"


def apply_process_settings(config) -> dict:
    """Everything a run changes for the whole process, in one place, before the Accelerator is
    made; returns what was applied (config.json's process_settings).

    - GPUs this process was given but torch cannot use stop the run (devices.py), before
      Accelerate quietly settles for the CPU;
    - the launcher's death stops the run (stop_with_launcher);
    - glibc's malloc reuses freed memory (allocator.py): measured on CPU training only, so
      only there;
    - --deterministic: cuBLAS's workspace and torch's deterministic algorithms, strictly: an
      operation without a deterministic kernel raises (nondeterministic_operation);
    - --tf32/--no-tf32: TF32 for fp32 matmuls and cuDNN convolutions, as read back from torch.
    """
    check_gpus_usable(config.allow_cpu)
    applied = {
        "stop_with_launcher": stop_with_launcher(),
        "malloc_reuses_freed_memory": False,
        "deterministic_algorithms": bool(config.deterministic),
    }
    if not torch.cuda.is_available():
        applied["malloc_reuses_freed_memory"] = reuse_freed_memory()
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        applied["cublas_workspace_config"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
    applied.update(apply_tf32(config.tf32))
    return applied


def apply_tf32(allowed: bool) -> dict:
    """TF32 for fp32 matmuls and cuDNN convolutions, or neither: PyTorch's own defaults differ
    (matmuls off, convolutions on). Returns the flags as torch reads them back."""
    torch.backends.cuda.matmul.allow_tf32 = bool(allowed)
    torch.backends.cudnn.allow_tf32 = bool(allowed)
    return {
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


# How torch's error for an operation without a deterministic kernel goes on after its name.
NOT_DETERMINISTIC = (
    " does not have a deterministic implementation, but you set "
    "'torch.use_deterministic_algorithms(True)'"
)


def nondeterministic_operation(error: BaseException) -> UserError | None:
    """The paragraph for torch's error under --deterministic for an operation that has no
    deterministic kernel on this device; None for any other error."""
    head, found, _ = str(error).partition(NOT_DETERMINISTIC)
    if not found or not head.split():
        return None
    operation = head.split()[-1]
    return UserError(
        f"--deterministic: the operation {operation} has no deterministic implementation on "
        f"this device in torch {torch.__version__}, so the run could not be bit-identical and "
        f"was stopped. Start it anew without --deterministic (the same --seed then gives "
        f"close but not bit-identical runs; a run's settings do not change on resume), or with "
        f"settings whose model does not use that operation."
    )


# SIGINT too: Ctrl-C saves a checkpoint like a scheduler's SIGTERM; a second Ctrl-C stops at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """Turns SIGTERM/SIGUSR1 (pre-emption, time limit) and SIGINT (Ctrl-C) into a flag the loop
    checks per step.

    All processes agree on when to stop, so they checkpoint at the same step. The flag is a CPU
    tensor summed over a gloo group of its own, started without waiting every check_every steps
    and read at the next of those steps, when it has long arrived: every process reads the same
    sum at the same step, and no check waits for the device (a device tensor's .item() would
    drain the queue of kernels on a GPU) or for the other processes. A signal therefore stops
    the run within 2 x check_every steps.

    Installed before the run is assembled (accelerator None until attach): SIGTERM or SIGUSR1
    during a long setup (a download, an image cache) is kept and stops the run at its first
    check, with a checkpoint, instead of killing it without one; Ctrl-C then still stops at once.
    """

    def __init__(self, accelerator=None, check_every: int = 10):
        self.accelerator, self.check_every = None, check_every
        self.requested = False
        self.signal_name = ""
        self.previous = {}
        self.group = None
        self.pending = None  # (work, flag) of the sum started at the last check step
        if accelerator is not None:
            self.attach(accelerator)

    def attach(self, accelerator) -> "StopRequest":
        """The run's processes: from now on the flag is theirs to agree on."""
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            # Every process makes it here, at the same point: new_group is a collective.
            self.group = torch.distributed.new_group(backend="gloo")
        return self

    def install(self) -> "StopRequest":
        for sig in STOP_SIGNALS:
            # A background job of a script starts with SIGINT ignored so that Ctrl-C in the
            # terminal leaves it alone; keep it that way.
            if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and (
            self.accelerator is None or (self.requested and self.signal_name == "SIGINT")
        ):
            raise KeyboardInterrupt  # during setup, or a second Ctrl-C: stop now, no checkpoint
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def should_stop(self, step: int, force_check: bool = False) -> bool:
        """Checked after each optimizer step; with several processes it reads, every
        check_every steps, the sum started check_every steps before and starts the next.
        force_check (between epochs) waits for a sum of the flag as it is now."""
        if self.accelerator.num_processes == 1:
            return self.requested
        if force_check:
            stop = self.collect()
            self.start()
            return self.collect() or stop
        if step % self.check_every:
            return False
        stop = self.collect()
        self.start()
        return stop

    def start(self) -> None:
        flag = torch.tensor([1.0 if self.requested else 0.0])
        work = torch.distributed.all_reduce(flag, group=self.group, async_op=True)
        self.pending = (work, flag)

    def collect(self) -> bool:
        """Whether any process had asked to stop when the pending sum started."""
        if self.pending is None:
            return False
        work, flag = self.pending
        self.pending = None
        work.wait()
        return bool(flag.item() > 0)  # a CPU tensor: no device sync


def stop_with_launcher() -> bool:
    """Stop when the launcher dies. `accelerate launch` with one process dies alone on SIGTERM
    (a container stop, a scheduler's kill), and torchrun's workers run in sessions of their own,
    so a killed agent leaves them training. Ask the kernel to send this process SIGTERM when
    its launcher dies: it checkpoints and stops. True when this process has a launcher."""
    launched = "ACCELERATE_USE_CPU" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ
    if launched:
        signal_when_parent_dies(signal.SIGTERM)
    return launched


def signal_when_parent_dies(sig: signal.Signals) -> None:
    """Ask the kernel (Linux) to send this process sig when the process that started it ends,
    however that ends."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)


@functools.cache
def kill_workers_at_exit() -> None:
    """At exit multiprocessing sends its daemon children (DataLoader workers) SIGTERM, which
    leave_signals_to_main makes them ignore, then waits for them: SIGKILL them first (atexit
    runs this before multiprocessing's own handler, registered earlier)."""

    def kill() -> None:
        # PyTorch's SIGCHLD handler would report each killed worker as a failure.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()

    atexit.register(kill)


def leave_signals_to_main(_worker_id: int) -> None:
    """A DataLoader worker's start. Ctrl-C, a scheduler's SIGTERM (scancel) and SLURM's warning
    SIGUSR1 (delivered to every process of the job step) reach workers too; a worker killed by
    one ends the run with a DataLoader error before the main process can checkpoint. Workers
    ignore them all, and the kernel kills them when the main process ends, however it ends."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal_when_parent_dies(signal.SIGKILL)


def die_with_parent() -> None:
    """In a child process (preexec_fn): get SIGKILL when the parent dies, so no run goes on
    alone in its folder."""
    signal_when_parent_dies(signal.SIGKILL)
