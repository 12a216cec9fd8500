"""bench/gpu_check.py (make gpu-check): its dry mode runs every stage on the CPU and writes its
lines and summary, a failed check or an overrun budget fails the stage, and `pytest -m gpu`
collects the GPU tier here and skips each test with its reason. And the suite on a machine with
fewer GPUs than a run's processes: those runs go to gloo on the CPU."""

import json
import re
import subprocess
import sys
import time

import pytest

from bench.gpu_check import STAGES, Check, Context, Skip, Stage, main, run_stage, summary
from tests import helpers
from tests.helpers import ROOT, on_cuda, train_env

CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}


def test_the_dry_check_runs_every_stage_and_writes_its_lines_and_summary(tmp_path):
    out = tmp_path / "check"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry", "--out", str(out)],
        cwd=ROOT,
        env=train_env(**CPU_ONLY),
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == [s.name for s in STAGES]
    status = {r["stage"]: r for r in lines}
    assert status["cnn-fp16"]["status"] == "skip"
    assert status["cnn-fp16"]["reason"].startswith("no CUDA")
    for r in lines:
        assert r["expect"] and r["seconds"] <= r["budget_seconds"], r
        if r["stage"] != "cnn-fp16":
            assert r["status"] == "pass" and r["checks"], r
            assert all(c["ok"] for c in r["checks"]), r

    figures = {r["stage"]: r["figures"] for r in lines}
    assert figures["env"]["torch"] and figures["env"]["device"] == "cpu"
    assert figures["cnn-fp32"]["test_accuracy"] >= 0.3
    assert figures["cnn-bf16"]["precision"] == "bf16"
    assert figures["cnn-compile"]["backend"] == "eager" and figures["cnn-compile"]["run_graphs"]
    checked = {c["check"] for c in status["cnn-deterministic"]["checks"]}
    assert {"identical metrics", "identical weights"} <= checked
    assert figures["resnet-cached"]["features_relative_difference"] <= 1e-4
    assert "cached and uncached runs identical" in {
        c["check"] for c in status["imagefolder"]["checks"]
    }
    assert figures["gpu-tests"]["skipped"] > 0 and "passed" not in figures["gpu-tests"]
    assert all(r.startswith("no CUDA") for r in figures["gpu-tests"]["skip_reasons"])
    speeds = figures["benchmark"]["ours_images_per_s"]
    assert set(speeds) == {"cnn", "resnet-frozen", "resnet-cached", "resnet-finetune",
                           "imagefolder"}  # fmt: skip
    assert "<!-- bench:start cpu:" in (out / "benchmarks.md").read_text()

    text = (out / "summary.txt").read_text()
    assert result.stdout.endswith(text)
    assert len(text.splitlines()) <= 50 and text.rstrip().endswith("passed")
    for stage in STAGES:
        assert re.search(rf"^{stage.name} +(pass|skip) ", text, re.M), text
    for run in ("cnn-fp32", "cnn-deterministic-a", "imagefolder-never", "resnet-cached"):
        assert (out / "runs" / run / "summary.json").is_file()
        assert (out / "logs" / f"{run}.log").is_file()
    print(f"the dry check took {seconds:.0f} s")


def test_pytest_m_gpu_collects_the_gpu_tier_on_the_cpu_and_skips_each_test_with_its_reason():
    every_gpu_test = ["-m", "gpu", "-rs", "-q", "-p", "no:cacheprovider", "tests/"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *every_gpu_test],
        cwd=ROOT,
        env=train_env(**CPU_ONLY, CIFAR_REQUIRE_ALL_TESTS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary_line = result.stdout.strip().splitlines()[-1]
    skipped = int(re.search(r"(\d+) skipped", summary_line).group(1))
    assert skipped >= 10 and "passed" not in summary_line and "deselected" in summary_line
    reasons = re.findall(r"^SKIPPED \[(\d+)\] (tests/[\w.]+):\d+: (.*)$", result.stdout, re.M)
    assert sum(int(n) for n, _, _ in reasons) == skipped
    assert {path for _, path, _ in reasons} == {"tests/test_gpu.py"}
    assert {reason for _, _, reason in reasons} == {"no CUDA: the GPU tier needs a GPU"}


def context(tmp_path) -> Context:
    (tmp_path / "logs").mkdir()
    return Context(tmp_path, dry=True, cuda=False)


def test_a_failed_check_fails_its_stage_and_the_summary_names_it(tmp_path):
    def stage(check: Check) -> dict:
        check("finite losses", True)
        check("test accuracy >= 0.3", False, 0.12)
        return {"test_accuracy": 0.12}

    result = run_stage(context(tmp_path), Stage("toy", 5, "accuracy above chance", stage))
    assert result["status"] == "fail" and result["figures"] == {"test_accuracy": 0.12}
    text = summary([result], dry=True, seconds=1)
    assert "FAILED test accuracy >= 0.3: 0.12" in text and text.rstrip().endswith("logs/")


def test_a_stage_past_its_budget_is_stopped_and_fails(tmp_path):
    def stage(check: Check) -> dict:
        time.sleep(30)

    started = time.monotonic()
    result = run_stage(context(tmp_path), Stage("slow", 0.3, "quick", stage))
    assert time.monotonic() - started < 5
    assert result["status"] == "fail"
    assert result["checks"] == [
        {"check": "within its budget", "ok": False, "detail": "ran past 0.3 s"}
    ]


def test_a_stage_that_cannot_run_here_is_skipped_with_the_reason(tmp_path):
    def stage(check: Check) -> dict:
        raise Skip("no CUDA (fp16 needs a GPU)")

    result = run_stage(context(tmp_path), Stage("fp16", 5, "scaler", stage))
    assert result["status"] == "skip" and result["reason"] == "no CUDA (fp16 needs a GPU)"
    assert summary([result], dry=True, seconds=1).rstrip().endswith("passed")


def test_without_cuda_the_full_check_stops_and_points_to_dry(tmp_path, capsys):
    if on_cuda():
        pytest.skip("this machine has CUDA: the full check would run")
    assert main(["--out", str(tmp_path / "check")]) == 2
    assert "--dry" in capsys.readouterr().err
    assert not (tmp_path / "check").exists()


SHARES = [(0, 2, False), (1, 1, False), (1, 2, True), (1, 3, True), (2, 2, False), (4, 3, False)]


@pytest.mark.parametrize("gpus, processes, cpu", SHARES)
def test_runs_of_more_processes_than_gpus_go_to_gloo_on_the_cpu_saying_so(
    monkeypatch, capsys, gpus, processes, cpu
):
    monkeypatch.setattr(helpers, "cuda_devices", lambda: gpus)
    monkeypatch.setattr(helpers, "_NOTED", set())
    expected = {"CUDA_VISIBLE_DEVICES": ""} if cpu else {}
    assert helpers.devices_for(processes) == expected
    assert helpers.devices_for(processes) == expected
    note = capsys.readouterr().err
    if cpu:
        assert note == (
            f"note: {processes} processes and {gpus} GPU(s) here: those runs use gloo on the "
            "CPU (CUDA_VISIBLE_DEVICES='')\n"
        )  # once
    else:
        assert note == ""
