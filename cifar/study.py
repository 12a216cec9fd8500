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
import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys

from cifar.config import build_parser, parse_config
from cifar.errors import REQUEUE_EXIT_CODE, USAGE_EXIT_CODE, UserError, report_user_error
from cifar.runfolder import SUMMARY_FILE

DEFAULT_ARMS = {"cnn": "--model cnn", "resnet50": "--model resnet50"}
DEFAULT_SEEDS = [0, 1, 2]
GRID_FILE = "grid.json"
TRAIN_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train.py")
# The study sets these for every run; an arm or the common flags may not.
STUDY_SETTINGS = ("seed", "output_dir", "resume", "wandb_group")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def parse_arms(specs: list[str]) -> dict[str, str]:
    """--arm NAME=FLAGS values -> {name: flags}, in the order given."""
    arms = {}
    for spec in specs:
        name, equals, flags = spec.partition("=")
        name = name.strip()
        if not equals or not ARM_NAME.fullmatch(name):
            raise UserError(
                f"--arm {spec!r} is not NAME=FLAGS with a folder-safe NAME (letters, digits, . _ "
                f'-). Write e.g. --arm "tta=--model cnn --tta".'
            )
        if name in arms:
            raise UserError(f"--arm {name} is given twice. Give each arm its own name.")
        try:
            shlex.split(flags)
        except ValueError as error:
            raise UserError(f"--arm {spec!r}: its flags do not parse ({error}).") from None
        arms[name] = flags.strip()
    return arms


def run_folder(out: str, arm: str, seed: int) -> str:
    return os.path.join(out, arm, f"seed{seed}")


def train_flags(grid: dict, arm: str, seed: int) -> list[str]:
    """train.py's flags for one run, without --output-dir and --resume."""
    return [
        "--wandb-group",
        grid["name"],
        *grid["common"],
        *shlex.split(grid["arms"][arm]),
        "--seed",
        str(seed),
    ]


def run_command(grid: dict, out: str, arm: str, seed: int) -> list[str]:
    return [*train_flags(grid, arm, seed), "--output-dir", run_folder(out, arm, seed)]


def cells(grid: dict) -> list[tuple[str, int]]:
    """Every (arm, seed), arm by arm: the order of runs and of slurm/sweep.sh's array."""
    return [(arm, seed) for arm in grid["arms"] for seed in grid["seeds"]]


def read_grid(out: str) -> dict | None:
    path = os.path.join(out, GRID_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            grid = json.load(f)
        ok = isinstance(grid["name"], str) and isinstance(grid["arms"], dict)
        ok = ok and all(isinstance(s, int) for s in grid["seeds"])
        ok = ok and all(isinstance(c, str) for c in grid["common"])
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(
            f"{path} is not a study grid (name, arms, seeds, common). Restore it, or start the "
            f"study in a new --out folder."
        )
    return grid


def resolve_grid(args, common: list[str] | None) -> dict:
    """The study's grid: the saved one with this command's additions; a UserError for a change
    the saved runs could not follow (an arm's flags, the common flags, the name)."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file. Pass a folder for the study.")
    saved = read_grid(args.out)
    arms = parse_arms(args.arm)
    name = args.name or os.path.basename(os.path.abspath(args.out))
    if saved is None:
        return {
            "name": name,
            "arms": arms or dict(DEFAULT_ARMS),
            "seeds": list(dict.fromkeys(args.seeds or DEFAULT_SEEDS)),
            "common": common or [],
        }
    fix = f"Start a new study with another --out, or leave {args.out}/{GRID_FILE}'s setting as is."
    for arm, flags in arms.items():
        if arm in saved["arms"] and saved["arms"][arm] != flags:
            raise UserError(
                f"arm {arm} of the study in {args.out} has the flags {saved['arms'][arm]!r}, "
                f"not {flags!r}: its runs were made with those. Give the new arm another name. "
                f"{fix}"
            )
    if common is not None and common != saved["common"]:
        raise UserError(
            f"the study in {args.out} runs every arm with {shlex.join(saved['common'])!r} after "
            f"--, not {shlex.join(common)!r}. Leave out -- to reuse them. {fix}"
        )
    if args.name and args.name != saved["name"]:
        raise UserError(f"the study in {args.out} is named {saved['name']!r}. {fix}")
    return {
        "name": saved["name"],
        "arms": {**saved["arms"], **arms},
        "seeds": list(dict.fromkeys([*saved["seeds"], *(args.seeds or [])])),
        "common": saved["common"],
    }


def expected_configs(grid: dict, out: str) -> dict[tuple[str, int], dict]:
    """The Config of every run, as train.py will resolve it; a UserError for flags train.py
    would refuse, or that set what the study sets itself."""
    parser = build_parser()
    parser.exit_on_error = False
    configs = {}
    for arm, seed in cells(grid):
        where = f"arm {arm} ({grid['arms'][arm]!r}, with {shlex.join(grid['common'])!r} after --)"
        try:
            given, unknown = parser.parse_known_args(
                shlex.split(grid["arms"][arm]) + grid["common"]
            )
        except argparse.ArgumentError as error:
            raise UserError(f"{where}: {error}. See `python train.py --help`.") from None
        if unknown:
            raise UserError(
                f"{where}: train.py does not know {' '.join(unknown)}. See `python train.py "
                f"--help` for its flags."
            )
        taken = [f"--{k.replace('_', '-')}" for k in STUDY_SETTINGS if k in vars(given)]
        if taken:
            raise UserError(
                f"{where}: {', '.join(taken)} is set by the study for every run (--seeds, "
                f"--out, --resume auto, --name). Drop it from the flags."
            )
        try:
            configs[arm, seed] = parse_config(run_command(grid, out, arm, seed)).to_dict()
        except UserError as error:
            raise UserError(f"{where}: {error}") from None
    return configs


def write_grid(grid: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    temporary = os.path.join(out, f"{GRID_FILE}.tmp{os.getpid()}")
    with open(temporary, "w") as f:
        json.dump(grid, f, indent=1)
    os.replace(temporary, os.path.join(out, GRID_FILE))


def die_with_parent() -> None:
    """In the child: get SIGKILL when the study dies, so no run goes on alone in its folder."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


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


def run_lines(grid: dict, out: str, index: int) -> list[str]:
    """Run INDEX of the grid as lines: its folder, then its train.py flags (for sweep.sh)."""
    grid_cells = cells(grid)
    if not 0 <= index < len(grid_cells):
        size = len(grid_cells)
        raise UserError(
            f"run {index} is not in the grid of {size} ({len(grid['arms'])} arm(s) x "
            f"{len(grid['seeds'])} seed(s)): submit with sbatch --array=0-{size - 1} "
            f"slurm/sweep.sh ..."
        )
    arm, seed = grid_cells[index]
    lines = [run_folder(out, arm, seed), *train_flags(grid, arm, seed)]
    if any("\n" in line for line in lines):
        raise UserError(f"arm {arm}: a flag holds a line break, which the job script cannot pass.")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    common = argv[split + 1 :] if split < len(argv) else None
    try:
        args = build_study_parser().parse_args(argv[:split])
        grid = resolve_grid(args, common)
        configs = expected_configs(grid, args.out)
        from cifar.study_report import collect_runs, write_study

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


if __name__ == "__main__":
    sys.exit(main())
