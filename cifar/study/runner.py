"""Training the runs of a grid, one after another, each train.py in its own process group."""

import os
import shlex
import signal
import subprocess

from cifar.errors import REQUEUE_EXIT_CODE, USAGE_EXIT_CODE, UserError, report_user_error
from cifar.processes import die_with_parent
from cifar.record import SUMMARY_FILE
from cifar.study.grid import cells, run_command, run_folder

TRAIN_PY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train.py"
)


def train_run(command: list[str]) -> int:
    """Run train.py in its own process group; a stop signal to the study is passed on to it as
    SIGTERM (checkpoint and exit 75). Returns its exit code, 75 after a stop."""
    children, stopped = [], []

    def stop(signum, _frame):
        stopped.append(signum)
        if children and children[0].poll() is None:
            os.killpg(children[0].pid, signal.SIGTERM)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        children.append(
            subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent)
        )
        if stopped:  # the signal came while the child was being started
            os.killpg(children[0].pid, signal.SIGTERM)
        rc = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return REQUEUE_EXIT_CODE if stopped else rc


def run_grid(grid: dict, out: str, launcher: list[str]) -> int:
    """Train every unfinished run, one after another; 0 when all finished."""
    for arm, seed in cells(grid):
        folder = run_folder(out, arm, seed)
        if os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
            print(f"{folder}: finished, skipped", flush=True)
            continue
        command = [*launcher, TRAIN_PY, *run_command(grid, out, arm, seed), "--resume", "auto"]
        print(f"{folder}: {shlex.join(command)}", flush=True)
        rc = train_run(command)
        if rc == REQUEUE_EXIT_CODE:
            print(f"stopped in {folder}: run the same command again to continue.", flush=True)
            return rc
        if rc == 0 and not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
            rc = 1
        if rc != 0:
            report_user_error(
                UserError(
                    f"the run {folder} failed (train.py exited {rc}; its message is above). "
                    f"Fix it and run the same command again: finished runs are kept."
                )
            )
            return USAGE_EXIT_CODE if rc == USAGE_EXIT_CODE else rc
    return 0
