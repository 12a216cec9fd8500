"""The SLURM job scripts, submitted with sbatch to the one-node cluster of .ci/slurm-cluster.sh.

This cluster has 2 CPUs and no GPUs. The scripts ask for no GPU and one CPU, so they run here
as they are (test_plain_sbatch_...); most jobs here add the overrides a user would type (LOCAL)
and write their logs under tmp_path. Jobs get this checkout's Python environment through
CIFAR_VENV, write their run folders under tmp_path, and train on synthetic data on the CPU.
Without a cluster the tests skip (fail in CI).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, read_json, read_metrics, require, tiny_run, train_env
from tests.slurm_helpers import (
    cluster_available,
    fake_sinfo,
    job_info,
    job_state,
    restart_count,
    submit,
    wait_for_job,
)

SCRIPTS = sorted((ROOT / "slurm").glob("*.sh"))
# The environment the tests run in (/work/venv, .venv in CI): the jobs activate it.
VENV = Path(sys.executable).parent.parent
# sbatch options beat the scripts' #SBATCH lines: no GPUs, 1 CPU, a short limit.
LOCAL = ["--gres=none", "--cpus-per-task=1", "--time=10"]
TINY = tiny_run(train=256, test=64, batch=32)
# Long enough to be stopped mid-epoch: 32 steps per epoch and process, checkpoints every 5.
LONGER = tiny_run("--checkpoint-every", "5", train=2048, epochs=2)
TIMING = ("epoch_seconds", "train_images_per_second", "wall_seconds")
JOB_TIMEOUT = 240


def job_env(tmp_path: Path, **extra: str) -> dict:
    """What a job needs here: this venv, offline, one thread, run folders under tmp_path."""
    return train_env(CIFAR_VENV=str(VENV), CIFAR_RUNS_DIR=str(tmp_path / "runs"), **extra)


def sbatch(script: str, tmp_path: Path, *options: str, args=(), **env: str) -> int:
    """Submit slurm/<script> from the repository root (as users do), logs into tmp_path."""
    return submit(
        ROOT / "slurm" / script,
        *LOCAL,
        f"--output={tmp_path}/%x-%j.out",
        *options,
        env=job_env(tmp_path, **env),
        cwd=ROOT,
        script_args=[str(a) for a in args],
    )


def log_of(tmp_path: Path, name: str, job_id: int) -> str:
    return (tmp_path / f"{name}-{job_id}.out").read_text()


def wait_completed(job_id, tmp_path: Path, log: str) -> None:
    state = wait_for_job(job_id, timeout_s=JOB_TIMEOUT)
    if state != "COMPLETED":
        text = (tmp_path / log).read_text() if (tmp_path / log).exists() else "(no log)"
        pytest.fail(f"job {job_id} ended {state}; log {log}:\n{text}")


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def wait_for_checkpoint(job: int, run_dir: Path) -> None:
    """Wait until training runs: its first checkpoint exists."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not list(run_dir.glob("checkpoints/step-*")):
        assert job_state(job) in ("PENDING", "CONFIGURING", "RUNNING"), job_state(job)
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def signal_after_first_checkpoint(job: int, run_dir: Path) -> None:
    """Once training runs, send what SLURM sends before the time limit
    (#SBATCH --signal=USR1@120): USR1 to every process of the job's steps, not the batch shell."""
    wait_for_checkpoint(job, run_dir)
    subprocess.run(["scancel", "--signal=USR1", str(job)], check=True)


@pytest.fixture
def cluster():
    require(
        cluster_available(), "no SLURM cluster: start one with `sudo bash .ci/slurm-cluster.sh`"
    )


def test_every_script_parses():
    assert {p.name for p in SCRIPTS} >= {
        "cnn.sh",
        "resnet.sh",
        "multinode.sh",
        "sweep.sh",
        "compare.sh",
        "common.sh",
    }
    for script in SCRIPTS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


def dry_run(command: list[str], **env: str) -> str:
    """Run a script with CIFAR_DRY_RUN=1 (prints the launch command) in a fake SLURM job."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_", "CUDA_"))}
    base.update(CIFAR_DRY_RUN="1", SLURM_JOB_ID="4242", **env)
    result = subprocess.run(command, cwd=ROOT, env=base, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def would_run(output: str) -> str:
    (line,) = [x for x in output.splitlines() if x.startswith("would run: ")]
    return line.removeprefix("would run: ")


# How a one-node script runs its training under SLURM: one task of a job step, whose first
# process (slurm/step.py) outlives the run.
STEP = "srun --ntasks=1 python slurm/step.py "


def test_launch_command_follows_the_gpus_of_the_node():
    tail = "train.py --model cnn --epochs 1 --output-dir runs/cnn-job4242 --resume auto"
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}  # whatever nvidia-smi says
    one_cpu = dry_run(["bash", "slurm/cnn.sh", "--epochs", "1"], SLURM_JOB_NAME="cnn", **no_gpu)
    assert would_run(one_cpu) == STEP + (
        "accelerate launch --num_processes 1 --num_machines 1 --quiet --cpu "
        f"--mixed_precision no --dynamo_backend no {tail}"
    )
    four_gpus = dry_run(
        ["bash", "slurm/cnn.sh", "--epochs", "1"], SLURM_JOB_NAME="cnn", SLURM_GPUS_ON_NODE="4"
    )
    assert would_run(four_gpus) == STEP + (
        "accelerate launch --num_processes 4 --num_machines 1 --multi_gpu "
        f"--main_process_port 24242 --mixed_precision no --dynamo_backend no {tail}"
    )
    two_visible = dry_run(
        ["bash", "slurm/resnet.sh"],
        SLURM_JOB_NAME="big",
        CUDA_VISIBLE_DEVICES="0,1",
        CIFAR_MIXED_PRECISION="bf16",
        CIFAR_TRAIN_ARGS="--epochs 3 --lr 0.01",
    )
    assert would_run(two_visible) == STEP + (
        "accelerate launch --num_processes 2 --num_machines 1 --multi_gpu "
        "--main_process_port 24242 --mixed_precision bf16 train.py --model resnet50 --epochs 3 "
        "--lr 0.01 --output-dir runs/big-job4242 --resume auto"
    )
    cpu_group = dry_run(
        ["bash", "slurm/cnn.sh"], CIFAR_NUM_PROCESSES="2", CIFAR_RUN_DIR="/x/y", **no_gpu
    )
    assert would_run(cpu_group).startswith(
        f"{STEP}env ACCELERATE_USE_CPU=true accelerate launch --num_processes 2 --num_machines 1 "
        "--multi_gpu "
    )
    assert would_run(cpu_group).endswith("--output-dir /x/y --resume auto")


def test_multinode_command_per_node():
    """Each node's `accelerate launch`, as cifar_node builds it inside `srun bash -c`."""
    env = {
        "CIFAR_GPUS": "4",
        "CIFAR_PER_MACHINE": "4",
        "CIFAR_MACHINES": "2",
        "CIFAR_MAIN_IP": "node001",
        "CIFAR_PORT": "29400",
        "CIFAR_RUN_DIR": "runs/multinode-job4242",
        "SLURM_NODEID": "1",
        "SLURM_PROCID": "1",
    }
    node = dry_run(["bash", "-c", 'source slurm/common.sh && cifar_node "$@"', "x", "--a"], **env)
    assert would_run(node) == (
        "accelerate launch --num_processes 8 --num_machines 2 --multi_gpu --main_process_port "
        "29400 --machine_rank 1 --main_process_ip node001 --rdzv_backend static "
        "--mixed_precision no --dynamo_backend no train.py --a"
    )
    batch = dry_run(
        ["bash", "slurm/multinode.sh", "--model", "resnet50"],
        SLURM_JOB_NAME="multinode",
        SLURM_NNODES="2",
        SLURM_GPUS_ON_NODE="4",
        SLURM_CPUS_PER_TASK="16",
        CIFAR_MAIN_IP="node001",
    )
    assert would_run(batch).startswith(
        "srun --kill-on-bad-exit=1 --nodes=2 --ntasks=2 --ntasks-per-node=1 --gres=gpu:4 "
        "--cpus-per-task=16 python slurm/step.py "
        'bash -c source slurm/common.sh && cifar_node "$@" cifar-node '
        "--model resnet50 --output-dir runs/multinode-job4242 --resume auto"
    )
    assert "2 machine(s) x 4 process(es) (4 GPU(s) each), main node001:24242" in batch


def test_compare_runs_the_study_with_the_node_launcher():
    """compare.sh is the study with seed 0: flags without -- go to train.py, those before --
    to the study; the launcher is the one the other scripts use."""
    launcher = (
        "--launcher accelerate launch --num_processes 2 --num_machines 1 --multi_gpu "
        "--main_process_port 24242 --mixed_precision no --dynamo_backend no"
    )
    output = dry_run(["bash", "slurm/compare.sh", "--epochs", "1"], SLURM_GPUS_ON_NODE="2")
    assert would_run(output) == STEP + (
        f"python -m cifar.study --out runs/compare-job4242 --seeds 0 {launcher} -- --epochs 1"
    )
    output = dry_run(
        ["bash", "slurm/compare.sh", "--seeds", "1", "2", "--", "--epochs", "1"],
        SLURM_GPUS_ON_NODE="2",
        COMPARE_DIR="runs/mine",
    )
    assert would_run(output) == STEP + (
        f"python -m cifar.study --out runs/mine --seeds 0 {launcher} --seeds 1 2 -- --epochs 1"
    )


def test_flags_the_script_owns_are_refused():
    result = subprocess.run(
        ["bash", "slurm/cnn.sh", "--output-dir", "elsewhere"],
        cwd=ROOT,
        env={**os.environ, "CIFAR_DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "CIFAR_RUN_DIR" in result.stderr


def test_a_job_without_gpus_where_the_partition_has_them_stops_saying_how_to_ask(tmp_path):
    """A plain sbatch asks for no GPU; on a partition with GPUs the job stops at once (exit 2)
    instead of training on the CPU, unless CIFAR_ALLOW_CPU=1."""
    fake = fake_sinfo(tmp_path / "bin", "gpu", "gpu:4(S:0-1)", 64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CIFAR_", "CUDA_"))}
    env.update(
        CIFAR_DRY_RUN="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_PARTITION="gpu",
        CUDA_VISIBLE_DEVICES="",
        PATH=f"{fake}:{env['PATH']}",
    )
    result = subprocess.run(
        ["bash", "slurm/cnn.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert message.startswith(
        "error: job 4242 has no GPU, but the nodes of partition gpu have them (gpu:4(S:0-1))"
    )
    for phrase in ("slurm/submit slurm/cnn.sh", "--gres=gpu:1", "CIFAR_ALLOW_CPU=1"):
        assert phrase in message, (phrase, message)
    allowed = dry_run(
        ["bash", "slurm/cnn.sh"],
        CIFAR_ALLOW_CPU="1",
        **{k: env[k] for k in ("SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES", "PATH")},
    )
    assert " --quiet --cpu " in would_run(allowed)


def submit_dry(tmp_path: Path, gres: str, cpus: int, *args: str) -> str:
    """slurm/submit ARGS with CIFAR_DRY_RUN=1 on a made-up cluster, run from tmp_path: the sbatch
    command it would run."""
    fake = fake_sinfo(tmp_path / "bin", "main", gres, cpus)
    env = {**os.environ, "CIFAR_DRY_RUN": "1", "PATH": f"{fake}:{os.environ['PATH']}"}
    result = subprocess.run(
        [str(ROOT / "slurm" / "submit"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return would_run(result.stdout)


def test_submit_asks_for_what_the_cluster_has_and_logs_into_the_repository(tmp_path):
    cnn, sweep = ROOT / "slurm" / "cnn.sh", ROOT / "slurm" / "sweep.sh"
    log = f"--output={ROOT}/logs/%x-%j.out"
    gpu = submit_dry(tmp_path, "gpu:8(S:0-1)", 64, str(cnn), "--epochs", "3")
    assert gpu == f"sbatch --gres=gpu:1 --cpus-per-task=8 {log} {cnn} --epochs 3"
    mine = submit_dry(tmp_path, "gpu:8(S:0-1)", 64, "--gres=gpu:4", "-p", "main", str(cnn))
    assert mine == f"sbatch --gres=gpu:1 --cpus-per-task=8 {log} --gres=gpu:4 -p main {cnn}"
    cpu = submit_dry(tmp_path, "(null)", 2, str(cnn))
    assert cpu == f"sbatch --cpus-per-task=2 {log} {cnn}"
    array = submit_dry(tmp_path, "(null)", 16, str(sweep), "--out", "runs/s")
    array_log = f"--output={ROOT}/logs/%x-%A_%a.out"
    assert array == f"sbatch --cpus-per-task=8 {array_log} {sweep} --out runs/s"
    multinode = submit_dry(tmp_path, "gpu:4", 32, str(ROOT / "slurm" / "multinode.sh"))
    assert multinode.startswith("sbatch --gres=gpu:4 --cpus-per-task=16 ")
    submit_script = str(ROOT / "slurm" / "submit")
    nothing = subprocess.run([submit_script, "--time=5"], capture_output=True, text=True)
    assert nothing.returncode == 2 and nothing.stderr.startswith("error: no job script given.")


# A launcher that dies of USR1 (no handler, like `accelerate launch`) and leaves its training
# process, which checkpoints on USR1 (two seconds here) and exits 75.
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])
time.sleep(60)
"""
TRAINER = """
import pathlib, signal, sys, time
stopped = []
signal.signal(signal.SIGUSR1, lambda *_: stopped.append(1))
pathlib.Path(sys.argv[1] + ".started").touch()
while not stopped:
    time.sleep(0.05)
time.sleep(2)
pathlib.Path(sys.argv[1]).write_text("checkpoint")
sys.exit(75)
"""


def test_the_step_waits_for_the_checkpoint_of_a_launcher_that_died(tmp_path):
    """USR1 to every process, as SLURM signals a step: the launcher dies, its training process
    checkpoints; slurm/step.py exits 75 only once that checkpoint exists."""
    checkpoint = tmp_path / "checkpoint"
    step = subprocess.Popen(
        [sys.executable, "slurm/step.py", sys.executable, "-c", LAUNCHER, TRAINER, checkpoint],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "checkpoint.started").exists():
        assert time.monotonic() < deadline and step.poll() is None
        time.sleep(0.05)
    os.killpg(step.pid, signal.SIGUSR1)
    output, _ = step.communicate(timeout=30)
    assert step.returncode == 75
    assert checkpoint.read_text() == "checkpoint"
    assert "got SIGUSR1: the training checkpoints and stops" in output


def test_the_step_passes_the_exit_code_on_and_refuses_no_command():
    run = [sys.executable, "slurm/step.py"]
    assert subprocess.run([*run, "sh", "-c", "exit 3"], cwd=ROOT).returncode == 3
    assert subprocess.run([*run, "sh", "-c", "kill -9 $$"], cwd=ROOT).returncode == 137
    for bad in ([], ["no-such-launcher"]):
        result = subprocess.run([*run, *bad], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


@pytest.mark.slurm
def test_cnn_and_resnet_jobs_complete(cluster, tmp_path):
    cnn = sbatch("cnn.sh", tmp_path, args=TINY)
    resnet = sbatch(
        "resnet.sh", tmp_path, args=[*TINY, "--no-pretrained", "--image-size", "32", "--lr", "0.01"]
    )
    for job, name, model in ((cnn, "cnn", "cnn"), (resnet, "resnet50", "resnet50")):
        wait_completed(job, tmp_path, f"{name}-{job}.out")
        run_dir = tmp_path / "runs" / f"{name}-job{job}"
        summary = read_json(run_dir / "summary.json")
        assert summary["model"] == model and summary["world_size"] == 1
        assert len(read_metrics(run_dir)) == 1
        log = log_of(tmp_path, name, job)
        assert f"run folder {run_dir}" in log and "done:" in log


@pytest.mark.slurm
def test_plain_sbatch_from_any_directory_runs_on_a_cpu_cluster_and_logs_into_logs(
    cluster, tmp_path
):
    """`sbatch /abs/path/slurm/cnn.sh` with no sbatch option, from outside the repository, on
    this cluster without GPUs and with 2 CPUs; and the same through slurm/submit. Logs land in
    the repository's logs/; the submission directory keeps SLURM's own file, naming the log.
    A script with no repository around it says so in that file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = job_env(tmp_path)
    plain = submit(ROOT / "slurm" / "cnn.sh", env=env, cwd=elsewhere, script_args=TINY)
    result = subprocess.run(
        [str(ROOT / "slurm" / "submit"), "--parsable", str(ROOT / "slurm" / "cnn.sh"), *TINY],
        cwd=elsewhere,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    wrapped = int(result.stdout.strip())
    lone = tmp_path / "lone" / "slurm" / "cnn.sh"
    lone.parent.mkdir(parents=True)
    shutil.copy(ROOT / "slurm" / "cnn.sh", lone)
    lost = submit(lone, env=env, cwd=lone.parent.parent)
    logs = {job: ROOT / "logs" / f"cnn-{job}.out" for job in (plain, wrapped)}
    try:
        for job in (plain, wrapped):
            state = wait_for_job(job, timeout_s=JOB_TIMEOUT)
            text = logs[job].read_text() if logs[job].exists() else "(no log)"
            assert state == "COMPLETED", f"job {job} ended {state}:\n{text}"
            run_dir = tmp_path / "runs" / f"cnn-job{job}"
            assert read_json(run_dir / "summary.json")["model"] == "cnn"
            assert f"run folder {run_dir}" in text and "done:" in text
            assert "0 GPU(s), 1 process(es)" in text
        pointer = (elsewhere / f"slurm-{plain}.out").read_text()
        assert f"job {plain}: log {ROOT}/logs/cnn-{plain}.out" in pointer
        assert "done:" not in pointer
        assert list(elsewhere.iterdir()) == [elsewhere / f"slurm-{plain}.out"]
        assert job_info(wrapped)["NumCPUs"] == "2" and job_info(plain)["NumCPUs"] == "1"
        assert wait_for_job(lost, timeout_s=JOB_TIMEOUT) == "FAILED"
        said = " ".join((tmp_path / "lone" / f"slurm-{lost}.out").read_text().split())
        assert said.startswith("error: cannot find the repository (no slurm/common.sh above")
        assert "CIFAR_REPO=/path/to/cifar-accelerate sbatch" in said
    finally:
        for log in logs.values():
            log.unlink(missing_ok=True)


@pytest.mark.slurm
def test_signalled_job_checkpoints_requeues_and_resumes_exactly(cluster, tmp_path):
    """USR1 (the time-limit warning) mid-epoch: checkpoint, requeue, resume, same numbers."""
    args = [*LONGER, "--seed", "3"]
    reference_dir = tmp_path / "reference"
    reference = subprocess.Popen(
        [sys.executable, "train.py", *args, "--output-dir", str(reference_dir)],
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        job = sbatch("cnn.sh", tmp_path, args=args)
        run_dir = tmp_path / "runs" / f"cnn-job{job}"
        signal_after_first_checkpoint(job, run_dir)
        wait_completed(job, tmp_path, f"cnn-{job}.out")
        output, _ = reference.communicate(timeout=JOB_TIMEOUT)
    finally:
        reference.kill()
        reference.wait()
    assert reference.returncode == 0, output
    assert restart_count(job) == 1
    log = log_of(tmp_path, "cnn", job)
    assert "got SIGUSR1" in log and "checkpoint saved at step" in log
    assert f"job {job} requeued" in log and "resuming at epoch" in log
    assert "restart 1" in log
    assert without_timing(read_json(run_dir / "summary.json")) == without_timing(
        read_json(reference_dir / "summary.json")
    )
    assert [without_timing(r) for r in read_metrics(run_dir)] == [
        without_timing(r) for r in read_metrics(reference_dir)
    ]


def scancel_after_first_checkpoint(job: int, tmp_path: Path, name: str, run_dir: Path) -> str:
    """A plain scancel (SIGTERM, job COMPLETING) once training runs is not a warning: the job
    checkpoints and ends CANCELLED, not requeued. Returns its log."""
    wait_for_checkpoint(job, run_dir)
    subprocess.run(["scancel", str(job)], check=True)
    assert wait_for_job(job, timeout_s=JOB_TIMEOUT) == "CANCELLED"
    assert restart_count(job) == 0
    log = log_of(tmp_path, name, job)
    assert "got SIGTERM" in log and "checkpoint saved at step" in log
    assert "not requeued (job state COMPLETING)" in log
    assert not (run_dir / "summary.json").exists()
    return log


@pytest.mark.slurm
def test_plain_scancel_cancels_after_a_checkpoint(cluster, tmp_path):
    job = sbatch("cnn.sh", tmp_path, args=LONGER)
    run_dir = tmp_path / "runs" / f"cnn-job{job}"
    log = scancel_after_first_checkpoint(job, tmp_path, "cnn", run_dir)
    assert f"CIFAR_RUN_DIR={run_dir} sbatch" in log


COMPARE = [*LONGER, "--no-pretrained", "--image-size", "32"]


@pytest.mark.slurm
def test_compare_requeues_on_the_warning_and_skips_the_finished_model(cluster, tmp_path):
    """USR1 while ResNet-50 trains: the study stops it at a checkpoint, the job requeues, the
    finished CNN is skipped, ResNet-50 resumes, and the study and the report are written."""
    job = sbatch("compare.sh", tmp_path, args=COMPARE)
    out = tmp_path / "runs" / f"compare-job{job}"
    signal_after_first_checkpoint(job, out / "resnet50" / "seed0")
    wait_completed(job, tmp_path, f"compare-{job}.out")
    assert restart_count(job) == 1
    log = log_of(tmp_path, "compare", job)
    assert "got SIGUSR1" in log and f"job {job} requeued" in log
    # The study's launcher dies of USR1; the step waits for train.py's checkpoint, the job then
    # requeues, and the requeued run resumes from that checkpoint.
    assert log.index("checkpoint saved at step") < log.index(f"job {job} requeued")
    (saved,) = re.findall(r"checkpoint saved at step (\d+)", log)
    assert re.search(rf"resuming at epoch \d+ step {saved}\b", log)
    assert f"{out}/cnn/seed0: finished, skipped" in log
    assert log.count("resuming at epoch") == 1
    for model in ("cnn", "resnet50"):
        run = out / model / "seed0"
        assert read_json(run / "summary.json")["model"] == model
        assert len(read_metrics(run)) == 2
    resumes = (out / "resnet50" / "seed0" / "resume.jsonl").read_text().splitlines()
    assert not (out / "cnn" / "seed0" / "resume.jsonl").exists() and len(resumes) == 1
    assert read_json(out / "study.json")["arms"].keys() == {"cnn", "resnet50"}
    results = (out / "report" / "results.md").read_text()
    assert "| cnn/seed0 | cnn |" in results and "| resnet50/seed0 | resnet50 |" in results


@pytest.mark.slurm
def test_plain_scancel_cancels_compare_after_a_checkpoint(cluster, tmp_path):
    job = sbatch("compare.sh", tmp_path, args=COMPARE)
    out = tmp_path / "runs" / f"compare-job{job}"
    log = scancel_after_first_checkpoint(job, tmp_path, "compare", out / "cnn" / "seed0")
    assert f"CIFAR_RUN_DIR={out} sbatch" in log
    assert not (out / "study.json").exists()


@pytest.mark.slurm
def test_multinode_two_tasks_as_two_machines_survive_a_stop(cluster, tmp_path):
    """srun starts one launcher per task; the two form one 2-process gloo group. USR1 to the
    step reaches both: both checkpoint, the job requeues and resumes."""
    job = sbatch(
        "multinode.sh",
        tmp_path,
        "--nodes=1",
        "--ntasks=2",
        "--ntasks-per-node=2",
        args=[*LONGER, "--synthetic-train-size", "4096"],
        CIFAR_TASKS_AS_MACHINES="1",
    )
    run_dir = tmp_path / "runs" / f"multinode-job{job}"
    signal_after_first_checkpoint(job, run_dir)
    wait_completed(job, tmp_path, f"multinode-{job}.out")
    assert restart_count(job) == 1
    assert read_json(run_dir / "summary.json")["world_size"] == 2
    assert len(read_metrics(run_dir)) == 2
    log = log_of(tmp_path, "multinode", job)
    assert "--num_machines 2 --multi_gpu --main_process_port" in log
    for rank in (0, 1):
        assert f"machine {rank} of 2" in log and f"--machine_rank {rank} " in log
    assert "got SIGUSR1" in log and f"job {job} requeued" in log
    assert log.count("resuming at epoch") == 1  # printed once per run, not per machine
