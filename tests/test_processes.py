"""cifar/processes.py: the process-wide settings a run applies, and stop signals (SIGTERM, Ctrl-C,
a launcher's death, a signal to every process of a job) turned into a checkpoint and exit 75,
from which the resume is exact; SIGKILL loses only the steps since the last checkpoint."""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import (
    ROOT,
    SMALL,
    SMOKE,
    comparable_metrics,
    final_weights,
    kill_run,
    make_jpegs,
    max_difference,
    read_json,
    read_metrics,
    run_train,
    start_train,
    tiny_run,
    train_env,
    train_in_process,
    wait_for_checkpoint,
)


def test_config_json_records_the_process_settings_the_run_applied(tmp_path):
    run_train([*SMALL, "--output-dir", tmp_path / "run", "--deterministic"])
    applied = read_json(tmp_path / "run" / "config.json")["process_settings"]
    assert applied["stop_with_launcher"] is False  # plain python: no launcher to outlive
    assert applied["deterministic_algorithms"] is True
    assert applied["cublas_workspace_config"] == ":4096:8"
    assert applied["tf32_matmul"] is True and applied["tf32_cudnn"] is True  # --tf32's default
    assert isinstance(applied["malloc_reuses_freed_memory"], bool)  # True with glibc, on a CPU


def test_a_second_ctrl_c_stops_at_once_without_a_traceback():
    from cifar.processes import StopRequest

    class OneProcess:
        num_processes = 1

    stop = StopRequest(OneProcess())
    stop.handle(signal.SIGINT, None)
    assert stop.should_stop(1) and stop.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT, None)


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of this process alone, for StopRequest's collectives."""
    store = f"file://{tmp_path}/store"
    torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_the_stop_check_of_several_processes_never_waits_on_the_way(one_rank_group, monkeypatch):
    from cifar.processes import StopRequest

    class SeveralProcesses:  # what StopRequest reads of a run of several processes
        num_processes = 2

        def reduce(self, *args, **kwargs):
            raise AssertionError("a blocking collective on the device")

    started, waited = [], []
    all_reduce = torch.distributed.all_reduce

    class Work:
        def __init__(self, work):
            self.work = work

        def wait(self):
            waited.append(len(started))
            return self.work.wait()

    def counting(tensor, *args, **kwargs):
        started.append((tensor.device.type, kwargs.get("async_op")))
        return Work(all_reduce(tensor, *args, **kwargs))

    monkeypatch.setattr(torch.distributed, "all_reduce", counting)
    stop = StopRequest(SeveralProcesses(), check_every=10)
    assert not any(stop.should_stop(step) for step in range(1, 101))
    # One sum of a CPU flag per 10 steps, never waited for where it starts: each is read at the
    # next check step, 10 steps later.
    assert started == [("cpu", True)] * 10
    assert waited == list(range(1, 10))

    stop.handle(signal.SIGTERM, None)  # during step 103
    stops = [step for step in range(101, 141) if stop.should_stop(step)]
    assert stops[0] == 120  # started at step 110, read at step 120: within 2 x check_every
    assert stop.should_stop(0, force_check=True)  # between epochs: the flag as it is now


def resumable(batch: int) -> list[str]:
    """16 steps per epoch (1 process, batch 64, or 2 processes, batch 32), checkpoints every 5."""
    return tiny_run(
        "--checkpoint-every", "5", "--dropout", "0.1", "--deterministic", batch=batch, epochs=3
    )


def test_sigterm_saves_a_checkpoint_and_exits_for_requeue(tmp_path):
    args = [*resumable(batch=64), "--output-dir", tmp_path]
    process = start_train(args)
    wait_for_checkpoint(tmp_path, after_step=5, process=process)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output
    assert "SIGTERM: checkpoint saved" in output
    progress = read_json(sorted(glob.glob(f"{tmp_path}/checkpoints/step-*/progress.json"))[-1])
    assert progress["global_step"] > 5
    run_train([*args, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


# train.py with SIGUSR1 (SLURM's time-limit warning) sent to itself as the run is assembled.
SIGNAL_IN_SETUP = """
import os, runpy, signal, sys
import cifar.engine as engine
assemble = engine.setup_run
def setup_with_a_signal(config):
    os.kill(os.getpid(), signal.SIGUSR1)
    return assemble(config)
engine.setup_run = setup_with_a_signal
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_time_limit_warning_during_setup_stops_at_the_first_step_with_a_checkpoint(tmp_path):
    """Before, SIGUSR1 in a long setup killed the process (-10) silently: no exit 75, no requeue."""
    args = [*resumable(batch=64), "--output-dir", tmp_path]
    command = [sys.executable, "-c", SIGNAL_IN_SETUP, str(ROOT / "train.py"), *map(str, args)]
    result = subprocess.run(
        command, cwd=ROOT, env=train_env(), text=True, capture_output=True, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 75, output
    assert "SIGUSR1 during setup: the run stops at its first check" in output
    assert "SIGUSR1: checkpoint saved at step 1" in output and "Traceback" not in output
    (checkpoint,) = glob.glob(f"{tmp_path}/checkpoints/step-*/progress.json")
    assert read_json(checkpoint)["global_step"] == 1
    run_train([*args, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_ctrl_c_checkpoints_and_exits_for_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run("--checkpoint-every", "5", train=4096, epochs=2)
    process = start_train([*args, "--output-dir", run_dir])
    wait_for_checkpoint(run_dir, after_step=5, process=process)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output
    assert "SIGINT: checkpoint saved at step" in output and "Traceback" not in output
    run_train([*args, "--output-dir", run_dir, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]


def test_ctrl_c_while_setting_up_exits_130_without_a_traceback(tmp_path):
    process = start_train([*SMOKE, "--output-dir", tmp_path / "run"])
    time.sleep(1.0)  # inside the imports or the set-up, before the loop's handler
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode in (130, 75), output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_in_epoch_two_then_resume_equals_an_uninterrupted_run(tmp_path, processes):
    kind = "python" if processes == 1 else "torchrun"
    args = resumable(batch=64 // processes)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_train([*args, "--output-dir", whole], kind=kind, processes=processes)

    process = start_train([*args, "--output-dir", killed], kind, processes)
    wait_for_checkpoint(killed, after_step=16, process=process)  # inside epoch 2 (steps 17-32)
    kill_run(process, killed)
    assert len(read_metrics(killed)) == 1
    run_train([*args, "--output-dir", killed, "--resume", "auto"], kind=kind, processes=processes)

    assert max_difference(final_weights(whole), final_weights(killed)) == 0.0
    expected, resumed = comparable_metrics(whole), comparable_metrics(killed)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for a, b in zip(expected, resumed, strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=0)


def rank_of(pid: int) -> int:
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(environ[b"RANK"])


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step_and_the_resume_is_exact(tmp_path):
    # 64 steps an epoch, so that the stop (within 20 steps of the signal) comes inside it.
    args = tiny_run("--checkpoint-every", "5", "--deterministic", train=4096, batch=32, epochs=2)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_train([*args, "--output-dir", whole], kind="torchrun", processes=2)
    process = start_train([*args, "--output-dir", stopped], "torchrun", 2)
    wait_for_checkpoint(stopped, after_step=5, process=process)
    (second,) = [pid for pid in children(process.pid) if rank_of(pid) == 1]
    os.kill(second, signal.SIGTERM)  # not the main process: it learns of it from the flag
    output = process.communicate(timeout=120)[0]
    # torchrun reports each process's exit code (and a traceback of its own). Both ranks exit
    # 75 after the checkpoint; when rank 0 is out first, torchrun may SIGTERM rank 1 as it
    # leaves (its handler already gone), which then reads -15.
    codes = re.findall(r"exitcode  : (-?\d+)", output)
    assert "75" in codes and set(codes) <= {"75", "-15"} and len(codes) == 2, output
    assert "stop request: checkpoint saved at step" in output, output
    assert "/cifar/" not in output and "another process" not in output, output
    step = int(output.split("checkpoint saved at step ")[1].split(";")[0])
    latest = sorted(glob.glob(f"{stopped}/checkpoints/step-*"))[-1]
    assert read_json(f"{latest}/progress.json")["global_step"] == step
    assert step % 10 == 0 and step < 64  # a check step, inside epoch 1
    run_train([*args, "--output-dir", stopped, "--resume", "auto"], kind="torchrun", processes=2)
    assert max_difference(final_weights(whole), final_weights(stopped)) == 0.0
    assert [r["epoch"] for r in read_metrics(stopped)] == [1, 2]


def wait_gone(pid: int, timeout: float) -> bool:
    """True once the process has exited (gone, or a zombie nobody reaps)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_sigterm_to_accelerate_launch_checkpoints_and_stops_the_training(tmp_path):
    run_dir = tmp_path / "run"
    args = tiny_run("--checkpoint-every", "5", train=4096, epochs=2)
    process = start_train([*args, "--output-dir", run_dir], kind="accelerate")
    wait_for_checkpoint(run_dir, after_step=5, process=process)
    (training,) = children(process.pid)
    process.send_signal(signal.SIGTERM)  # to the launcher alone
    process.wait(timeout=60)
    assert wait_gone(training, timeout=120), "the training process went on without its launcher"
    output = process.stdout.read()
    assert "SIGTERM: checkpoint saved at step" in output, output
    run_train([*args, "--output-dir", run_dir, "--resume", "auto"])
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_job_checkpoints_and_the_resume_is_exact(tmp_path, stop):
    """scancel and Ctrl-C signal every process of the job, DataLoader workers included."""
    root = make_jpegs(tmp_path / "images", per_class=64, size=(64, 48))
    args = [
        "--dataset", "imagefolder", "--data-dir", root, "--cache-images", "never",
        "--num-workers", "2", "--tracker", "none", "--epochs", "2", "--batch-size", "8",
        "--checkpoint-every", "4", "--no-batch-norm",
    ]  # fmt: skip
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_train([*args, "--output-dir", whole])
    process = start_train([*args, "--output-dir", stopped])
    wait_for_checkpoint(stopped, after_step=4, process=process)
    os.killpg(process.pid, stop)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 75, output
    assert f"{stop.name}: checkpoint saved at step" in output and "Traceback" not in output
    run_train([*args, "--output-dir", stopped, "--resume", "auto"])
    assert max_difference(final_weights(whole), final_weights(stopped)) == 0.0


def test_an_operation_without_a_deterministic_kernel_stops_a_deterministic_run_naming_it(
    monkeypatch, tmp_path
):
    import cifar.assemble

    build_model = cifar.assemble.build_model

    def scatter_first(module, inputs):  # put_ has no deterministic kernel, on CPUs too
        (x,) = inputs
        x.new_zeros(4).put_(torch.tensor([0, 0], device=x.device), x.new_ones(2))

    def scattering_model(*args):
        model = build_model(*args)
        model.register_forward_pre_hook(scatter_first)
        return model

    monkeypatch.setattr(cifar.assemble, "build_model", scattering_model)
    args = [*SMALL, "--output-dir", str(tmp_path / "run")]
    code, _, err = train_in_process([*args, "--deterministic"])
    assert code == 2 and "Traceback" not in err, err
    (line,) = err.splitlines()
    assert line.startswith(
        "error: --deterministic: the operation put_ has no deterministic implementation on this "
        f"device in torch {torch.__version__}, so the run could not be bit-identical"
    ), line
    assert "Start it anew without --deterministic" in line
    code, _, err = train_in_process([*SMALL, "--output-dir", str(tmp_path / "other")])
    assert code == 0, err  # without --deterministic the same model trains


def test_tf32_is_a_choice_of_the_config_applied_to_matmuls_and_convolutions():
    from cifar.config import parse_config
    from cifar.processes import apply_tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for flags, expected in (([], True), (["--no-tf32"], False), (["--tf32"], True)):
            config = parse_config(["--dataset", "synthetic", "--tracker", "none", *flags])
            assert config.to_dict()["tf32"] is expected  # in config.json and the run's settings
            applied = apply_tf32(config.tf32)
            assert applied == {"tf32_matmul": expected, "tf32_cudnn": expected}
            assert torch.backends.cuda.matmul.allow_tf32 is expected
            assert torch.backends.cudnn.allow_tf32 is expected
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
