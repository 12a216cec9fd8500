"""cifar/engine.py: what the loop records about each epoch and the run, and how it stops when the
loss is no longer finite."""

import glob
import shutil

import pytest
from safetensors.torch import load_file

from tests.helpers import SMALL, SMOKE, folder_hashes, read_json, read_metrics, run_train


def test_a_resumed_epoch_reports_the_time_and_rate_of_the_whole_epoch(tmp_path):
    """A run stopped inside epoch 2 (here: a checkpoint kept from step 6 of 8, the state a stop
    there leaves) and resumed: epoch 2's time covers both parts, and its rate is the epoch's
    images over that time, not the tail's images alone."""
    full = tmp_path / "full"
    run_train([*SMALL, "--epochs", "2", "--checkpoint-every", "6", "--keep-checkpoints", "3",
               "--output-dir", full])  # fmt: skip
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for name in ("summary.json", "metrics.jsonl"):
        (resumed / name).unlink()
    for step in ("step-000000008",):
        shutil.rmtree(resumed / "checkpoints" / step)
    before = read_json(resumed / "checkpoints" / "step-000000006" / "progress.json")["partial"]
    assert before["seen"] == 128 and before["seconds"] > 0  # 2 of epoch 2's 4 steps
    run_train([*SMALL, "--epochs", "2", "--output-dir", resumed, "--resume", "auto"])
    epoch = read_metrics(resumed)[1]
    assert epoch["epoch_seconds"] > before["seconds"]
    images = epoch["train_images_per_second"] * epoch["epoch_seconds"]
    assert images == pytest.approx(256, rel=1e-9)  # the whole epoch's images
    summary = read_json(resumed / "summary.json")
    rates = [r["train_images_per_second"] for r in read_metrics(resumed)]
    assert summary["train_images_per_second"] == pytest.approx(sum(rates) / 2)


def test_a_finished_run_whose_metrics_jsonl_was_deleted_gets_it_back_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir])
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    (run_dir / "metrics.jsonl").unlink()
    before = folder_hashes(run_dir)
    result = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "metrics.jsonl was missing and was written again from the checkpoint" in result.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    after = folder_hashes(run_dir)
    assert after.pop("metrics.jsonl") and after == before  # nothing else changed
    report = run_train([*SMALL, "--epochs", "2", "--output-dir", run_dir, "--resume", "auto"])
    assert "nothing to do, no file changed" in report.stderr


def test_non_finite_loss_stops_naming_the_step_and_keeps_good_checkpoints(tmp_path):
    result = run_train(
        [
            *SMOKE,
            "--epochs",
            3,
            "--lr",
            "1e6",
            "--scheduler",
            "none",
            "--log-every",
            "1",
            "--checkpoint-every",
            "1",
            "--output-dir",
            tmp_path,
        ],
        check=False,
    )
    assert result.returncode == 1
    assert "became NaN or infinite at optimizer step" in result.stderr
    assert "Traceback" not in result.stderr
    folders = glob.glob(f"{tmp_path}/checkpoints/step-*")
    assert folders  # the steps before the divergence were saved
    for folder in folders:
        weights = load_file(f"{folder}/model.safetensors")
        assert all(t.isfinite().all() for t in weights.values()), folder
