"""A study: arms x seeds of train.py runs, then how much the arms differ and how sure that is.

    python -m cifar.study --out runs/study -- --dataset cifar10 --epochs 10
    python -m cifar.study --out runs/width --arm "w16=--width 16" --arm "w32=--width 32" \\
        --seeds 0 1 2 3 4 -- --model cnn --dataset fashion-mnist --data-dir DIR --epochs 2
    python -m cifar.study --out runs/width --report-only
    sbatch --array=0-5 slurm/sweep.sh --out runs/study -- --epochs 10   # the grid on SLURM

Each (arm, seed) is the run folder DIR/<arm>/seed<k>, trained with `train.py <flags after -->
<arm flags> --seed k --resume auto`: finished runs are skipped and unfinished ones resumed, so
the same command continues a study. DIR/grid.json remembers arms, seeds and the flags after
`--`: later commands may add arms or seeds and, without --arm/--seeds/--, reuse them.
Writes DIR/study.json, DIR/study.md and figures (see docs/study.md).
"""

import argparse
import shlex
import sys

from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error
from cifar.study.grid import DEFAULT_ARMS, expected_configs, resolve_grid, run_lines, write_grid
from cifar.study.runner import run_grid
from cifar.trackers import check_trackers


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    common = argv[split + 1 :] if split < len(argv) else None
    try:
        args = build_study_parser().parse_args(argv[:split])
        grid = resolve_grid(args, common)
        configs = expected_configs(grid, args.out)
        check_trackers(c["tracker"] for c in configs.values())  # before any run trains
        from cifar.study.results import collect_runs, write_study

        runs = collect_runs(grid, args.out, configs)  # refuses damaged or foreign runs first
        if args.print_run is not None:
            lines = run_lines(grid, args.out, args.print_run)
            write_grid(grid, args.out)
            print("\n".join(lines))
            return 0
        if not args.report_only:
            write_grid(grid, args.out)
            rc = run_grid(grid, args.out, shlex.split(args.launcher) or [sys.executable])
            if rc != 0:
                return rc
            runs = collect_runs(grid, args.out, configs)
        written = write_study(grid, args.out, runs)
    except UserError as error:
        report_user_error(error)
        return USAGE_EXIT_CODE
    print("\n".join(["study written:", *written]))
    return 0
