"""Training the runs of a grid, one after another, each train.py in its own process group."""

import difflib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from cifar.errors import REQUEUE_EXIT_CODE, USAGE_EXIT_CODE, UserError, report_user_error
from cifar.processes import die_with_parent
from cifar.record import SUMMARY_FILE
from cifar.study.grid import arm_runs, run_command, run_folder

TRAIN_PY = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train.py"
)
# What a mistyped launcher was probably meant to be.
KNOWN_LAUNCHERS = ("accelerate", "torchrun", "python", "python3", "srun", "mpirun")


def resolve_launcher(text: str) -> list[str]:
    """--launcher as the words of a command whose program exists: on PATH, or beside this Python
    (a virtual environment used without activating it); empty: this Python. Else a UserError
    naming the program and the fix, before anything is written."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise UserError(
            f"--launcher {text!r} does not parse as a command ({error}). Quote it as one "
            f"argument, e.g. --launcher 'accelerate launch --num_processes 2'."
        ) from None
    if not words:
        return [sys.executable]
    program = words[0]
    found = shutil.which(program)
    beside = os.path.join(os.path.dirname(sys.executable), program)
    if found is None and os.sep not in program and shutil.which(beside):
        found = beside
    if found is not None:
        return [found if found == beside else program, *words[1:]]
    if os.sep in program:
        why = f"{program} is not an executable file"
    else:
        why = f"no program {program} on PATH or beside this Python ({sys.executable})"
    guess = difflib.get_close_matches(os.path.basename(program), KNOWN_LAUNCHERS, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    raise UserError(
        f"the launcher {shlex.join(words)!r} cannot be started: {why}{hint}. Fix --launcher, "
        f"e.g. --launcher 'accelerate launch --num_processes 2' (or a full path to the program), "
        f"or leave it out to run train.py with this Python. Nothing was trained or written."
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
        try:
            child = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent)
        except OSError as error:
            raise UserError(
                f"the launcher {command[0]} cannot be started ({error.strerror}). Fix --launcher "
                f"and run the same command again: finished runs are kept."
            ) from None
        children.append(child)
        if stopped:  # the signal came while the child was being started
            os.killpg(children[0].pid, signal.SIGTERM)
        rc = children[0].wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return REQUEUE_EXIT_CODE if stopped else rc


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def why_it_failed(rc: int) -> str:
    """What train.py's exit status says, in words (a negative one: killed by that signal)."""
    if rc < 0:
        oom = ", e.g. by the out-of-memory killer" if -rc == signal.SIGKILL else ""
        return (
            f"train.py was killed by {signal_name(-rc)} ({rc}){oom}; a killed process prints no "
            f"message of its own"
        )
    if rc == 0:
        return f"train.py exited 0 without writing {SUMMARY_FILE}"
    if rc - 128 in (signal.SIGKILL, signal.SIGSEGV, signal.SIGBUS):
        # How shells and some launchers report a process of theirs killed by a signal.
        oom = ", e.g. by the out-of-memory killer" if rc - 128 == signal.SIGKILL else ""
        return (
            f"train.py exited {rc}: 128 + {signal_name(rc - 128)}, a process of the run was "
            f"killed{oom}; any message is above"
        )
    return f"train.py exited {rc}; its message is above"


@dataclass
class Outcome:
    """What training the grid came to: stopped by a signal, or the failed runs, each with its
    exit code (2: a user error)."""

    stopped: bool = False
    failed: list[tuple[str, int]] = field(default_factory=list)  # (run folder, exit code)
    unpooled: list[str] = field(default_factory=list)  # arms whose runs no longer pool

    @property
    def exit_code(self) -> int:
        """0 when every run finished, 2 when a run of some arm failed on a user error, else 1;
        75 after a stop."""
        if self.stopped:
            return REQUEUE_EXIT_CODE
        if not self.failed:
            return 0
        return USAGE_EXIT_CODE if any(rc == USAGE_EXIT_CODE for _, rc in self.failed) else 1


def failure_message(out: str, arm: str, folder: str, why: str) -> str:
    """The paragraph for a failed run: what happened, and how to go on from there."""
    if arm_runs(out, arm):
        fix = "Fix it and run the same command again: finished runs are kept."
    else:
        fix = (
            f"Arm {arm} holds no run, so its flags may change: run the study again with "
            f'--arm "{arm}=NEW FLAGS", or remove the arm with --drop-arm {arm}.'
        )
    return f"the run {folder} failed ({why}). {fix}"


def run_grid(
    grid: dict, out: str, launcher: list[str], unpooled: Callable[[str], str] = lambda arm: ""
) -> Outcome:
    """Train every unfinished run, arm by arm. A failed run ends its arm (its later seeds are
    not started) and the other arms go on; so does a run whose settings do not pool with its
    arm's finished runs (unpooled(arm): the refusal, or ""). A stop signal ends the study."""
    outcome, seeds = Outcome(), grid["seeds"]
    for arm in grid["arms"]:
        for index, seed in enumerate(seeds):
            folder = run_folder(out, arm, seed)
            if os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
                print(f"{folder}: finished, skipped", flush=True)
                continue
            command = [*launcher, TRAIN_PY, *run_command(grid, out, arm, seed), "--resume", "auto"]
            print(f"{folder}: {shlex.join(command)}", flush=True)
            rc = train_run(command)
            if rc == REQUEUE_EXIT_CODE:
                print(f"stopped in {folder}: run the same command again to continue.", flush=True)
                outcome.stopped = True
                return outcome
            finished = rc == 0 and os.path.isfile(os.path.join(folder, SUMMARY_FILE))
            if finished:
                message = unpooled(arm)
                if not message:
                    continue
                outcome.failed.append((folder, USAGE_EXIT_CODE))
                outcome.unpooled.append(arm)
            else:
                outcome.failed.append((folder, rc or 1))
                message = failure_message(out, arm, folder, why_it_failed(rc))
            skipped = len(seeds) - index - 1
            rest = f" Arm {arm}'s other {skipped} seed(s) were not started." if skipped else ""
            report_user_error(UserError(message + rest))
            break
    return outcome
