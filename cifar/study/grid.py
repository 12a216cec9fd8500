"""The grid of a study: its arms, seeds and common flags, grid.json, and the run folder and
train.py flags of every (arm, seed)."""

import argparse
import json
import os
import re
import shlex

from cifar.config import build_parser, parse_config
from cifar.errors import UserError
from cifar.record import holds_a_run, write_json
from cifar.trackers import TRACKER_FILE

DEFAULT_ARMS = {"cnn": "--model cnn", "resnet50": "--model resnet50"}


DEFAULT_SEEDS = [0, 1, 2]


GRID_FILE = "grid.json"
STUDY_JSON, STUDY_MD = "study.json", "study.md"
STUDY_LOCK = "study.lock"  # held by the study that owns the folder
# What the study keeps beside its arm folders; an arm may not be named like one of them, nor end
# like one of its records or figures (a file a later version adds must not meet an arm's folder).
STUDY_FILES = (GRID_FILE, STUDY_JSON, STUDY_MD, STUDY_LOCK, TRACKER_FILE, "wandb", "tensorboard")
STUDY_FILE_ENDINGS = (".json", ".jsonl", ".md", ".png", ".svg", ".pdf", ".lock", ".tmp", ".csv")


# The study sets these for every run; an arm or the common flags may not.
STUDY_SETTINGS = ("seed", "output_dir", "resume", "wandb_group")


ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_arm_name(name: str, where: str) -> None:
    """A UserError unless name can be an arm's folder beside the study's own files."""
    if not ARM_NAME.fullmatch(name):
        raise UserError(
            f"{where} is not NAME=FLAGS with a folder-safe NAME (letters, digits, . _ -). Write "
            f'e.g. --arm "wide=--model cnn --width 64".'
        )
    lower = name.lower()
    if lower in STUDY_FILES or lower.endswith(STUDY_FILE_ENDINGS):
        raise UserError(
            f"{where}: the arm name {name!r} is, or ends like, a file the study writes beside its "
            f"arm folders ({', '.join(STUDY_FILES)}, *{', *'.join(STUDY_FILE_ENDINGS)}). Give "
            f"the arm another name, e.g. {name.replace('.', '-')}-arm."
        )


def parse_arms(specs: list[str]) -> dict[str, str]:
    """--arm NAME=FLAGS values -> {name: flags}, in the order given."""
    arms = {}
    for spec in specs:
        name, equals, flags = spec.partition("=")
        name = name.strip()
        check_arm_name(name if equals else "", f"--arm {spec!r}")
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
        ok = ok and all(isinstance(f, str) for f in grid["arms"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise UserError(
            f"{path} is not a study grid (name, arms, seeds, common). Restore it, or start the "
            f"study in a new --out folder."
        )
    for name in grid["arms"]:
        check_arm_name(name, f"arm {name!r} of {path}")
    return grid


def arm_runs(out: str, arm: str) -> list[str]:
    """The folders under DIR/<arm> that hold a run (a checkpoint or results)."""
    folder = os.path.join(out, arm)
    if not os.path.isdir(folder):
        return []
    found = sorted(e.path for e in os.scandir(folder) if e.is_dir(follow_symlinks=False))
    return [path for path in found if holds_a_run(path)]


def drop_arms(arms: dict, drops: list[str], out: str) -> dict:
    """arms without those --drop-arm names; a UserError for an arm that is not there or still
    holds a run."""
    for name in drops:
        if name not in arms:
            raise UserError(
                f"--drop-arm {name}: the study in {out} has no arm {name!r} (its arms: "
                f"{', '.join(arms) or 'none'}). Name one of those."
            )
        runs = arm_runs(out, name)
        if runs:
            raise UserError(
                f"--drop-arm {name}: the arm holds runs ({', '.join(runs[:3])}), and the study "
                f"never drops results. Move {os.path.join(out, name)} out of the study first, "
                f"then drop the arm."
            )
    kept = {name: flags for name, flags in arms.items() if name not in drops}
    if not kept:
        raise UserError(
            f"--drop-arm would leave the study in {out} without arms. Keep one, or add one with "
            f'--arm "NAME=FLAGS".'
        )
    return kept


def resolve_grid(args, common: list[str] | None) -> dict:
    """The study's grid: the saved one with this command's additions; a UserError for a change
    the saved runs could not follow (an arm's flags, the common flags, the name)."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file. Pass a folder for the study.")
    saved = read_grid(args.out)
    arms = parse_arms(args.arm)
    both = [name for name in args.drop_arm if name in arms]
    if both:
        raise UserError(f"arm {both[0]} is given with --arm and with --drop-arm. Give one of them.")
    name = args.name or os.path.basename(os.path.abspath(args.out))
    if saved is None and args.drop_arm:
        raise UserError(
            f"--drop-arm {args.drop_arm[0]}: there is no study in {args.out} yet (no "
            f"{GRID_FILE}). Drop nothing, or point --out at the study."
        )
    if saved is None:
        return {
            "name": name,
            "arms": arms or dict(DEFAULT_ARMS),
            "seeds": list(dict.fromkeys(args.seeds or DEFAULT_SEEDS)),
            "common": common or [],
        }
    fix = f"Start a new study with another --out, or leave {args.out}/{GRID_FILE}'s setting as is."
    for arm, flags in arms.items():
        runs = arm_runs(args.out, arm) if saved["arms"].get(arm, flags) != flags else []
        if runs:  # an arm without a run (one whose runs failed to start) may change its flags
            raise UserError(
                f"arm {arm} of the study in {args.out} has the flags {saved['arms'][arm]!r}, "
                f"not {flags!r}: its runs were made with those ({', '.join(runs[:3])}). Give "
                f"the new arm another name, or move {os.path.join(args.out, arm)} out of the "
                f"study to start the arm again with the new flags. {fix}"
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
        "arms": {**drop_arms(saved["arms"], args.drop_arm, args.out), **arms},
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
    write_json(os.path.join(out, GRID_FILE), grid)


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
