"""cifar/build.py: the Accelerator a run trains with: bf16 on the CPU trains, fp16 there is
refused in one paragraph; collectives wait long enough for work of the main process alone."""

import contextlib
from datetime import timedelta

import pytest

from tests.helpers import SMOKE, on_cuda, read_json, run_train


def test_bf16_on_cpu_trains(tmp_path):
    run_train([*SMOKE, "--mixed-precision", "bf16", "--output-dir", tmp_path])
    summary = read_json(tmp_path / "summary.json")
    assert summary["mixed_precision"] == "bf16" and summary["test_accuracy"] > 0.3


def test_fp16_on_cpu_is_refused_clearly(tmp_path):
    # A CUDA machine's CPU run: the refusal is of the CPU, which --allow-cpu does not lift.
    cpu = {"CUDA_VISIBLE_DEVICES": ""} if on_cuda() else {}
    result = run_train(
        [*SMOKE, "--mixed-precision", "fp16", "--output-dir", tmp_path], check=False, env=cpu
    )
    assert result.returncode == 2
    assert "fp16 mixed precision needs a GPU" in result.stderr and "bf16" in result.stderr
    assert "Traceback" not in result.stderr


def test_collectives_wait_three_hours_for_the_main_process_or_as_the_environment_says(
    monkeypatch,
):
    import cifar.build
    from cifar.config import parse_config
    from cifar.errors import UserError

    made = []
    monkeypatch.setattr(cifar.build, "Accelerator", lambda **kwargs: made.append(kwargs))
    config = parse_config(["--dataset", "synthetic", "--tracker", "none"])

    def timeout_given() -> timedelta:
        with contextlib.suppress(AttributeError):  # the stand-in returns None
            cifar.build.make_accelerator(config)
        (handler,) = made.pop()["kwargs_handlers"]
        return handler.timeout

    monkeypatch.delenv("CIFAR_COLLECTIVE_TIMEOUT_MINUTES", raising=False)
    assert timeout_given() == timedelta(hours=3)
    monkeypatch.setenv("CIFAR_COLLECTIVE_TIMEOUT_MINUTES", "600")
    assert timeout_given() == timedelta(hours=10)
    monkeypatch.setenv("CIFAR_COLLECTIVE_TIMEOUT_MINUTES", "soon")
    with pytest.raises(UserError, match="CIFAR_COLLECTIVE_TIMEOUT_MINUTES='soon' is not"):
        timeout_given()
    for text in ["inf", "nan", "1e13", "1e-9", "0", "-5", ""]:
        monkeypatch.setenv("CIFAR_COLLECTIVE_TIMEOUT_MINUTES", text)
        with pytest.raises(UserError, match="is not a number of minutes from 1 to 10080"):
            timeout_given()


def test_tf32_is_as_the_flag_says_after_accelerate_sets_it(monkeypatch):
    """Accelerate turns TF32 matmuls on for a dynamo backend in fp32 on CUDA."""
    import torch

    import cifar.build
    from cifar.config import parse_config

    def accelerate_with_dynamo(**kwargs):
        torch.backends.cuda.matmul.allow_tf32 = True

    monkeypatch.setattr(cifar.build, "Accelerator", accelerate_with_dynamo)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        for flag, allowed in [("--no-tf32", False), ("--tf32", True)]:
            config = parse_config(["--dataset", "synthetic", "--tracker", "none", flag])
            with contextlib.suppress(AttributeError):  # the stand-in returns None
                cifar.build.make_accelerator(config)
            assert torch.backends.cuda.matmul.allow_tf32 is allowed
            assert torch.backends.cudnn.allow_tf32 is allowed
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
