"""A study: arms x seeds of train.py runs, then how much the arms differ and how sure that is.

    python -m cifar.study --out runs/study -- --dataset cifar10 --epochs 10
    python -m cifar.study --out runs/width --arm "w16=--width 16" --arm "w32=--width 32" \\
        --seeds 0 1 2 3 4 -- --model cnn --dataset fashion-mnist --data-dir DIR --epochs 2
    python -m cifar.study --out runs/width --report-only
    sbatch --array=0-5 slurm/sweep.sh --out runs/study -- --epochs 10   # the grid on SLURM

Each (arm, seed) is the run folder DIR/<arm>/seed<k>, trained with `train.py <flags after -->
<arm flags> --seed k --resume auto`: finished runs are skipped and unfinished ones resumed, so
the same command continues a study. DIR/grid.json remembers arms, seeds and the flags after
`--`: later commands may add arms or seeds and, without --arm/--seeds/--, reuse them; an arm
without runs may change its flags or be dropped (--drop-arm). One study at a time owns DIR
(DIR/study.lock). A failed run ends its arm, the other arms go on; the exit code is 0 when every
run finished, 2 after a user error, 1 otherwise. Writes DIR/study.json, DIR/study.md and figures
(see docs/study.md).
"""

import argparse
import os
import sys
from types import SimpleNamespace

from cifar.errors import USAGE_EXIT_CODE, UserError, one_line_warnings, report_user_error
from cifar.record import FolderLock
from cifar.study.grid import (
    DEFAULT_ARMS,
    STUDY_LOCK,
    expected_configs,
    read_grid,
    resolve_grid,
    run_lines,
    write_grid,
)
from cifar.study.runner import resolve_launcher, run_grid
from cifar.trackers import check_trackers

# How long --print-run (slurm/sweep.sh) waits for the study lock: array elements start together.
PRINT_RUN_WAIT_S = 120


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message}. See `python -m cifar.study --help`.")


def build_study_parser() -> Parser:
    parser = Parser(
        prog="python -m cifar.study",
        description=__doc__.split("\n\n")[0],
        epilog="Flags after -- go to train.py for every run.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the study folder")
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="an arm: a name and train.py flags in one quoted string (repeatable; default: "
        + ", ".join(f"{k}={v!r}" for k, v in DEFAULT_ARMS.items())
        + ")",
    )
    parser.add_argument(
        "--drop-arm",
        action="append",
        default=[],
        metavar="NAME",
        help="remove an arm that holds no run from the study's grid (repeatable)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, metavar="K", help="seeds of every arm (default: 0 1 2)"
    )
    parser.add_argument("--name", help="W&B group of every run (default: the folder's name)")
    parser.add_argument(
        "--launcher",
        default="",
        help="command that runs train.py, e.g. 'accelerate launch --num_processes 4' "
        "(default: this Python)",
    )
    parser.add_argument("--report-only", action="store_true", help="aggregate, train nothing")
    parser.add_argument(
        "--print-run",
        type=int,
        metavar="INDEX",
        help="print run INDEX's folder and train.py flags, one per line (for slurm/sweep.sh)",
    )
    return parser


def prepare(args, common: list[str] | None) -> SimpleNamespace:
    """The grid, every run's Config and the finished runs, after every refusal a bad command
    or folder gets; nothing is written."""
    from cifar.study.results import collect_runs, refuse_empty, refuse_unpooled

    grid = resolve_grid(args, common)
    configs = expected_configs(grid, args.out)
    check_trackers(c["tracker"] for c in configs.values())  # before any run trains
    runs = collect_runs(grid, args.out, configs)  # refuses damaged or foreign runs first
    refuse_unpooled(grid, runs["finished"])
    if args.report_only:
        refuse_empty(args.out, runs)
    lines = run_lines(grid, args.out, args.print_run) if args.print_run is not None else []
    return SimpleNamespace(grid=grid, configs=configs, runs=runs, lines=lines)


def lock_study(out: str, wait_s: float) -> FolderLock:
    """Own the study folder (creating it), or a UserError naming the study that does."""
    try:
        os.makedirs(out, exist_ok=True)
        lock = FolderLock(os.path.join(os.path.abspath(out), STUDY_LOCK), "study", "--out")
    except OSError as error:
        raise UserError(
            f"cannot write to the study folder {out} ({error.strerror}). Choose a writable --out."
        ) from None
    lock.acquire(wait_s)
    lock.announce()
    return lock


def run_study(args, common: list[str] | None) -> int:
    """What main does once the command parsed: the exit code of the whole study."""
    from cifar.study.results import collect_runs, unpooled, write_study

    prepare(args, common)  # refuse a bad command before the folder is created or locked
    trains = not args.report_only and args.print_run is None
    launcher = resolve_launcher(args.launcher) if trains else []
    lock = lock_study(args.out, PRINT_RUN_WAIT_S if args.print_run is not None else 0)
    try:
        study = prepare(args, common)  # again: the folder as the lock holder sees it
        grid, out = study.grid, args.out
        if grid != read_grid(out):  # new arms or seeds, changed or dropped arms
            write_grid(grid, out)
        if args.print_run is not None:
            print("\n".join(study.lines))
            return 0
        outcome = None
        if not args.report_only:

            def arm_unpooled(arm: str) -> str:
                finished = collect_runs(grid, out, study.configs)["finished"]
                return unpooled(grid, finished).get(arm, "")

            outcome = run_grid(grid, out, launcher, arm_unpooled)
            if outcome.stopped or outcome.unpooled:  # no report averages runs that do not pool
                return outcome.exit_code
            study.runs = collect_runs(grid, out, study.configs)
        if study.runs["finished"]:
            written = write_study(grid, out, study.runs)
            print("\n".join(["study written:", *written]))
        return outcome.exit_code if outcome else 0
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    one_line_warnings()  # the summary run's, the lock's: `warning: ...`, as train.py's
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    common = argv[split + 1 :] if split < len(argv) else None
    try:
        return run_study(build_study_parser().parse_args(argv[:split]), common)
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
