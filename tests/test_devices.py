"""cifar/devices.py: no silent CPU fallback: GPUs given to the process but invisible to torch
stop the run."""

import os
import stat
import subprocess
import sys

import pytest
import torch

from cifar import devices
from cifar.errors import UserError
from tests.helpers import ROOT, SMOKE, run_train

NO_GPU_HERE = pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a GPU here")
# cifar.devices runs the fake nvidia-smi as a process, which tests/conftest.py cannot see.
RUNS_NVIDIA_SMI = pytest.mark.slow


def fake_nvidia_smi(folder, body: str) -> None:
    """An executable `nvidia-smi` in folder that runs the shell code body."""
    path = folder / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


LISTING = """case "$1" in
  -L) echo "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)"; echo "GPU 1: NVIDIA A100 (UUID: GPU-2)";;
  *) echo "550.54.15"; echo "550.54.15";;
esac"""


@pytest.fixture
def no_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.parametrize(
    "environ, count, given",
    [
        ({"SLURM_GPUS_ON_NODE": "2"}, 2, "SLURM_GPUS_ON_NODE=2"),
        ({"SLURM_GPUS_ON_NODE": "0"}, 0, ""),
        ({"SLURM_JOB_GPUS": "0,1"}, 2, "SLURM_JOB_GPUS=0,1"),
        ({"SLURM_STEP_GPUS": "3"}, 1, "SLURM_STEP_GPUS=3"),
        ({"SLURM_STEP_GPUS": "4,5,6", "SLURM_JOB_GPUS": "4,5,6,7"}, 3, "SLURM_STEP_GPUS=4,5,6"),
        ({"SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": "0"}, 1, "CUDA_VISIBLE_DEVICES=0"),
        ({"CUDA_VISIBLE_DEVICES": "0"}, 1, "CUDA_VISIBLE_DEVICES=0"),
        ({"CUDA_VISIBLE_DEVICES": "GPU-5c1a,GPU-77"}, 2, "CUDA_VISIBLE_DEVICES=GPU-5c1a,GPU-77"),
        ({"CUDA_VISIBLE_DEVICES": ""}, 0, ""),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 0, ""),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, 0, ""),
        ({}, 0, ""),
    ],
)
def test_gpus_given_reads_slurm_and_cuda_visible_devices(no_nvidia_smi, environ, count, given):
    assert devices.gpus_given(environ) == given
    assert devices.gpu_count(environ) == count


@RUNS_NVIDIA_SMI
def test_gpus_given_asks_nvidia_smi_when_the_environment_is_silent(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, LISTING)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert devices.gpus_given({}) == "nvidia-smi lists 2 GPU(s)"
    assert devices.gpu_count({}) == 2
    assert devices.driver_version() == "550.54.15"
    # An empty CUDA_VISIBLE_DEVICES hides the GPUs nvidia-smi lists.
    assert devices.gpus_given({"CUDA_VISIBLE_DEVICES": ""}) == ""


@RUNS_NVIDIA_SMI
@pytest.mark.parametrize("body", ["exit 9", "sleep 30", "echo 'No devices were found'"])
def test_a_failing_or_hanging_nvidia_smi_counts_as_no_gpu(tmp_path, monkeypatch, body):
    fake_nvidia_smi(tmp_path, body)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(devices, "NVIDIA_SMI_SECONDS", 1)
    assert devices.gpus_given({}) == "" and devices.gpu_count({}) == 0
    assert devices.driver_version() == ""


def devices_command(*args: str, **env: str) -> subprocess.CompletedProcess:
    """python -m cifar.devices in an environment without SLURM, CUDA or nvidia-smi, plus env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
    base.update(PATH=os.path.dirname(sys.executable), PYTHONPATH=str(ROOT), **env)
    command = [sys.executable, "-m", "cifar.devices", *args]
    return subprocess.run(command, cwd=ROOT, env=base, capture_output=True, text=True)


def test_the_command_prints_the_count_the_job_scripts_use():
    assert devices_command(SLURM_JOB_GPUS="0,1,2").stdout == "3\n"
    assert devices_command(CUDA_VISIBLE_DEVICES="").stdout == "0\n"
    assert devices_command().stdout == "0\n"


def test_the_command_refuses_arguments_in_one_line():
    result = devices_command("--gpus", "2")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: python -m cifar.devices takes no arguments")


def test_counting_gpus_does_not_import_torch():
    """The job scripts count GPUs at every start: that must not cost torch's import."""
    code = "import sys, cifar.devices; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout == "False\n"


@pytest.mark.parametrize(
    "driver, build", [("580.65.06", "cu130"), ("550.54.15", "cu126"), ("470.1", ""), ("", "")]
)
def test_suggested_build_is_the_newest_the_driver_runs(driver, build):
    assert devices.suggested_build(driver) == build


@NO_GPU_HERE
@RUNS_NVIDIA_SMI
def test_unusable_gpus_name_torch_the_driver_and_the_fix(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, LISTING)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as caught:
        devices.check_gpus_usable(False, {"SLURM_GPUS_ON_NODE": "2"})
    message = str(caught.value)
    assert "SLURM_GPUS_ON_NODE=2" in message and torch.__version__ in message
    assert "550.54.15" in message and "make setup TORCH=cu126" in message
    assert "--allow-cpu" in message
    devices.check_gpus_usable(True, {"SLURM_GPUS_ON_NODE": "2"})  # the CPU on purpose
    devices.check_gpus_usable(False, {"SLURM_GPUS_ON_NODE": "2", "ACCELERATE_USE_CPU": "true"})
    devices.check_gpus_usable(False, {"CUDA_VISIBLE_DEVICES": ""})


@NO_GPU_HERE
@pytest.mark.parametrize("variable", ["SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"])
def test_train_stops_with_exit_2_when_given_gpus_torch_cannot_see(tmp_path, variable):
    value = "1" if variable == "SLURM_GPUS_ON_NODE" else "0"
    run_dir = tmp_path / "run"
    result = run_train([*SMOKE, "--output-dir", run_dir], env={variable: value}, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: this process was given GPUs")
    assert f"{variable}={value}" in lines[0] and "--allow-cpu" in lines[0]
    assert f"torch {torch.__version__}" in lines[0]
    assert not os.path.exists(run_dir / "config.json")  # stopped before any work


@NO_GPU_HERE
def test_allow_cpu_trains_on_the_cpu_although_gpus_were_given(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMOKE, "--output-dir", run_dir, "--allow-cpu"], env={"SLURM_GPUS_ON_NODE": "1"})
    assert (run_dir / "summary.json").is_file()
