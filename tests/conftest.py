"""Shared helpers: run train.py the way users do (python, accelerate launch, torchrun)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
BIN = Path(sys.executable).parent
TEST_CACHE = os.path.join(tempfile.gettempdir(), "cifar-accelerate-test-cache")


def require(condition: bool, reason: str) -> None:
    """Skip when a system dependency is missing; in CI (CIFAR_REQUIRE_ALL_TESTS=1) fail."""
    if condition:
        return
    if os.environ.get("CIFAR_REQUIRE_ALL_TESTS") == "1":
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def launcher(kind: str, processes: int = 1) -> list[str]:
    if kind == "python":
        return [sys.executable]
    if kind == "torchrun":
        return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}"]
    if kind == "accelerate":
        return [str(BIN / "accelerate"), "launch", "--quiet", "--num_processes", "1", "--cpu"]
    raise ValueError(kind)


def train_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "SLURM_"))}
    env.update({"CIFAR_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env["XDG_CACHE_HOME"] = TEST_CACHE  # decoded image folders and unpacked IDX files
    env.update(extra)
    return env


def run_train(
    args,
    *,
    kind: str = "python",
    processes: int = 1,
    env: dict | None = None,
    check: bool = True,
    timeout: int = 600,
) -> subprocess.CompletedProcess:
    """Run train.py in a subprocess; fail the test with its output when it fails unexpectedly."""
    command = launcher(kind, processes) + [str(ROOT / "train.py"), *map(str, args)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=train_env(**(env or {})),
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


SMOKE = [
    "--dataset",
    "synthetic",
    "--tracker",
    "none",
    "--synthetic-train-size",
    "1024",
    "--synthetic-test-size",
    "256",
    "--batch-size",
    "64",
    "--epochs",
    "1",
]


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


TIMING_KEYS = ("epoch_seconds", "train_images_per_second")


def comparable_metrics(run_dir) -> list[dict]:
    """metrics.jsonl without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(run_dir)]
