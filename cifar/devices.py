"""The GPUs this process was given, and no silent CPU fallback when torch cannot use them.

torch built for a newer CUDA than the NVIDIA driver supports sees no GPU, and Accelerate then
picks the CPU without a word: a GPU job that crawls for hours. This module turns that into a
user error before any work, unless the CPU was asked for (--allow-cpu, `accelerate launch
--cpu`).

    python -m cifar.devices     # prints how many GPUs this process was given (the job scripts)
"""

import os
import re
import shutil
import subprocess
import sys

from cifar.errors import USAGE_EXIT_CODE, UserError, report_user_error

NVIDIA_SMI_SECONDS = 10  # a hung driver must not hang the start of every run
# Oldest NVIDIA driver each torch build of `make setup TORCH=...` runs on (NVIDIA's CUDA
# compatibility table: CUDA 13.x needs >= 580, CUDA 12.x >= 525).
DRIVER_FOR_BUILD = {"cu130": 580, "cu126": 525}


def given_gpus(environ=os.environ) -> tuple[int, str]:
    """How many GPUs this process was given and what says so ((2, 'SLURM_GPUS_ON_NODE=2'),
    (1, 'nvidia-smi lists 1 GPU(s)'), ...), or (0, '') when nothing says it has any."""
    count = environ.get("SLURM_GPUS_ON_NODE", "").strip()
    if count.isdigit() and int(count) > 0:
        return int(count), f"SLURM_GPUS_ON_NODE={count}"
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        ids = environ.get(name, "").strip()
        if ids:
            return len(ids.split(",")), f"{name}={ids}"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        # Set but naming nothing ("", -1, NoDevFiles) means: no GPUs for this process.
        first = visible.split(",")[0].strip()
        if first and first not in ("-1", "NoDevFiles"):
            return len(visible.split(",")), f"CUDA_VISIBLE_DEVICES={visible}"
        return 0, ""
    listed = [line for line in nvidia_smi("-L").splitlines() if line.startswith("GPU")]
    if listed:
        return len(listed), f"nvidia-smi lists {len(listed)} GPU(s)"
    return 0, ""


def gpus_given(environ=os.environ) -> str:
    """Why this process should have GPUs ('SLURM_GPUS_ON_NODE=2', ...), or '' when nothing says
    it has any."""
    return given_gpus(environ)[1]


def gpu_count(environ=os.environ) -> int:
    """How many GPUs this process was given (0: none, train on the CPU)."""
    return given_gpus(environ)[0]


def nvidia_smi(*args: str) -> str:
    """nvidia-smi's output, or '' when it is missing, fails or hangs."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        result = subprocess.run(
            ["nvidia-smi", *args],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout if result.returncode == 0 else ""


def driver_version() -> str:
    """The NVIDIA driver's version ('550.54.15'), or '' when nvidia-smi does not say."""
    out = nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader").split()
    return out[0] if out and re.fullmatch(r"\d+(\.\d+)+", out[0]) else ""


def suggested_build(driver: str) -> str:
    """The `make setup TORCH=...` value for this driver: the newest CUDA build it runs."""
    try:
        major = int(driver.split(".")[0])
    except ValueError:
        return ""
    for build, oldest in DRIVER_FOR_BUILD.items():
        if major >= oldest:
            return build
    return ""


def check_gpus_usable(allow_cpu: bool, environ=os.environ) -> None:
    """Raise a UserError when GPUs were given but torch sees none, unless the CPU was chosen."""
    import torch  # here: the job scripts count GPUs with this module, and torch takes seconds

    if allow_cpu or torch.cuda.is_available():
        return
    if environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return  # `accelerate launch --cpu`: the CPU on purpose
    given = gpus_given(environ)
    if not given:
        return
    cuda = torch.version.cuda
    build = f"a CUDA {cuda} build" if cuda else "a CPU-only build"
    driver = driver_version()
    if driver:
        found = f"the NVIDIA driver is {driver}"
    else:
        found = "nvidia-smi did not report a driver (missing driver or no GPU on this node)"
    if not cuda:
        need = ""
    elif cuda.startswith("12."):
        need = " (CUDA 12 builds need driver 525 or newer)"
    else:
        need = f" (CUDA {cuda.split('.')[0]} builds need driver 580 or newer)"
    target = suggested_build(driver)
    if target:
        fix = f"install the torch build for this driver with `make setup TORCH={target}`"
    else:
        fix = "install a torch build for this driver (`make setup TORCH=cu126|cu128|cu130`)"
    raise UserError(
        f"this process was given GPUs ({given}), but torch {torch.__version__} ({build}) "
        f"sees none: {found}{need}. Training would run on the CPU. Fix: {fix}, see "
        f"docs/install.md; or train on the CPU on purpose with --allow-cpu."
    )


def main(argv: list[str]) -> int:
    if argv:
        report_user_error(
            UserError(
                f"python -m cifar.devices takes no arguments (got {' '.join(argv)}): it prints "
                "how many GPUs this process was given, from SLURM's variables, "
                "CUDA_VISIBLE_DEVICES or nvidia-smi. Run it without arguments."
            )
        )
        return USAGE_EXIT_CODE
    print(gpu_count())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
