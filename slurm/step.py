"""The first process of the job step that trains: runs COMMAND, then waits for every process
below it, and exits 75 when a stop signal came (else with COMMAND's exit code).

    python slurm/step.py accelerate launch ... train.py ...      # what slurm/common.sh runs

SLURM sends the time-limit warning (#SBATCH --signal=USR1@120) and scancel's SIGTERM to every
process of the step. train.py checkpoints and exits 75 (the study passes the stop on to its
train.py too). A launcher without a handler for the signal (`accelerate launch`, torchrun's
agent) dies of it; its training processes then become this process's children, so it still
waits for their checkpoint: once a step's task has ended, SLURM kills what is left of the step.
Only the standard library: run as a script from slurm/, it cannot import the cifar package
unless that is installed (hence the exit codes of cifar.errors written again below).
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

REQUEUE_EXIT_CODE = 75  # cifar.errors.REQUEUE_EXIT_CODE: stopped at a checkpoint
USAGE_EXIT_CODE = 2
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def log(message: str) -> None:
    print(f"[{time.strftime('%F %T')}] {message}", flush=True)


def adopt_orphans() -> None:
    """Make the processes below this one that lose their parent its children (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def run(command: list[str]) -> int:
    stops: list[str] = []

    def on_stop(signum, _frame) -> None:
        if not stops:
            log(f"got {signal.Signals(signum).name}: the training checkpoints and stops")
        stops.append(signal.Signals(signum).name)

    adopt_orphans()
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    try:
        rc = subprocess.call(command)
    except OSError as error:
        print(
            f"error: cannot run {command[0]}: {error.strerror}. Is the environment with "
            "the project's packages active (CIFAR_VENV, CIFAR_ACTIVATE)?",
            file=sys.stderr,
        )
        return USAGE_EXIT_CODE
    while True:  # the training processes of a launcher that died
        try:
            os.wait()
        except ChildProcessError:
            break
    if stops:
        return REQUEUE_EXIT_CODE
    return rc if rc >= 0 else 128 - rc  # killed by signal N: 128 + N, as shells say


def main(argv: list[str]) -> int:
    if not argv:
        print(
            "error: no command: slurm/step.py runs the training as `python slurm/step.py "
            "COMMAND...`, for example `python slurm/step.py accelerate launch train.py`; "
            "the job scripts call it (slurm/common.sh).",
            file=sys.stderr,
        )
        return USAGE_EXIT_CODE
    return run(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
