"""cifar/distributed.py and the launchers: N processes give the answer of one (sharding,
reduction, accumulation, seeds), and the Accelerate configs launch them."""

import glob
import subprocess

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from tests.helpers import (
    BIN,
    ROOT,
    SMOKE,
    comparable_metrics,
    devices_for,
    final_weights,
    max_difference,
    on_cuda,
    read_json,
    run_train,
    tiny_run,
    train_env,
)

# BatchNorm normalises with per-process batch statistics, so N x b equals 1 x (N x b) only
# without it; everything else (crop, flip, order, loss, schedule) is identical.
EXACT = tiny_run("--no-batch-norm", test=257, batch=None)


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one_side = devices_for(2)  # on the device the two processes get
    run_train([*EXACT, "--no-shuffle", "--batch-size", "64", "--output-dir", one], env=one_side)
    run_train(
        [*EXACT, "--no-shuffle", "--batch-size", "32", "--output-dir", two],
        kind="torchrun",
        processes=2,
    )
    assert max_difference(final_weights(one), final_weights(two)) < 1e-5
    summary_one, summary_two = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert summary_two["world_size"] == 2 and summary_one["world_size"] == 1
    assert summary_one["test_accuracy"] == summary_two["test_accuracy"]
    assert summary_one["num_test_samples"] == summary_two["num_test_samples"] == 257


def test_gradient_accumulation_of_two_batches_equals_one_double_batch(tmp_path):
    accumulated, double = tmp_path / "accumulated", tmp_path / "double"
    run_train(
        [
            *EXACT,
            "--batch-size",
            "32",
            "--gradient-accumulation-steps",
            "2",
            "--output-dir",
            accumulated,
        ]
    )
    run_train([*EXACT, "--batch-size", "64", "--output-dir", double])
    assert max_difference(final_weights(accumulated), final_weights(double)) < 1e-5
    config = read_json(accumulated / "config.json")
    assert config["gradient_accumulation_steps_used"] == 2
    steps = [
        read_json(p)["global_step"]
        for p in glob.glob(f"{accumulated}/checkpoints/step-*/progress.json")
    ]
    assert max(steps) == 1024 // 64


@pytest.mark.parametrize("processes", [2, 3])
def test_evaluation_counts_every_test_image_once(tmp_path, processes):
    run_train(
        [*tiny_run(train=384, test=10001, batch=32), "--output-dir", tmp_path],
        kind="torchrun",
        processes=processes,
    )
    summary = read_json(tmp_path / "summary.json")
    assert summary["num_test_samples"] == 10_001
    assert summary["world_size"] == processes
    assert sum(map(sum, summary["confusion_matrix"])) == 10_001


def test_same_seed_gives_identical_metrics(tmp_path):
    # On a GPU only deterministic kernels (no cudnn autotuning) repeat a run bit for bit.
    exact = ["--deterministic"] if on_cuda() else []
    args = [*SMOKE, *exact, "--epochs", "2", "--dropout", "0.2", "--seed", "7"]
    run_train([*args, "--output-dir", tmp_path / "a"])
    run_train([*args, "--output-dir", tmp_path / "b"])
    run_train([*args[:-1], "8", "--output-dir", tmp_path / "c"])
    a, b, c = (comparable_metrics(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "name", ["single_gpu_bf16", "multi_gpu", "multi_node", "cpu", "cpu_multi_process"]
)
def test_accelerate_configs_parse(name):
    config = load_config_from_file(str(ROOT / "accelerate_configs" / f"{name}.yaml"))
    assert config.mixed_precision in ("no", "bf16")
    assert config.use_cpu == name.startswith("cpu")


def test_cpu_multi_process_config_launches_two_processes(tmp_path):
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "accelerate_configs" / "cpu_multi_process.yaml"),
        str(ROOT / "train.py"),
        *SMOKE,
        "--output-dir",
        str(tmp_path),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert read_json(tmp_path / "summary.json")["world_size"] == 2
    assert torch.tensor(read_json(tmp_path / "summary.json")["confusion_matrix"]).sum() == 256


def test_the_bare_module_comes_out_of_ddp_and_torch_compile_in_either_order(tmp_path):
    from accelerate.utils import extract_model_from_parallel
    from torch.nn.parallel import DistributedDataParallel

    from cifar.distributed import bare_module

    class Unwrapping:  # Accelerator.unwrap_model, without an Accelerator's process-wide state
        def unwrap_model(self, model, keep_torch_compile=True):
            return extract_model_from_parallel(model, keep_torch_compile=keep_torch_compile)

    store = f"file://{tmp_path}/store"
    torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        compiled = torch.compile(model)  # compiles only when called: not here
        for wrapped in (
            compiled,
            DistributedDataParallel(compiled),
            DistributedDataParallel(model),
        ):
            assert bare_module(Unwrapping(), wrapped) is model
        assert list(bare_module(Unwrapping(), DistributedDataParallel(compiled)).state_dict()) == [
            "weight",
            "bias",
        ]
    finally:
        torch.distributed.destroy_process_group()
