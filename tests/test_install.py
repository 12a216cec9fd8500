"""The Makefile and the locks: the environment is the lock, and `make train` is train.py with
nothing in between."""

import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT, folder_hashes, require, tiny_run, train_env

VENV = Path(sys.prefix)
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
# Installed by `python -m venv` or `pip install -e .`, not resolved into the lock.
NOT_LOCKED = {"pip", "cifar-accelerate"}


def read_lock(path: Path) -> dict[str, str]:
    """{package: version} of the lock's lines whose markers hold for this interpreter."""
    pins = {}
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match and (not match[3] or Marker(match[3]).evaluate()):
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """{package: version} installed in this venv's site-packages. Only there: once anything has
    imported setuptools, its vendored copies (packaging, platformdirs, ...) sit on sys.path too,
    and a plain `metadata.distributions()` would list them as installed."""
    site = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    return {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions(path=sorted(site))
    }


def lock_of_this_venv() -> Path:
    """The lock `make setup` installed into this venv (it records the file's name)."""
    record = VENV / "lock-file"
    require(record.is_file(), f"{VENV} was not made by `make setup`")
    return ROOT / record.read_text().strip()


def test_the_environment_equals_the_lock():
    lock = read_lock(lock_of_this_venv())
    have = {k: v for k, v in installed().items() if k not in NOT_LOCKED}
    missing = {k: v for k, v in lock.items() if k not in have}
    wrong = {k: (v, have[k]) for k, v in lock.items() if k in have and have[k] != v}
    extra = {k: v for k, v in have.items() if k not in lock}
    assert (missing, wrong, extra) == ({}, {}, {})


TORCH_LOCKS = sorted(p for p in (ROOT / "locks").glob("*.txt") if p.name != "uv.txt")


@pytest.mark.parametrize("lock", TORCH_LOCKS, ids=[p.name for p in TORCH_LOCKS])
def test_each_lock_pins_every_declared_dependency_within_its_range(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    pins = read_lock(lock)
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name} lacks {name}"
        version = pins[name].split("+")[0]  # torch builds: 2.14.1+cu126
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
    assert "--hash=sha256:" in lock.read_text()


def make(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`make` in the repository with this venv; refuses to run when setup would reinstall it."""
    up_to_date = subprocess.run(
        ["make", "-q", "setup", f"VENV={VENV}"], cwd=ROOT, capture_output=True, timeout=60
    )
    require(up_to_date.returncode == 0, f"`make setup` would rebuild {VENV}")
    return subprocess.run(
        ["make", "--no-print-directory", *args, f"VENV={VENV}"],
        cwd=ROOT,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=folder,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def not_make(stderr: str) -> list[str]:
    """The lines of stderr that are not make's own report ("make: ***", "make[2]: ***")."""
    return [line for line in stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]


def test_make_train_prints_no_launcher_warning_and_exits_0(tmp_path):
    run_dir = tmp_path / "run"
    args = " ".join([*tiny_run(train=512, test=128), "--output-dir", str(run_dir)])
    result = make("train", f"ARGS={args}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (run_dir / "summary.json").is_file()
    output = result.stdout + result.stderr
    assert "warning" not in output.lower(), output
    assert "Traceback" not in output


def test_make_train_passes_train_py_exit_code_and_message_through():
    result = make("train", "ARGS=--model nope")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "argument --model: invalid choice: 'nope'" in result.stderr
    result = make("train", "ARGS=--dataset synthetic --epochs 0 --tracker none")
    assert result.returncode == 2, result.stderr
    ours = not_make(result.stderr)
    assert len(ours) == 1 and ours[0].startswith("error: "), result.stderr


def test_make_setup_without_a_lock_stops_with_what_to_do_and_touches_nothing(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "locks", tmp_path / "locks")
    venv = tmp_path / ".venv"
    for existing in (False, True):
        if existing:
            venv.mkdir()
            (venv / "lock-file").write_text("locks/cu130.txt\n")
        before = folder_hashes(tmp_path, folders=True)
        for goal, torch in (("setup", "cpu"), ("train", "cu126"), ("test", "cpu")):
            result = make_in(tmp_path, goal, f"TORCH={torch}")
            assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
            (message,) = not_make(result.stderr)
            assert message.startswith(f"error: there is no lock for TORCH={torch} (locks/{torch}")
            for phrase in (
                "nothing was installed or removed",
                f"Resolve it with `make lock TORCH={torch}` on a machine that reaches "
                f"download.pytorch.org/whl/{torch}",
                f"commit locks/{torch}.txt; or use a lock that exists: TORCH=cu130.",
                "Without a GPU the default TORCH=cu130 trains on the CPU too",
            ):
                assert phrase in message, (phrase, message)
            assert folder_hashes(tmp_path, folders=True) == before
        assert venv.exists() == existing


def test_ci_and_the_readme_run_the_same_test_command():
    assert "\nmake test\n" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test\b", readme, re.M)
    assert re.search(r"^make train\b", readme, re.M)


def test_the_lowest_versions_pyproject_allows_are_those_install_md_says_passed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        (floor,) = [s.version for s in requirement.specifier if s.operator == ">="]
        floors[requirement.name] = floor
    text = (ROOT / "docs" / "install.md").read_text()
    checked = text.split("## Requirements and how they were checked")[1].split("\n## ")[0]
    checked = " ".join(checked.split())
    for name, floor in floors.items():
        named = rf"\b{re.escape(name)} {re.escape(floor)}(\.0)*(?!\.?\d)"  # 1.3 as 1.3.0
        assert re.search(named, checked, re.I), (
            f"pyproject.toml allows {name} {floor}, which docs/install.md does not say passed"
        )


def test_a_wheel_of_the_project_holds_every_package_of_cifar(tmp_path):
    """`pip install .` (not editable) must bring every subpackage: a list of packages kept by
    hand left cifar.report and cifar.trackers out, and the installed train.py failed to import."""
    source = tmp_path / "source"
    shutil.copytree(ROOT / "cifar", source / "cifar", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "wheel"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {Path(n).parent.as_posix() for n in archive.namelist() if n.endswith(".py")}
    packages = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("cifar/**/__init__.py")}
    assert packages <= packaged and "cifar/trackers" in packages
